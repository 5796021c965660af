"""Hierarchical models side by side: omnibyte vs MEGABYTE-pytorch vs mblm.

Matched configuration (the issue's): batch 8 x 8192 bytes, bf16 autocast, AdamW,
2 stages: 768 wide x 12 layers over 1024 patches of 8, then 384 wide x 3 layers.
Measures training bytes/s and peak memory, generation bytes/s for 8 KB at batch 1, and
the longest context for which one multiscale training step (batch 1) fits in memory.

The peers regenerate by recomputing the whole prefix per byte, so their generation of
8 KB is timed on two 512-byte stretches (from an empty prompt and from a 7,680-byte
prompt) and the 8 KB rate is interpolated linearly in the prefix length; the table says so.
On CUDA omnibyte generates through its fast decoder (CUDA graphs, ``fast=True``); its eager
step's rate is recorded too (``gen_eager_bytes_per_s``), and ``gen_decoder`` says which path ran.

    python bench/bench_hierarchical.py --out runs/hierarchical.json
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_environment, print_table, write_json  # noqa: E402

from omnibyte.models import build_model, make_config, model_class_for  # noqa: E402
from omnibyte.models.graphs import GraphCaptureWarning  # noqa: E402

GLOBAL_PATCHES, PATCH_SIZE = 1024, 8
WIDTHS, DEPTHS = (768, 384), (12, 3)
CONTEXT = GLOBAL_PATCHES * PATCH_SIZE
HEAD_DIM = 64


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Contender:
    """A model plus the three things the bench does with it."""

    def __init__(self, name: str, model: torch.nn.Module, loss: Callable, generate: Callable,
                 full_generation: bool, eager_generate: Callable | None = None,
                 decoder_note: Callable[[], str] | None = None):
        self.name, self.model, self.loss, self.generate = name, model, loss, generate
        self.full_generation = full_generation  # True: generate() is timed over all 8 KB
        self.eager_generate = eager_generate  # also timed when set (omnibyte's eager step)
        self.decoder_note = decoder_note  # which decoding path generate() took


def omnibyte_contender(device: torch.device) -> Contender:
    model = build_model("multiscale", "megabyte-8k").to(device)

    def loss(ids: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([torch.full_like(ids[:, :1], 256), ids[:, :-1]], dim=1)
        return model.loss(tokens, ids)

    fast = device.type == "cuda"
    capture_failures: set[str] = set()

    def generate(prompt: torch.Tensor, new_bytes: int, fast: bool = fast) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.generate(bytes(prompt.tolist()), max_new_bytes=new_bytes, seed=0, fast=fast)
        for warning in caught:  # a failed capture decodes eagerly: the table must say so
            if issubclass(warning.category, GraphCaptureWarning):
                capture_failures.add(str(warning.message))
            else:
                warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)

    def decoder_note() -> str:
        if not fast:
            return "eager step"
        return "; ".join(sorted(capture_failures)) if capture_failures else "CUDA graphs"

    def eager_generate(prompt: torch.Tensor, new_bytes: int) -> None:
        generate(prompt, new_bytes, fast=False)

    return Contender("omnibyte multiscale", model, loss, generate, full_generation=True,
                     eager_generate=eager_generate if fast else None, decoder_note=decoder_note)


def megabyte_contender(device: torch.device) -> Contender:
    from MEGABYTE_pytorch import MEGABYTE

    model = MEGABYTE(num_tokens=256, dim=WIDTHS, depth=DEPTHS, max_seq_len=(GLOBAL_PATCHES, PATCH_SIZE),
                     dim_head=HEAD_DIM, heads=WIDTHS[0] // HEAD_DIM, flash_attn=True).to(device)

    def generate(prompt: torch.Tensor, new_bytes: int) -> None:
        sequence = prompt[None].to(device)
        for _ in range(new_bytes):  # MEGABYTE.generate always fills the whole context
            logits = model(sequence)[:, -1] if sequence.shape[1] else model.forward_empty(1)[:, -1]
            sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=1)

    return Contender("MEGABYTE-pytorch 0.3.6", model, lambda ids: model(ids, return_loss=True),
                     generate, full_generation=False)


def mblm_contender(device: torch.device) -> Contender:
    from mblm import MBLM, MBLMModelConfig, MBLMReturnType, TransformerBlock

    blocks = [TransformerBlock(attn_head_dims=HEAD_DIM, attn_num_heads=width // HEAD_DIM,
                               attn_use_rot_embs=True, use_flash_attn=True) for width in WIDTHS]
    config = MBLMModelConfig(num_tokens=257, pad_token_id=256, hidden_dims=list(WIDTHS),
                             num_layers=list(DEPTHS), seq_lens=[GLOBAL_PATCHES, PATCH_SIZE],
                             train_checkpoint_chunks=None, block=blocks)
    model = MBLM(config).to(device)

    def generate(prompt: torch.Tensor, new_bytes: int) -> None:
        model.generate(prompt.to(device) if len(prompt) else None, num_tokens_to_generate=new_bytes,
                       enable_progress=False)

    return Contender("mblm 0.4.2", model,
                     lambda ids: model(input_ids=ids, return_type=MBLMReturnType.LOSS),
                     generate, full_generation=False)


def train_rate(contender: Contender, device: torch.device, batch_size: int, steps: int) -> dict:
    model = contender.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    ids = torch.randint(0, 256, (batch_size, CONTEXT), device=device)
    torch.cuda.reset_peak_memory_stats() if device.type == "cuda" else None

    def one_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = contender.loss(ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        one_step()
    synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        one_step()
    synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    del optimizer
    return {"train_bytes_per_s": batch_size * CONTEXT * steps / seconds, "peak_gib": peak}


@torch.no_grad()
def generation_rate(contender: Contender, device: torch.device, new_bytes: int, sample: int) -> dict:
    model = contender.model.eval()
    prompt_source = torch.randint(0, 256, (CONTEXT,))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        if contender.full_generation:
            contender.generate(prompt_source[:0], 16)  # warm-up
            synchronize()
            started = time.perf_counter()
            contender.generate(prompt_source[:0], new_bytes)
            synchronize()
            return {"gen_bytes_per_s": new_bytes / (time.perf_counter() - started), "gen_method": "timed"}
        seconds_per_byte = []
        for prefix in (0, new_bytes - sample):
            contender.generate(prompt_source[:prefix], 2)  # warm-up
            synchronize()
            started = time.perf_counter()
            contender.generate(prompt_source[:prefix], sample)
            synchronize()
            seconds_per_byte.append((time.perf_counter() - started) / sample)
    # per-byte cost is linear in the prefix, so the mean of the two ends is the 8 KB average
    return {"gen_bytes_per_s": 1 / (sum(seconds_per_byte) / 2),
            "gen_method": f"2 x {sample} bytes, interpolated"}


def longest_trainable_context(device: torch.device, preset: str, start_log2: int, stop_log2: int) -> list[dict]:
    """One forward+backward step at batch 1 for growing contexts, until memory runs out."""
    results = []
    base = make_config("multiscale", preset).to_dict()
    inner = 1
    for stage in base["stages"][1:]:
        inner *= stage["patch_size"]
    for log2 in range(start_log2, stop_log2 + 1):
        context = 2**log2
        config = dict(base, stages=[dict(base["stages"][0], patch_size=context // inner), *base["stages"][1:]])
        model_class = model_class_for("multiscale")
        row = {"context": context}
        try:
            model = model_class(model_class.config_class.from_dict(config)).to(device)
            ids = torch.randint(0, 256, (1, context), device=device)
            torch.cuda.reset_peak_memory_stats()
            synchronize()
            started = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model.loss(ids, ids)
            loss.backward()
            synchronize()
            row.update(fits=True, seconds=time.perf_counter() - started,
                       peak_gib=torch.cuda.max_memory_allocated() / 2**30,
                       params=model.num_parameters())
        except torch.OutOfMemoryError:
            row.update(fits=False)
        finally:
            model = ids = loss = None
            torch.cuda.empty_cache()
        results.append(row)
        print(row, flush=True)
        if not row["fits"]:
            break
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--gen-bytes", type=int, default=CONTEXT - 1)
    parser.add_argument("--gen-sample", type=int, default=512)
    parser.add_argument("--peers", nargs="*", default=["megabyte", "mblm"])
    parser.add_argument("--long-preset", default="long-context")
    parser.add_argument("--long-from", type=int, default=20, help="log2 of the first context tried")
    parser.add_argument("--long-to", type=int, default=25, help="log2 of the last context tried")
    parser.add_argument("--skip-long", action="store_true")
    parser.add_argument("--compile", nargs="*", default=[], help="contenders to train through torch.compile")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--out", default="hierarchical.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    builders = {"omnibyte": omnibyte_contender, "megabyte": megabyte_contender, "mblm": mblm_contender}
    rows = []
    for key in ["omnibyte", *args.peers]:
        torch.manual_seed(0)
        contender = builders[key](device)
        row = {"model": contender.name, "params": sum(p.numel() for p in contender.model.parameters()),
               "compiled": key in args.compile}
        if key in args.compile:
            contender.loss = torch.compile(contender.loss)
        if not args.skip_train:
            row.update(train_rate(contender, device, args.batch_size, args.train_steps))
        row.update(generation_rate(contender, device, args.gen_bytes, args.gen_sample))
        if contender.decoder_note is not None:
            row["gen_decoder"] = contender.decoder_note()
        if contender.eager_generate is not None:
            eager = Contender(contender.name, contender.model, contender.loss, contender.eager_generate, True)
            # the eager step costs the same at every position: a short stretch gives its rate
            row["gen_eager_bytes_per_s"] = generation_rate(eager, device, args.gen_sample,
                                                           args.gen_sample)["gen_bytes_per_s"]
        rows.append(row)
        print(row, flush=True)
        contender = None
        torch.cuda.empty_cache() if device.type == "cuda" else None
    print_table(rows, ["model", "params", "compiled", "train_bytes_per_s", "peak_gib", "gen_bytes_per_s", "gen_method",
                       "gen_eager_bytes_per_s", "gen_decoder"])
    long_context = [] if args.skip_long or device.type != "cuda" else \
        longest_trainable_context(device, args.long_preset, args.long_from, args.long_to)
    if long_context:
        print_table(long_context, ["context", "fits", "seconds", "peak_gib"])
    write_json(args.out, {"environment": describe_environment(), "command": " ".join(sys.argv),
                          "batch_size": args.batch_size, "context": CONTEXT,
                          "results": rows, "long_context": long_context})


if __name__ == "__main__":
    main()

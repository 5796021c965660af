"""Byte Latent Transformer: cost, cached generation and Hugging Face's BLT as a peer.

One command, a table per part and ``blt.json`` in ``--out``:

* **check**: on the device, the cached decoder's logits (eager and fast) against the full
  forward on a short ragged batch (max abs difference);
* **cost**: training bytes/s (AdamW, bf16 autocast, batch x context) and FLOPs per byte of
  BLT ``small`` against flat ``small`` at the same context;
* **generation**: BLT's cached generation in bytes/s at batch 1 (``--gen-bytes``) and
  batch 64 (``--batch-gen-bytes`` per row), fast (CUDA graphs) and eager, against
  recomputing the whole prefix for every byte (a full forward per byte, timed at a few
  prefix lengths and integrated over the generation, which is what it would take);
* **peer**: ``transformers``' BLT (``BltForCausalLM``) at a matched configuration: its
  training bytes/s and its ``generate()`` bytes/s (it recomputes the prefix: timed for
  ``--peer-new-bytes`` bytes after a short and after a long prompt, the rate over
  ``--gen-bytes`` interpolated linearly in the prefix length); skipped with the reason when
  transformers or its BLT is missing;
* **quality** (``--quality-minutes`` > 0 and ``--data``): BLT small trained for that long on
  GCIDE with ``bench_quality.py``'s split and schedule: test bits/byte and bytes per patch.

The matched configuration: 512 wide, 16 heads, 2 encoder / 8 latent / 6 decoder layers, hash
n-grams 3..8, an entropy model of 256 x 2 layers whose threshold is above any entropy, so
every patch is ``--patch-size`` bytes (both libraries then cut the same patches at the cost of
running their entropy model). Weights are random: speed does not depend on them.

    python bench/bench_blt.py --out runs/blt
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_environment, print_table, write_json  # noqa: E402

from omnibyte.models import build_model  # noqa: E402
from omnibyte.models.base import BOS  # noqa: E402
from omnibyte.models.layers import default_intermediate_size  # noqa: E402
from omnibyte.models.graphs import GraphCaptureWarning  # noqa: E402

WIDTH, HEADS, ENCODER_LAYERS, LATENT_LAYERS, DECODER_LAYERS = 512, 16, 2, 8, 6
ENTROPY = dict(hidden_size=256, num_layers=2, num_query_heads=4, num_key_value_heads=4, max_sequence_length=8192)
NGRAM_BUCKETS = 50_000


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], repeats: int = 1) -> float:
    """Seconds per call (GPU work included)."""
    synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize()
    return (time.perf_counter() - started) / repeats


def blt_small(args) -> torch.nn.Module:
    return build_model("blt", "small", max_sequence_length=args.context, ngram_vocab_size=NGRAM_BUCKETS,
                       patching=dict(scheme="entropy", threshold=8.0, max_patch_size=args.patch_size),
                       entropy_config=ENTROPY)


def flat_small(args) -> torch.nn.Module:
    return build_model("flat", "small", max_sequence_length=args.context)


# ---- check ------------------------------------------------------------------------------

@torch.no_grad()
def check_decoder(args, device) -> list[dict]:
    """Cached logits against the full forward, ragged rows, eager and fast."""
    torch.manual_seed(0)
    model = build_model("blt", "small", max_sequence_length=512, ngram_vocab_size=NGRAM_BUCKETS,
                        patching=dict(scheme="space", max_patch_size=8)).to(device).eval()
    texts = [b"the quick brown fox, jumps over 12 lazy dogs; ", b"x=f(a,b)*3; return {k: v}\n", b"aaaa bbbbbbb c\t"]
    rows_of_bytes = [np.frombuffer((text * 20)[:200], np.uint8) for text in texts]
    tokens = torch.tensor(np.stack([np.concatenate([[BOS], row]) for row in rows_of_bytes]), device=device)
    full = model(tokens).float()
    lengths = [17, 3, 40]
    rows = []
    for fast in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", GraphCaptureWarning)
            decoder = model.decoder(3, tokens.shape[1], fast=fast)
        worst = 0.0
        logits = decoder.prefill(tokens[:, :max(lengths)], lengths)
        expected = torch.stack([full[row, length - 1] for row, length in enumerate(lengths)])
        worst = max(worst, (logits.float() - expected).abs().max().item())
        for k in range(tokens.shape[1] - max(lengths)):
            column = torch.stack([tokens[row, length + k] for row, length in enumerate(lengths)])
            logits = decoder.step(column)
            expected = torch.stack([full[row, length + k] for row, length in enumerate(lengths)])
            worst = max(worst, (logits.float() - expected).abs().max().item())
        rows.append({"path": "fast" if fast else "eager", "graphs": bool(decoder.steps.graphs),
                     "graph_error": decoder.steps.error or (str(caught[0].message) if caught else None),
                     "max_abs_diff": worst})
    return rows


# ---- cost -----------------------------------------------------------------------------------

def training_rate(model: torch.nn.Module, loss_of: Callable, batch: int, length: int, device, steps: int) -> dict:
    """Training bytes/s of AdamW steps under bf16 autocast, and the peak memory."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                  fused=device.type == "cuda")
    ids = torch.randint(0, 256, (batch, length + 1), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_of(ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(step, steps)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"train_bytes_per_s": batch * length / seconds, "step_seconds": seconds, "peak_gib": peak}


def omnibyte_loss(model):
    def loss(ids: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([torch.full_like(ids[:, :1], BOS), ids[:, :-2]], dim=1)
        return model.loss(tokens, ids[:, :-1])
    return loss


def cost(args, device) -> list[dict]:
    rows = []
    for name, build in (("flat small", flat_small), ("blt small", blt_small)):
        torch.manual_seed(0)
        model = build(args).to(device)
        row = {"model": name, "params": model.num_parameters(trainable_only=True),
               "context": args.context, "batch": args.batch_size,
               "flops_per_byte": model.flops_per_byte(args.context)}
        row.update(training_rate(model, omnibyte_loss(model), args.batch_size, args.context, device, args.train_steps))
        row["tflops"] = row["flops_per_byte"] * row["train_bytes_per_s"] / 1e12
        rows.append(row)
        del model
        torch.cuda.empty_cache() if device.type == "cuda" else None
    return rows


# ---- generation -------------------------------------------------------------------------------

@torch.no_grad()
def recompute_seconds(forward: Callable[[int], Any], new_bytes: int, prompt: int, lengths: list[int]) -> float:
    """Seconds to generate ``new_bytes`` after ``prompt`` bytes by a full forward per byte:
    the forward's time at a few lengths, interpolated and summed over every prefix."""
    points = sorted({max(1, min(length, prompt + new_bytes)) for length in lengths})
    times = [timed(lambda: forward(length), 2) for length in points]
    prefixes = np.arange(prompt + 1, prompt + new_bytes + 1)
    return float(np.interp(prefixes, points, times).sum())


def generation(args, device) -> list[dict]:
    torch.manual_seed(0)
    model = blt_small(args).to(device, torch.bfloat16).eval()
    rows = []
    prompt = b"The "
    room = args.context - len(prompt) - 1  # BOS, the prompt and the new bytes fit the context
    for batch, new_bytes in ((1, min(args.gen_bytes, room)), (64, min(args.batch_gen_bytes, room))):
        for fast in (True, False):
            if not fast and batch == 1 and new_bytes > 2048:
                new_bytes_here = 2048  # the eager step's rate does not depend on the length much
            else:
                new_bytes_here = new_bytes
            prompts = [prompt] * batch
            model.generate(prompts, max_new_bytes=8, temperature=0, fast=fast)  # graphs, kernels
            seconds = timed(lambda: model.generate(prompts, max_new_bytes=new_bytes_here, temperature=0, fast=fast))
            rows.append({"model": "blt small (cached)", "path": "fast" if fast else "eager", "batch": batch,
                         "new_bytes": new_bytes_here, "bytes_per_s": batch * new_bytes_here / seconds})

    def forward(length: int) -> None:
        model(torch.randint(0, 256, (1, length), device=device))

    seconds = recompute_seconds(forward, args.gen_bytes, len(prompt), [64, 1024, 4096, args.context])
    rows.append({"model": "blt small (recompute per byte)", "path": "full forward", "batch": 1,
                 "new_bytes": args.gen_bytes, "bytes_per_s": args.gen_bytes / seconds, "estimated": True})
    cached = next(row["bytes_per_s"] for row in rows if row["batch"] == 1 and row["path"] == "fast")
    rows[-1]["cached_speedup"] = cached / rows[-1]["bytes_per_s"]
    flat = flat_small(args).to(device, torch.bfloat16).eval()  # the same context, one stack over every byte
    for batch, new_bytes in ((1, min(args.gen_bytes, room)), (64, min(args.batch_gen_bytes, room))):
        prompts = [prompt] * batch
        flat.generate(prompts, max_new_bytes=8, temperature=0, fast=True)
        seconds = timed(lambda: flat.generate(prompts, max_new_bytes=new_bytes, temperature=0, fast=True))
        rows.append({"model": "flat small (cached)", "path": "fast", "batch": batch, "new_bytes": new_bytes,
                     "bytes_per_s": batch * new_bytes / seconds})
    return rows


# ---- peer: transformers' BLT -------------------------------------------------------------------

def hf_blt(args):
    from transformers import BltConfig, BltForCausalLM  # noqa: PLC0415 - optional peer

    # the widths omnibyte's SwiGLU layers have (transformers 5.17 refuses intermediate_size=None)
    local = dict(hidden_size=WIDTH, num_attention_heads=HEADS, hidden_size_global=WIDTH,
                 max_position_embeddings=args.context, intermediate_size=default_intermediate_size(WIDTH))
    config = BltConfig(
        vocab_size=260, max_position_embeddings=args.context, patch_in_forward=True,
        patching_mode="entropy", patching_threshold=100.0, max_patch_length=args.patch_size,
        patch_size=args.patch_size, encoder_hash_byte_group_size=[3, 4, 5, 6, 7, 8],
        encoder_hash_byte_group_vocab=NGRAM_BUCKETS, encoder_hash_byte_group_nb_functions=1,
        encoder_config={**local, "num_hidden_layers": ENCODER_LAYERS},
        decoder_config={**local, "num_hidden_layers": DECODER_LAYERS},
        global_config=dict(hidden_size=WIDTH, num_attention_heads=HEADS, num_hidden_layers=LATENT_LAYERS,
                           max_position_embeddings=args.context, intermediate_size=default_intermediate_size(WIDTH)),
        patcher_config=dict(hidden_size=ENTROPY["hidden_size"], num_hidden_layers=ENTROPY["num_layers"],
                            num_attention_heads=ENTROPY["num_query_heads"], max_position_embeddings=args.context,
                            intermediate_size=default_intermediate_size(ENTROPY["hidden_size"])),
    )
    return BltForCausalLM(config)


def peer(args, device) -> list[dict]:
    try:
        torch.manual_seed(0)
        model = hf_blt(args).to(device)
    except Exception as error:  # noqa: BLE001 - a missing or different transformers: skip, say why
        return [{"model": "transformers BLT", "skipped": f"{type(error).__name__}: {error}"}]
    import transformers

    row: dict[str, Any] = {"model": f"transformers {transformers.__version__} BLT",
                           "params": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    try:
        def loss(ids: torch.Tensor) -> torch.Tensor:
            inputs = ids[:, :-1] + 4  # its byte ids are offset by 4 special tokens
            return model(input_ids=inputs, labels=inputs, use_cache=False).loss

        row.update(training_rate(model, loss, args.batch_size, args.context, device, args.train_steps))
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            def generate(prompt_length: int) -> float:
                prompt = torch.randint(4, 260, (1, prompt_length), device=device)
                # use_cache=False: transformers 5.24's generate() fails to build a cache from a
                # BltConfig ("no attribute num_hidden_layers"), so its BLT recomputes every step
                return timed(lambda: model.generate(prompt, max_new_tokens=args.peer_new_bytes,
                                                    min_new_tokens=args.peer_new_bytes, do_sample=False,
                                                    use_cache=False))

            generate(8)  # warm-up
            short, long = 8, args.gen_bytes - args.peer_new_bytes
            per_byte = [generate(short) / args.peer_new_bytes, generate(long) / args.peer_new_bytes]
        prefixes = np.arange(args.gen_bytes)
        seconds = float(np.interp(prefixes, [short, long], per_byte).sum())
        row.update(generate_bytes_per_s=args.gen_bytes / seconds, generate_seconds_per_byte_short=per_byte[0],
                   generate_seconds_per_byte_long=per_byte[1], estimated=True)
    except Exception as error:  # noqa: BLE001 - report what ran and why the rest did not
        row["error"] = f"{type(error).__name__}: {error}"
        traceback.print_exc()
    return [row]


# ---- quality ------------------------------------------------------------------------------------

def quality(args) -> list[dict]:
    import bench_quality  # noqa: PLC0415 - same split, schedule and scoring as the other families

    arch, preset, overrides, _, _, lr = bench_quality.CONTENDERS["blt"]
    if args.entropy_model:
        overrides = dict(patching=dict(scheme="entropy", threshold=args.threshold, max_patch_size=16),
                         entropy_model=str(args.entropy_model))
    bench_quality.CONTENDERS["blt"] = (arch, preset, overrides, args.context, args.batch_size, lr)
    splits = bench_quality.gcide_splits(str(args.data))
    return [bench_quality.train_and_test("blt", splits, args.quality_minutes, Path(args.out) / "quality")]


# ---- command line -------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for blt.json (and quality runs)")
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=4, help="training batch (rows of --context bytes)")
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--patch-size", type=int, default=4, help="bytes per patch of the cost and peer runs")
    parser.add_argument("--gen-bytes", type=int, default=8187, help="bytes generated at batch 1 (at most the "
                                                                     "context less the 4-byte prompt and BOS)")
    parser.add_argument("--batch-gen-bytes", type=int, default=1024, help="bytes per row generated at batch 64")
    parser.add_argument("--peer-new-bytes", type=int, default=32)
    parser.add_argument("--parts", nargs="+", default=["check", "cost", "generation", "peer"],
                        choices=["check", "cost", "generation", "peer", "quality"])
    parser.add_argument("--quality-minutes", type=float, default=0.0)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/text/gcide.txt.gz"))
    parser.add_argument("--entropy-model", type=Path, default=None, help="quality: entropy patching with this run")
    parser.add_argument("--threshold", type=float, default=2.0, help="quality: the entropy threshold (bits)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    parts = list(args.parts) + (["quality"] if args.quality_minutes > 0 and "quality" not in args.parts else [])
    results: dict[str, Any] = {"environment": describe_environment(device), "command": " ".join(sys.argv),
                               "args": {k: str(v) for k, v in vars(args).items()}}
    tables = {
        "check": (check_decoder, ["path", "graphs", "max_abs_diff", "graph_error"]),
        "cost": (cost, ["model", "params", "context", "batch", "train_bytes_per_s", "flops_per_byte", "tflops",
                        "peak_gib"]),
        "generation": (generation, ["model", "path", "batch", "new_bytes", "bytes_per_s", "cached_speedup"]),
        "peer": (peer, ["model", "params", "train_bytes_per_s", "peak_gib", "generate_bytes_per_s", "skipped",
                        "error"]),
        "quality": (lambda a, d: quality(a), ["model", "params", "steps", "train_seconds", "test_bits_per_byte",
                                                "bytes_per_patch"]),
    }
    for part in parts:
        run, columns = tables[part]
        started = time.time()
        try:
            rows = run(args, device)
        except Exception as error:  # noqa: BLE001 - one failing part must not lose the others
            traceback.print_exc()
            rows = [{"error": f"{type(error).__name__}: {error}"}]
            columns = [*columns, "error"] if "error" not in columns else columns
        results[part] = rows
        print_table(rows, columns, title=f"{part} ({time.time() - started:.0f} s)")
        write_json(args.out / "blt.json", results)
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

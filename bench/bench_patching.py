"""BLT patching benchmarks: the patchers, the entropy model, differential attention.

On the GPU machine (H200), all sections, about 3 minutes:
    python bench/bench_patching.py --out bench/results/patching_h200.json
CPU smoke test with tiny sizes (about a minute):
    python bench/bench_patching.py --device cpu --batches 1,4 --length 1024 --diff-preset tiny \\
        --diff-seq-len 256 --diff-batch 2 --gen-batches 1,4 --gen-bytes 16 --dtype fp32 --out /tmp/patching.json

Sections (``--sections``, default all of patch,entropy,diff):
* patch: ``patch_starts`` (pointer doubling, no loop over positions) per scheme on [B, T]
  random entropies, against the incremental ``PatchTracker`` run over the T positions (the
  scan a loop-based patcher does); both give the same starts (checked).
* entropy: ``EntropyModel.entropies`` (full forward) bytes/s on [B, T], and the incremental
  ``EntropyDecoder.step`` bytes/s at several batch sizes (eager and fast), for a tiny flat model.
* diff: a flat model with and without ``differential_attention``: training bytes/s (forward +
  backward + AdamW under bf16 autocast) and fast decoding bytes/s, plus the largest
  difference between the cached logits and the full forward with the option on.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_environment, print_table, synchronize, time_call, write_json  # noqa: E402

from omnibyte.devices import autocast, resolve_device  # noqa: E402
from omnibyte.models import BOS, build_model  # noqa: E402
from omnibyte.models.blt.entropy import EntropyModel  # noqa: E402
from omnibyte.models.blt.patching import PatchingConfig, PatchTracker, needs_entropy, patch_starts  # noqa: E402

SCHEMES = [("entropy", 1), ("entropy", 2), ("monotonic", 2), ("space", 1), ("fixed", 1)]


def ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def random_inputs(batch: int, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 256, (batch, length), generator=generator)
    tokens[:, 0] = BOS
    entropies = torch.rand(batch, length, generator=generator) * 8
    return tokens.to(device), entropies.to(device)


def tracker_scan(config: PatchingConfig, tokens: torch.Tensor, entropies: torch.Tensor) -> torch.Tensor:
    tracker = PatchTracker(config, tokens.shape[0], tokens.device)
    first = torch.full((tokens.shape[0],), BOS, device=tokens.device)
    columns = [tracker.starts(tokens[:, t - 1] if t else first, entropies[:, t] if needs_entropy(config) else None,
                              tokens=tokens[:, t]) for t in range(tokens.shape[1])]
    return torch.stack(columns, dim=1)


def bench_patchers(args, device) -> list[dict]:
    rows = []
    for batch in ints(args.batches):
        tokens, entropies = random_inputs(batch, args.length, device)
        for scheme, min_size in SCHEMES:
            config = PatchingConfig(scheme=scheme, threshold=5.0, min_patch_size=min_size, max_patch_size=16)
            batch_form = patch_starts(config, tokens, entropies)
            same = bool(torch.equal(batch_form, tracker_scan(config, tokens, entropies)))
            fast = time_call(lambda: patch_starts(config, tokens, entropies), repeats=args.repeats, warmup=2,
                             device=device)
            scan = time_call(lambda: tracker_scan(config, tokens, entropies), repeats=1, warmup=0, device=device)
            rows.append(dict(batch=batch, length=args.length, scheme=scheme, min_patch_size=min_size,
                             patch_starts_ms=fast * 1e3, tracker_scan_ms=scan * 1e3, speedup=scan / fast,
                             bytes_per_s=batch * args.length / fast,
                             mean_patch=batch_form.numel() / int(batch_form.sum()), equal=same))
    print_table(rows, ["batch", "length", "scheme", "min_patch_size", "patch_starts_ms", "tracker_scan_ms",
                       "speedup", "bytes_per_s", "mean_patch", "equal"], "patchers: batch form vs a scan over T")
    return rows


def bench_entropy(args, device) -> list[dict]:
    torch.manual_seed(0)
    entropy_model = EntropyModel(build_model("flat", "tiny", max_sequence_length=args.entropy_context)).to(device)
    rows = []
    for batch in ints(args.batches):
        tokens, _ = random_inputs(batch, args.length, device)
        seconds = time_call(lambda: entropy_model.entropies(tokens), repeats=args.repeats, warmup=1, device=device)
        rows.append(dict(mode="full forward", batch=batch, bytes_per_s=batch * args.length / seconds))
    for batch in ints(args.gen_batches):
        for fast in (False, True):
            decoder = entropy_model.decoder(batch, args.gen_bytes * 2 + 8, fast=fast)
            start = torch.full((batch, 1), BOS, device=device)
            decoder.prefill(start)
            step_tokens = torch.randint(0, 256, (batch,), device=device)
            for _ in range(3):
                decoder.step(step_tokens)  # warm up (and capture)
            synchronize(device)
            seconds = time_call(lambda: decoder.step(step_tokens), repeats=args.gen_bytes, device=device)
            rows.append(dict(mode="decoder step" + (" (fast)" if fast else ""), batch=batch,
                             bytes_per_s=batch / seconds))
    print_table(rows, ["mode", "batch", "bytes_per_s"], f"entropy model (tiny flat, context {args.entropy_context})")
    return rows


def bench_differential(args, device) -> list[dict]:
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    rows = []
    for differential in (False, True):
        torch.manual_seed(0)
        model = build_model("flat", args.diff_preset, differential_attention=differential).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        tokens = torch.randint(0, 256, (args.diff_batch, args.diff_seq_len + 1), device=device)

        def train_step():
            with autocast(device, enabled=dtype == torch.bfloat16):
                loss = model.loss(tokens[:, :-1], tokens[:, 1:])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        seconds = time_call(train_step, repeats=args.steps, warmup=2, device=device)
        row = dict(differential=differential, parameters=model.num_parameters(),
                   train_bytes_per_s=args.diff_batch * args.diff_seq_len / seconds)
        model.eval()
        probe = tokens[:2, :64]
        with torch.no_grad():
            full = model(probe)
            decoder = model.decoder(2, 64)
            logits = [decoder.prefill(probe[:, :1])]
            logits += [decoder.step(probe[:, t]) for t in range(1, 64)]
        row["cached_vs_full_max_diff"] = float((torch.stack(logits, dim=1) - full).abs().max())
        model.to(dtype)
        for batch in ints(args.gen_batches):
            decoder = model.decoder(batch, args.gen_bytes + 8, fast=True)
            decoder.prefill(torch.full((batch, 1), BOS, device=device))
            step_tokens = torch.randint(0, 256, (batch,), device=device)
            for _ in range(3):
                decoder.step(step_tokens)
            seconds = time_call(lambda: decoder.step(step_tokens), repeats=args.gen_bytes, device=device)
            row[f"decode_b{batch}_bytes_per_s"] = batch / seconds
        rows.append(row)
        del model, optimizer
    columns = ["differential", "parameters", "train_bytes_per_s", "cached_vs_full_max_diff",
               *[f"decode_b{batch}_bytes_per_s" for batch in ints(args.gen_batches)]]
    print_table(rows, columns, f"differential attention: flat {args.diff_preset}, seq {args.diff_seq_len}, {args.dtype}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sections", default="patch,entropy,diff")
    parser.add_argument("--batches", default="1,64", help="batch sizes of the patcher and full-forward rows")
    parser.add_argument("--length", type=int, default=8192, help="bytes per row")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--entropy-context", type=int, default=512)
    parser.add_argument("--gen-batches", default="1,64")
    parser.add_argument("--gen-bytes", type=int, default=256, help="timed decoder steps")
    parser.add_argument("--diff-preset", default="small")
    parser.add_argument("--diff-seq-len", type=int, default=1024)
    parser.add_argument("--diff-batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    sections = set(args.sections.split(","))
    results = {"environment": describe_environment(device), "args": vars(args)}
    if "patch" in sections:
        results["patchers"] = bench_patchers(args, device)
    if "entropy" in sections:
        results["entropy"] = bench_entropy(args, device)
    if "diff" in sections:
        results["differential"] = bench_differential(args, device)
    write_json(args.out, results)


if __name__ == "__main__":
    main()

"""Mamba benchmarks: the selective scan and a Mamba layer, pure PyTorch against mamba_ssm.

On the GPU machine (H100, bf16 inputs):
    python bench/bench_mamba.py --out bench/results/mamba.json
CPU smoke test:
    python bench/bench_mamba.py --sizes 2x128x32 --repeats 1 --decode-steps 8 --out /tmp/mamba.json

Sections:
* scan: forward + backward of the selective scan alone on random inputs shaped like a
  mixer's (inner = 2 * D, state 16): ``selective_scan`` (pure PyTorch; each ``--chunks``
  value, 0 = its default) and mamba_ssm's ``selective_scan_fn`` when importable on CUDA,
  with the largest output difference from the first row (float32 inputs) as a check.
* layer: forward + backward of a ``MambaStack`` of ``--layers`` layers under bf16 autocast,
  pure PyTorch (``OMNIBYTE_MAMBA_KERNELS=0``) and with the kernels when available.
* decode: one cached step (T = 1) of the same stack at batch B, tokens/s.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    describe_environment,
    peak_memory_gib,
    print_table,
    reset_peak_memory,
    time_call,
    write_json,
)

from omnibyte.devices import autocast, resolve_device  # noqa: E402
from omnibyte.models import mamba  # noqa: E402
from omnibyte.models.mamba import MambaStack, selective_scan  # noqa: E402

STATE_SIZE = 16
CUDA_SIZES = "8x1024x768,1x8192x768,8x8192x384"
CPU_SIZES = "2x256x64,1x1024x64"


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in part.split("x")) for part in text.split(",") if part]


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure(fn: Callable[[], Any], tokens: int, device: torch.device, repeats: int, warmup: int) -> dict:
    """Time ``fn``; an error (OOM, a kernel that does not apply) becomes the row's note."""
    free_memory()
    try:
        reset_peak_memory(device)
        seconds = time_call(fn, repeats=repeats, warmup=warmup, device=device)
    except Exception as error:  # noqa: BLE001 - a bench keeps going and records what failed
        free_memory()
        return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
    return {"ms": seconds * 1e3, "tokens_per_s": tokens / seconds, "peak_gib": peak_memory_gib(device)}


def scan_inputs(batch: int, length: int, inner: int, device, dtype, seed: int = 0) -> dict:
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator) * scale).to(device)

    return dict(
        u=rand(batch, length, inner).to(dtype), delta=rand(batch, length, inner, scale=0.5).to(dtype),
        A=-torch.arange(1, STATE_SIZE + 1, dtype=torch.float32, device=device).repeat(inner, 1),
        B=rand(batch, length, STATE_SIZE).to(dtype), C=rand(batch, length, STATE_SIZE).to(dtype),
        D=torch.ones(inner, device=device), z=rand(batch, length, inner).to(dtype),
        delta_bias=rand(inner, scale=0.5) - 4.0,
    )


def scan_impls(chunks: list[int], device: torch.device) -> dict[str, Callable]:
    impls = {
        f"pytorch chunk={chunk or 'auto'}": (
            lambda chunk: lambda **kw: selective_scan(**kw, delta_softplus=True, chunk_size=chunk or None)
        )(chunk)
        for chunk in chunks
    }
    if mamba.kernels_available() and device.type == "cuda":
        impls["mamba_ssm"] = lambda **kw: mamba._kernel_scan(
            kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], kw["D"], kw["z"], kw["delta_bias"]
        )
    return impls


def bench_scan(sizes, chunks, device, dtype, repeats, warmup) -> list[dict]:
    rows = []
    for batch, length, width in sizes:
        inner = 2 * width
        impls = scan_impls(chunks, device)
        with torch.no_grad():  # outputs of every implementation on the same float32 inputs
            check_inputs = scan_inputs(batch, min(length, 2048), inner, device, torch.float32)
            check = {name: impl(**check_inputs) for name, impl in impls.items()} if len(impls) > 1 else {}
        reference = next(iter(check.values()), None)
        for name, impl in impls.items():
            inputs = scan_inputs(batch, length, inner, device, dtype)
            for key in ("u", "delta", "B", "C", "z"):
                inputs[key].requires_grad_()

            def step():
                impl(**inputs).float().square().mean().backward()

            row = {"section": "scan", "impl": name, "B": batch, "T": length, "D": width, "inner": inner}
            row.update(measure(step, batch * length, device, repeats, warmup))
            if name in check:
                row["max_diff_fp32"] = (check[name] - reference).abs().max().item()
            rows.append(row)
            del inputs
    return rows


def kernel_modes(device: torch.device) -> list[tuple[str, str]]:
    modes = [("pytorch", "0")]
    if mamba.kernels_available() and device.type == "cuda":
        modes.append(("mamba_ssm", "1"))
    return modes


def bench_layer(sizes, layers, device, repeats, warmup) -> list[dict]:
    rows = []
    for batch, length, width in sizes:
        torch.manual_seed(0)
        stack = MambaStack(width, num_layers=layers).to(device).train()
        x = torch.randn(batch, length, width, device=device, requires_grad=True)
        for name, flag in kernel_modes(device):
            os.environ[mamba.KERNELS_ENV] = flag

            def step():
                with autocast(device):
                    out = stack(x)
                out.float().square().mean().backward()

            row = {"section": "layer", "impl": name, "B": batch, "T": length, "D": width, "layers": layers,
                   "params": stack.num_parameters()}
            row.update(measure(step, batch * length, device, repeats, warmup))
            rows.append(row)
        os.environ.pop(mamba.KERNELS_ENV, None)
        del stack, x
    return rows


@torch.no_grad()
def bench_decode(sizes, layers, device, steps) -> list[dict]:
    rows = []
    for batch, _, width in sizes:
        torch.manual_seed(0)
        stack = MambaStack(width, num_layers=layers).to(device).eval()
        if device.type == "cuda":
            stack = stack.to(torch.bfloat16)
        cache = stack.new_cache(batch)
        x = torch.randn(batch, 1, width, device=device, dtype=stack.norm.weight.dtype)

        def run():
            for _ in range(steps):
                stack(x, cache)

        row = {"section": "decode", "impl": "pytorch", "B": batch, "D": width, "layers": layers,
               "cache_bytes": cache.nbytes()}
        row.update(measure(run, batch * steps, device, repeats=1, warmup=1))
        if "ms" in row:
            row["ms"] /= steps  # per step
        rows.append(row)
        del stack, cache
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", help=f"BxTxD list (CUDA default {CUDA_SIZES}, CPU {CPU_SIZES})")
    parser.add_argument("--chunks", default="0,32,64", help="pure scan chunk sizes (0 = default)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--decode-steps", type=int, default=100)
    parser.add_argument("--sections", default="scan,layer,decode")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    sizes = parse_sizes(args.sizes or (CUDA_SIZES if device.type == "cuda" else CPU_SIZES))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    chunks = [int(c) for c in args.chunks.split(",") if c]
    sections = set(args.sections.split(","))
    rows: list[dict] = []
    if "scan" in sections:
        rows += bench_scan(sizes, chunks, device, dtype, args.repeats, args.warmup)
    if "layer" in sections:
        rows += bench_layer(sizes, args.layers, device, args.repeats, args.warmup)
    if "decode" in sections:
        rows += bench_decode(sizes, args.layers, device, args.decode_steps)

    columns = ["section", "impl", "B", "T", "D", "ms", "tokens_per_s", "peak_gib", "max_diff_fp32", "error"]
    print_table(rows, columns, title=f"Mamba on {device} (kernels importable: {mamba.kernels_available()})")
    write_json(args.out, {
        "environment": describe_environment(device),
        "kernels_available": mamba.kernels_available(),
        "state_size": STATE_SIZE,
        "block_elements": mamba.BLOCK_ELEMENTS,
        "rows": rows,
    })


if __name__ == "__main__":
    main()

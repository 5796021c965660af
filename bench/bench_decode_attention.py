"""Cached attention of a decoding step: SDPA over the whole cache under a mask (the layer's path
before decode_attention) against decode_attention's split-K Triton kernel.

Both run through ``Attention._attend_heads`` of one layer of the preset, exactly as a fast
decoder's step calls it (``set_backend`` picks the path), on bf16 caches of S slots whose rows
are filled either to the end ("full": the kernel reads everything too) or to random lengths
("ragged": it reads about half). Times are GPU times per call from ``triton.testing``'s
CUDA-graph bench (a fast decoder replays its step as a CUDA graph, so host launch costs do not
count); ``max_diff`` is each path's largest |difference| from masked softmax attention in float32.

    python bench/bench_decode_attention.py --out runs/decode_attention          # H200: < 60 s
    python bench/bench_decode_attention.py --device cpu --interpret --out /tmp/x  # CPU smoke test
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_environment, print_table, time_call, write_json  # noqa: E402

from omnibyte.models import decode_attention  # noqa: E402
from omnibyte.models.flat import FLAT_PRESETS, ModelConfig  # noqa: E402
from omnibyte.models.layers import Attention, KVCache  # noqa: E402

GRID = dict(batch=(1, 8, 64), tokens=(1, 9), slots=(1088, 8192), fill=("ragged", "full"))
# the interpreter runs every program in Python: a few tiny shapes only
SMOKE_GRID = dict(batch=(2,), tokens=(1, 3), slots=(80,), fill=("ragged",))
BACKENDS = ("sdpa", "triton")


def one_layer(preset: str, device: torch.device) -> Attention:
    config = ModelConfig(**FLAT_PRESETS[preset])
    config.fill_defaults()
    return Attention(config.stack()).to(device).eval()


def cached_call(layer: Attention, batch: int, tokens: int, slots: int, fill: str, device: torch.device,
                dtype: torch.dtype, seed: int = 0):
    """Rotated queries, the layer's visible cache (random keys/values) and the write of
    ``tokens`` new tokens per row after each row's filled length."""
    torch.manual_seed(seed)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    stack = dataclasses.replace(layer.config, num_layers=1)  # one layer's cache
    cache = KVCache(stack, batch, device, dtype, max_len=slots)
    cache.keys.normal_()
    cache.values.normal_()
    if fill == "full":
        lengths = torch.full((batch,), slots - tokens)
    else:
        lengths = torch.randint(0, slots - tokens + 1, (batch,), generator=generator)
    cache.lengths.copy_(lengths)
    write = cache.prepare(torch.ones(batch, tokens, dtype=torch.bool, device=device))
    q = torch.randn(batch, tokens, stack.num_query_heads, stack.head_dim, device=device, dtype=dtype)
    keys, values = cache.keys[0][:, :, :slots], cache.values[0][:, :, :slots]
    return q, keys, values, write, int(lengths.sum()) + batch * tokens


def gpu_us(fn, device: torch.device) -> float:
    """Microseconds per call: CUDA-graph replays on a GPU, wall time of a few calls on CPU."""
    if device.type == "cuda":
        import triton.testing  # noqa: PLC0415

        return 1e3 * triton.testing.do_bench_cudagraph(fn, rep=10)
    return 1e6 * time_call(fn, repeats=2, warmup=1, device=device)


def measure(layer: Attention, preset: str, batch: int, tokens: int, slots: int, fill: str,
            device: torch.device, dtype: torch.dtype) -> dict:
    q, keys, values, write, filled = cached_call(layer, batch, tokens, slots, fill, device, dtype)
    expected = decode_attention.decode_attention_reference(q, keys, values, write.positions).float()
    row = dict(preset=preset, dtype=str(dtype).removeprefix("torch."), heads=layer.num_heads,
               kv_heads=layer.num_kv_heads, head_dim=q.shape[-1], batch=batch, tokens=tokens, slots=slots, fill=fill, filled_fraction=filled / (batch * slots),
               splits=decode_attention.default_splits(slots, batch, layer.num_kv_heads))
    with torch.no_grad():
        for backend in BACKENDS:
            decode_attention.set_backend(backend)
            out = layer._attend_heads(q, keys, values, write)
            row[f"{backend}_max_diff"] = (out.float() - expected).abs().max().item()
            row[f"{backend}_us"] = gpu_us(lambda: layer._attend_heads(q, keys, values, write), device)
    row["speedup"] = row["sdpa_us"] / row["triton_us"]
    # both outputs (and the reference) are rounded to the cache dtype once, so two units in the
    # last place of the largest output is as close as a rounded result can be promised to be;
    # SDPA's own error sets the bar where it is larger
    last_place = torch.finfo(dtype).eps * expected.abs().max().item()
    row["tolerance"] = max(2 * row["sdpa_max_diff"], 2 * last_place)
    row["matches"] = row["triton_max_diff"] <= row["tolerance"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="small,base")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--interpret", action="store_true",
                        help="Triton's interpreter (CPU tensors; tiny shapes, as a smoke test)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before Triton is first imported
    device = torch.device(args.device)
    grid = SMOKE_GRID if args.interpret else GRID
    # Triton's interpreter has no bfloat16 matrix products: float16 there
    dtype = torch.float16 if args.interpret else torch.bfloat16
    rows = []
    for preset in args.presets.split(","):
        layer = one_layer(preset, device)
        probe = torch.empty(1, 1, layer.num_heads, layer.config.head_dim, device=device, dtype=dtype)
        if not decode_attention.usable(probe, probe[:, :, : layer.num_kv_heads].transpose(1, 2)):
            sys.exit(f"error: decode_attention cannot run the {preset} preset here "
                     "(Triton missing, or CPU tensors without --interpret)")
        for batch, tokens, slots, fill in itertools.product(*grid.values()):
            rows.append(measure(layer, preset, batch, tokens, slots, fill, device, dtype))
            print({key: round(value, 4) if isinstance(value, float) else value for key, value in rows[-1].items()},
                  flush=True)
    decode_attention.set_backend("triton")
    columns = ["preset", "heads", "kv_heads", "batch", "tokens", "slots", "fill", "splits", "sdpa_us", "triton_us",
               "speedup", "sdpa_max_diff", "triton_max_diff", "tolerance", "matches"]
    print_table(rows, columns, title=f"cached attention of one layer, {dtype}: SDPA with a mask vs decode_attention")
    write_json(args.out / "decode_attention.json", {"environment": describe_environment(device), "rows": rows})
    if not all(row["matches"] for row in rows):
        sys.exit("error: decode_attention differs from the reference by more than SDPA does (rows with matches=False)")


if __name__ == "__main__":
    main()

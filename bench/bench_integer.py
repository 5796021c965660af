"""Integer numerics against float numerics: bits/byte and speed (compress and decompress, KB/s)
of ``omnibyte compress`` with ``--numerics integer`` and with the float path, on one model and
one file, every row a checked round trip.

    python bench/bench_integer.py --out bench/results/integer_cpu                      # CPU, a tiny demo model
    python bench/bench_integer.py --device cuda --preset small --train-steps 300 --out bench/results/integer_h200
    python bench/bench_integer.py --device cuda --preset small --train-steps 300 --input src \
        --limit-bytes 1000000 --out bench/results/integer_h200_1mb     # more rows: GPU throughput
    python bench/bench_integer.py --model runs/text --input prose.txt --device cuda \\
        --limit-bytes 1000000 --out bench/results/integer_h200

Rows: float in the device's default dtype (bfloat16 on CUDA, float32 on the CPU), float32 on
CUDA too, and integer (float64 products; on the CPU also the int64 reference products with
``--int64``). Same chunk size and rows for every row (``--chunk-size``/``--batch-size``, or
what ``default_layout`` picks for the float path). ``model_bits`` counts the coded streams and
raw chunks only (no header), ``bits_per_byte`` the whole container. With no ``--model`` a flat
``--preset`` model (512 context) is trained for ``--train-steps`` on this repository's docs
(seeded, on ``--device``), and the input is the last 64 KB of them, which it did not train on. KB/s: 1,000 original
bytes per second of wall time. Writes ``results.json`` and ``results.md`` under ``--out``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import omnibyte  # noqa: F401 (first: its CPU settings must precede torch's start)
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_environment, print_table, synchronize, write_json  # noqa: E402

from omnibyte.apps import compress as codec  # noqa: E402
from omnibyte.apps import container  # noqa: E402
from omnibyte.models import BOS, build_model  # noqa: E402
from omnibyte.models.serialization import load_model  # noqa: E402
from omnibyte.models.integer import integer_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["numerics", "device", "dtype", "products", "chunk", "rows", "bits_per_byte", "model_bits",
           "compress_KBps", "decompress_KBps", "seconds_to_quantize"]


def docs_text() -> bytes:
    return b"".join(path.read_bytes() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def demo_model(preset: str, steps: int, train: bytes, device: torch.device) -> torch.nn.Module:
    """A flat ``preset`` model (512 context) trained ``steps`` Adam steps on ``train`` (seeded)."""
    torch.manual_seed(0)
    model = build_model("flat", preset, max_sequence_length=512).to(device)
    tokens = torch.tensor(list(train), device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(tokens) - 256, (16,), generator=generator).tolist()
        targets = torch.stack([tokens[s : s + 256] for s in starts])
        inputs = torch.cat([torch.full((16, 1), BOS, device=device), targets[:, :-1]], dim=1)
        loss = model.loss(inputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def model_bits(blob: bytes) -> float:
    """The stream's bits per byte with raw chunks at 8 and coded ones at their stream size."""
    header = container.unpack(blob)
    return 8 * (sum(map(len, header.streams)) + len(header.raw_data)) / max(1, header.original_size)


def timed_round_trip(data: bytes, model, decode_model, **options) -> dict[str, Any]:
    device = model.device
    synchronize(device)
    start = time.perf_counter()
    blob = codec.compress(data, model, **options)
    synchronize(device)
    middle = time.perf_counter()
    restored = codec.decompress(blob, decode_model)
    synchronize(device)
    end = time.perf_counter()
    if restored != data:
        raise SystemExit(f"round trip failed: {options}")
    header = container.unpack(blob)
    return {"chunk": header.settings.chunk_size, "rows": header.settings.batch_size,
            "bits_per_byte": 8 * len(blob) / len(data), "model_bits": model_bits(blob),
            "compress_KBps": len(data) / 1000 / (middle - start), "decompress_KBps": len(data) / 1000 / (end - middle)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a saved flat model (default: a tiny demo model)")
    parser.add_argument("--input", type=Path, default=None, help="a file, or a folder (its files concatenated)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--limit-bytes", type=int, default=None)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--preset", default="tiny", help="the demo model's flat preset")
    parser.add_argument("--train-steps", type=int, default=150, help="the demo model's training steps")
    parser.add_argument("--int64", action="store_true", help="also time the int64 reference products (CPU)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/integer"))
    args = parser.parse_args()
    device = torch.device(args.device)
    text = docs_text()
    if args.model is None:
        model, data = demo_model(args.preset, args.train_steps, text[:-65536], device), text[-65536:]
        model_name = f"flat {args.preset} (512 ctx), {args.train_steps} steps on the docs"
    else:
        model, data, model_name = load_model(args.model), None, str(args.model)
    if args.input is not None and args.input.is_dir():  # every file under it, in path order
        data = b"".join(path.read_bytes() for path in sorted(args.input.rglob("*")) if path.is_file())
    elif args.input is not None:
        data = args.input.read_bytes()
    if data is None:
        raise SystemExit("--input is needed with --model")
    data = data[: args.limit_bytes] if args.limit_bytes else data
    model = model.to(device)
    sizes = [len(data)]
    chunk, rows = args.chunk_size, args.batch_size
    if chunk is None:
        chunk, default_rows = codec.default_layout(model, sizes, device.type)
        rows = rows or default_rows
    rows = rows or codec.DEFAULT_ROWS.get(device.type, 64)
    layout = {"chunk_size": chunk, "batch_size": rows}
    results = []
    dtypes = ["bfloat16", "float32"] if device.type == "cuda" else ["float32"]
    for dtype in dtypes:
        row = timed_round_trip(data, model, model, dtype=dtype, **layout)
        results.append({"numerics": "float", "device": device.type, "dtype": dtype, "products": "-", **row})
    kinds = ["float64"] + (["int64"] if args.int64 and device.type == "cpu" else [])
    for kind in kinds:
        start = time.perf_counter()
        quantized = integer_model(model, matmul=kind)  # once, as the CLI does for all its files
        seconds = time.perf_counter() - start
        row = timed_round_trip(data, quantized, quantized, numerics="integer", **layout)
        results.append({"numerics": "integer", "device": device.type, "dtype": "-", "products": kind,
                        "seconds_to_quantize": seconds, **row})
    title = f"integer vs float numerics: {model_name}, {len(data):,} bytes on {device}"
    print_table(results, COLUMNS, title)
    float_row = results[0]
    integer_row = next(row for row in results if row["numerics"] == "integer")
    summary = {"bits_cost_percent": 100 * (integer_row["bits_per_byte"] / float_row["bits_per_byte"] - 1),
               "compress_speed_ratio": integer_row["compress_KBps"] / float_row["compress_KBps"],
               "decompress_speed_ratio": integer_row["decompress_KBps"] / float_row["decompress_KBps"]}
    print(f"integer vs {float_row['dtype']} float: {summary['bits_cost_percent']:+.2f}% bits/byte, "
          f"{summary['compress_speed_ratio']:.2f}x compress speed, {summary['decompress_speed_ratio']:.2f}x decompress")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", {"model": model_name, "bytes": len(data), "rows": results,
                                           "summary": summary, "environment": describe_environment(device)})
    lines = [f"### {title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in results:
        lines.append("| " + " | ".join(f"{row.get(c):.3f}" if isinstance(row.get(c), float) else str(row.get(c, ""))
                                       for c in COLUMNS) + " |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Compression with and without online adaptation (``--adapt``), from a trained model and from
scratch, against xz -9e, brotli -q 11, bzip2 -9 (and zstd -19), on one input the models never saw;
plus, with ``--speed-grid``, CPU speed over batch shapes and thread counts (A/B in one run), and,
with ``--layouts`` and ``--model``, that model's size and speed at each chunk layout (no adapting).

    python bench/bench_adapt.py --out bench/results/adapt_cpu                       # CPU, tiny from scratch
    python bench/bench_adapt.py --model runs/text --preset small --device cuda --limit-bytes 2500000 \\
        --input some_unseen_prose.txt --out bench/results/adapt_h200
    python bench/bench_adapt.py --speed-grid --limit-bytes 65536 --out bench/results/compress_cpu_speed
    python bench/bench_adapt.py --model runs/tiny --layouts default,512x128,256x256 --input UNSEEN \
        --limit-bytes 65536 --out bench/results/cpu_layouts

Every omnibyte row is a full round trip (compress, then decompress, checked equal), both timed.
KB/s is 1,000 original bytes per second of wall time. On a shared machine timings are noisy:
compare rows of one run, not runs. Input default: this repository's docs and README (English
prose and code no omnibyte model was trained on). Writes ``results.json`` and ``results.md``
under ``--out``.
"""
from __future__ import annotations

import argparse
import bz2
import lzma
import sys
import time
from pathlib import Path
from typing import Any, Callable

import omnibyte  # noqa: F401 (first: its CPU settings must precede torch's start)
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_environment, print_table, synchronize, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["codec", "model", "adapt", "chunk", "rows", "threads", "bits_per_byte", "compress_KBps",
           "decompress_KBps", "note"]
DEMO_MODEL = dict(hidden_size=128, num_layers=4, num_query_heads=4, num_key_value_heads=2)


def default_input() -> bytes:
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return b"".join(path.read_bytes() for path in paths)


def classic_rows(data: bytes) -> list[dict[str, Any]]:
    codecs: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
        "xz -9e": (lambda d: lzma.compress(d, preset=9 | lzma.PRESET_EXTREME), lzma.decompress),
        "bzip2 -9": (lambda d: bz2.compress(d, 9), bz2.decompress)}
    try:
        import brotli

        codecs["brotli -q 11"] = (lambda d: brotli.compress(d, quality=11), brotli.decompress)
    except ImportError:
        print("brotli not installed: skipped", file=sys.stderr)
    try:
        import zstandard

        codecs["zstd -19"] = (zstandard.ZstdCompressor(level=19).compress, zstandard.ZstdDecompressor().decompress)
    except ImportError:
        print("zstandard not installed: skipped", file=sys.stderr)
    rows = []
    for name, (pack, unpack) in codecs.items():
        start = time.perf_counter()
        packed = pack(data)
        middle = time.perf_counter()
        assert unpack(packed) == data, name
        end = time.perf_counter()
        rows.append(row(name, "", "", None, None, None, data, len(packed), middle - start, end - middle))
    return rows


def row(codec: str, model: str, adapt: str, chunk, rows, threads, data: bytes, size: int,
        compress_s: float, decompress_s: float, note: str = "") -> dict[str, Any]:
    return {"codec": codec, "model": model, "adapt": adapt, "chunk": chunk, "rows": rows, "threads": threads,
            "bits_per_byte": 8 * size / max(len(data), 1), "compress_KBps": len(data) / 1e3 / compress_s,
            "decompress_KBps": len(data) / 1e3 / decompress_s, "note": note}


def omnibyte_row(data: bytes, model, label: str, device, adapt, chunk=None, rows=None, seq_len=None,
                 note: str = "", numerics: str = "auto") -> dict[str, Any]:
    from omnibyte.apps import compress as codec
    from omnibyte.apps.container import unpack

    synchronize(device)
    start = time.perf_counter()
    blob = codec.compress(data, model, chunk, rows, adapt=adapt, device=device, train_seq_len=seq_len,
                          numerics=numerics)
    synchronize(device)
    middle = time.perf_counter()
    restored = codec.decompress(blob, None if not isinstance(model, torch.nn.Module) else model)
    synchronize(device)
    end = time.perf_counter()
    assert restored == data, f"round trip failed: {label}"
    header = unpack(blob)
    settings = header.settings
    schedule = f"lr {header.adapt.lr:g}, block {header.adapt.block}" if header.adapt else "no"
    return row("omnibyte", label, schedule, settings.chunk_size, settings.batch_size, torch.get_num_threads(),
               data, len(blob), middle - start, end - middle, note or f"{settings.device}/{settings.dtype}")


def speed_grid(data: bytes, device) -> list[dict[str, Any]]:
    """CPU speed with ``tiny`` and the demo-sized model over batch shapes and thread counts; the
    models are untrained (sizes meaningless, speeds not)."""
    from omnibyte.models import build_model

    rows = []
    for label, overrides in [("tiny", {}), ("demo (128x4)", DEMO_MODEL)]:
        torch.manual_seed(0)
        model = build_model("flat", "tiny", **overrides).to(device).eval()
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for chunk, batch in [(None, None), (256, 64), (256, 256), (128, 512), (1024, 64)]:
                rows.append(omnibyte_row(data, model, label, device, None, chunk, batch,
                                         note="defaults" if chunk is None else "explicit"))
                print_table(rows[-1:], COLUMNS)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=None, help="the unseen input (default: the repo's docs)")
    parser.add_argument("--limit-bytes", type=int, default=None)
    parser.add_argument("--model", type=Path, default=None, help="a trained model: rows without and with --adapt")
    parser.add_argument("--preset", default="tiny", help="the from-scratch model's preset (flat)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lrs", default="", help="comma-separated adapt learning rates to sweep (default: the defaults)")
    parser.add_argument("--block", type=int, default=None, help="adapt block (default: omnibyte's)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--chunk-size", type=int, default=None, help="default: omnibyte's default layout")
    parser.add_argument("--batch-size", type=int, default=None, help="default: omnibyte's default layout")
    parser.add_argument("--speed-grid", action="store_true", help="CPU speed over batch shapes and threads")
    parser.add_argument("--layouts", default="",
                        help="with --model: comma-separated CHUNKxROWS layouts (or 'default') to code with, "
                             "without adapting, e.g. default,512x128")
    parser.add_argument("--numerics", default="auto", choices=["auto", "float", "integer"],
                        help="the coding numerics of the --layouts rows")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each --layouts row; the fastest counts")
    parser.add_argument("--out", type=Path, required=True, help="output folder (results.json, results.md)")
    args = parser.parse_args(argv)

    from omnibyte.apps import compress as codec
    from omnibyte.devices import resolve_device
    from omnibyte.models.serialization import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = args.input.read_bytes() if args.input else default_input()
    data = data[: args.limit_bytes] if args.limit_bytes else data
    print(f"input: {len(data):,} bytes ({args.input or 'repo docs'}), device {device}", file=sys.stderr)
    if args.layouts and not args.model:
        parser.error("--layouts needs --model")
    rows = [] if args.speed_grid else classic_rows(data)
    if args.speed_grid:
        rows += speed_grid(data, device)
    elif args.layouts:
        model = load_model(args.model, device)
        from omnibyte.cli.compress import trained_seq_len

        for layout in args.layouts.split(","):
            chunk, batch = (None, None) if layout == "default" else map(int, layout.split("x"))
            runs = [omnibyte_row(data, model, str(args.model), device, None, chunk, batch,
                                 seq_len=trained_seq_len(args.model), numerics=args.numerics,
                                 note=f"{layout}, {args.numerics} numerics, best of {args.repeats}")
                    for _ in range(args.repeats)]
            rows.append({**runs[0], **{key: max(run[key] for run in runs)
                                       for key in ("compress_KBps", "decompress_KBps")}})
            print_table(rows[-1:], COLUMNS)
    else:
        lrs = [float(value) for value in args.lrs.split(",") if value] or [None]
        if args.model:
            model = load_model(args.model, device)
            from omnibyte.cli.compress import trained_seq_len

            seq_len = trained_seq_len(args.model)
            rows.append(omnibyte_row(data, model, str(args.model), device, None, args.chunk_size, args.batch_size,
                                     seq_len=seq_len))
            print_table(rows[-1:], COLUMNS)
            for lr in lrs:
                rows.append(omnibyte_row(data, model, str(args.model), device, codec.adapt_settings(lr, args.block),
                                         args.chunk_size, args.batch_size, seq_len=seq_len))
                print_table(rows[-1:], COLUMNS)
        for lr in lrs:
            recipe = codec.scratch_model("flat", args.preset, seed=0)
            rows.append(omnibyte_row(data, recipe, f"scratch flat/{args.preset}", device,
                                     codec.adapt_settings(lr, args.block, scratch=True), args.chunk_size,
                                     args.batch_size))
            print_table(rows[-1:], COLUMNS)
    print_table(rows, COLUMNS, title=f"omnibyte --adapt on {len(data):,} unseen bytes")
    environment = describe_environment(device)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", {"environment": environment, "command": " ".join(sys.argv),
                                           "bytes": len(data), "rows": rows})
    from common import format_value

    lines = [f"{environment.get('gpu') or environment.get('cpu')}, torch {environment['torch']}, {environment['date']}",
             "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(format_value(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

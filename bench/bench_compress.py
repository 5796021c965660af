"""Compressed size and speed of omnibyte against standard codecs on the held-out test splits.

Splits: bench/modality_splits.py (text, code, images, audio). Codecs, every one verified by a
round trip:

* stream codecs on the concatenation of a split's files: gzip -9, bzip2 -9, xz -9e (Python's
  gzip/bz2/lzma), zstd -19 (``zstandard``), brotli -q 11 (``brotli``);
* per-file codecs, each file on its own, sizes summed: PNG (Pillow, optimize=True) of every
  32x32 image, FLAC (``flac -8`` CLI, no padding, no seek table) of every WAV;
* omnibyte with a trained model per modality: every file coded on its own (own chunks, each
  from BOS) in one container, so the header is paid once (a separate .omb per file adds about
  60 bytes each; the row's note says how much in total).

  python bench/bench_compress.py --baselines-only --out bench/baselines.json
  python bench/bench_compress.py --model text=runs/text --model images=runs/images \\
      --batch-size 1024 --chunk-size 2048 --out bench/omnibyte.json --markdown bench/omnibyte.md
  python bench/bench_compress.py --cpu-tiny --limit-bytes 65536   # CPU speed with a tiny model

MB/s is original megabytes (10^6 bytes) per second of wall time, compress and decompress
timed separately.
"""
from __future__ import annotations

import argparse
import bz2
import gzip
import io
import lzma
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_environment, print_table, synchronize, write_json  # noqa: E402
from modality_splits import MODALITIES, fashion_images, load_split  # noqa: E402

COLUMNS = ["modality", "codec", "mode", "files", "bytes", "compressed", "bits_per_byte", "ratio",
           "vs_reference", "compress_MBps", "decompress_MBps", "note"]
REFERENCE = {"text": "bzip2 -9", "code": "xz -9e", "images": "PNG", "audio": "FLAC"}  # the targets

Files = list[tuple[str, bytes]]


def _limited(files: Files, limit: int | None) -> Files:
    """The first files up to ``limit`` bytes (the first file cut to fit when it alone is larger)."""
    if not limit:
        return files
    kept, total = [], 0
    for name, data in files:
        if total + len(data) > limit:
            if not kept:
                kept.append((name, data[:limit]))
            break
        kept.append((name, data))
        total += len(data)
    return kept


def _row(modality: str, codec: str, mode: str, files: Files, compressed: int,
         compress_s: float, decompress_s: float, note: str = "") -> dict[str, Any]:
    original = sum(len(data) for _, data in files)
    return {"modality": modality, "codec": codec, "mode": mode, "files": len(files), "bytes": original,
            "compressed": compressed, "bits_per_byte": 8 * compressed / original,
            "ratio": original / compressed, "compress_MBps": original / 1e6 / compress_s,
            "decompress_MBps": original / 1e6 / decompress_s, "note": note}


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


# ---- stream codecs -----------------------------------------------------------------

def stream_codecs() -> dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]]:
    codecs = {
        "gzip -9": (lambda d: gzip.compress(d, 9, mtime=0), gzip.decompress),
        "bzip2 -9": (lambda d: bz2.compress(d, 9), bz2.decompress),
        "xz -9e": (lambda d: lzma.compress(d, preset=9 | lzma.PRESET_EXTREME), lzma.decompress),
    }
    try:
        import zstandard

        codecs["zstd -19"] = (zstandard.ZstdCompressor(level=19).compress,
                              zstandard.ZstdDecompressor().decompress)
    except ImportError:
        print("zstandard not installed (pip install 'omnibyte[bench]'): skipping zstd", file=sys.stderr)
    try:
        import brotli

        codecs["brotli -q 11"] = (lambda d: brotli.compress(d, quality=11), brotli.decompress)
    except ImportError:
        print("brotli not installed (pip install 'omnibyte[bench]'): skipping brotli", file=sys.stderr)
    return codecs


def bench_stream_codecs(modality: str, files: Files) -> list[dict[str, Any]]:
    data = b"".join(content for _, content in files)
    rows = []
    for name, (pack, unpack) in stream_codecs().items():
        packed, compress_s = _timed(lambda: pack(data))
        restored, decompress_s = _timed(lambda: unpack(packed))
        assert restored == data, f"{name} round trip failed"
        rows.append(_row(modality, name, "concatenation", files, len(packed), compress_s, decompress_s))
    return rows


# ---- per-file codecs ---------------------------------------------------------------

def bench_png(files: Files) -> dict[str, Any]:
    """PNG of the same padded 32x32 pixels as the BMP files (the BMP header is implied)."""
    from PIL import Image

    images = fashion_images("t10k")[0][: len(files)]

    def pack() -> list[bytes]:
        out = []
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image, "L").save(buffer, "PNG", optimize=True)
            out.append(buffer.getvalue())
        return out

    packed, compress_s = _timed(pack)
    restored, decompress_s = _timed(lambda: [np.asarray(Image.open(io.BytesIO(p))) for p in packed])
    assert all(np.array_equal(a, b) for a, b in zip(images, restored)), "PNG round trip failed"
    return _row("images", "PNG", "per file", files, sum(map(len, packed)), compress_s, decompress_s,
                "pixels only (BMP header implied)")


def bench_flac(files: Files) -> dict[str, Any] | None:
    flac = shutil.which("flac")
    if flac is None:
        print("flac CLI not found (apt-get install flac): skipping FLAC", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        wavs = []
        for name, data in files:
            wavs.append(folder / name)
            wavs[-1].write_bytes(data)
        flacs = [wav.with_suffix(".flac") for wav in wavs]
        _, compress_s = _timed(lambda: subprocess.run(
            [flac, "-8", "--no-padding", "--no-seektable", "--silent", "--force", *map(str, wavs)], check=True))
        for wav in wavs:
            wav.unlink()
        _, decompress_s = _timed(lambda: subprocess.run(
            [flac, "-d", "--silent", "--force", *map(str, flacs)], check=True))
        identical = all(wav.read_bytes() == data for wav, (_, data) in zip(wavs, files))
        assert identical, "FLAC round trip did not restore the WAV files byte for byte"
        size = sum(path.stat().st_size for path in flacs)
    return _row("audio", "FLAC", "per file", files, size, compress_s, decompress_s,
                "flac -8, one process for all files; WAV files restored byte for byte")


# ---- omnibyte ------------------------------------------------------------------------

def bench_omnibyte(modality: str, files: Files, model, args: argparse.Namespace, label: str) -> dict[str, Any]:
    from omnibyte.apps import compress as codec
    from omnibyte.apps.container import unpack

    members = [data for _, data in files]
    device = model.device
    fingerprint = codec.model_fingerprint(model)
    options = dict(chunk_size=args.chunk_size, batch_size=args.batch_size, dtype=args.dtype, fingerprint=fingerprint)
    if args.warmup and device.type == "cuda":  # first CUDA calls pay for kernels and graph capture
        codec.compress_members([members[0][:256]], model, **options)
    synchronize(device)
    blob, compress_s = _timed(lambda: codec.compress_members(members, model, **options))
    synchronize(device)
    restored, decompress_s = _timed(lambda: codec.decompress_members(blob, model, fingerprint=fingerprint))
    assert restored == members, f"omnibyte round trip failed on {modality}"
    header = unpack(blob)
    settings = header.settings
    per_file_header = len(codec.compress(b"", model, fingerprint=fingerprint)) + 8  # + size varints, roughly
    note = (f"{settings.device}/{settings.dtype}, chunk {settings.chunk_size}, batch {settings.batch_size}"
            f"{', fast' if settings.fast else ''}; {label}")
    if len(files) > 1:
        note += f"; separate .omb files would add ~{(len(files) - 1) * per_file_header:,} B"
    return _row(modality, "omnibyte", "per file", files, len(blob), compress_s, decompress_s, note)


def parse_models(items: list[str]) -> dict[str, Path]:
    models = {}
    for item in items:
        modality, sep, path = item.partition("=")
        if not sep or modality not in MODALITIES:
            raise SystemExit(f"--model expects MODALITY=DIR with MODALITY in {', '.join(MODALITIES)}, got {item!r}")
        models[modality] = Path(path)
    return models


def add_reference_ratios(rows: list[dict[str, Any]]) -> None:
    """vs_reference: compressed size over the modality's reference codec (the issue's targets)."""
    for row in rows:
        reference = next((r for r in rows if r["modality"] == row["modality"] and r["bytes"] == row["bytes"]
                          and r["codec"] == REFERENCE[row["modality"]]), None)  # same data only
        row["vs_reference"] = row["compressed"] / reference["compressed"] if reference else None


def markdown(rows: list[dict[str, Any]], environment: dict[str, Any]) -> str:
    lines = [f"Environment: {environment.get('gpu') or environment.get('cpu')}, torch {environment['torch']}, "
             f"{environment['date']}", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    from common import format_value

    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(column)) for column in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modalities", default=",".join(MODALITIES))
    parser.add_argument("--model", action="append", default=[], metavar="MODALITY=DIR")
    parser.add_argument("--baselines-only", action="store_true", help="standard codecs only, no model")
    parser.add_argument("--no-baselines", action="store_true", help="omnibyte rows only")
    parser.add_argument("--baselines-from", type=Path, default=None,
                        help="add the baseline rows of an earlier --out JSON (e.g. computed on a CPU machine)")
    parser.add_argument("--cpu-tiny", action="store_true",
                        help="omnibyte speed on the CPU with an untrained tiny flat model (sizes meaningless)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--chunk-size", type=int, default=None, help="default: 64 KiB or the model's context")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--limit-bytes", type=int, default=None, help="use only this many bytes of each split")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false")
    parser.add_argument("--out", type=Path, default=None, help="JSON results")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table as Markdown")
    args = parser.parse_args(argv)

    from omnibyte.devices import resolve_device
    from omnibyte.models import build_model
    from omnibyte.models.serialization import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device("cpu" if args.cpu_tiny else args.device)
    model_dirs = {} if args.baselines_only else parse_models(args.model)
    rows: list[dict[str, Any]] = []
    for modality in args.modalities.split(","):
        files = _limited(load_split(modality, "test"), args.limit_bytes)
        print(f"{modality}: {len(files):,} files, {sum(len(d) for _, d in files):,} bytes", file=sys.stderr)
        if not args.no_baselines:
            rows += bench_stream_codecs(modality, files)
            if modality == "images":
                rows.append(bench_png(files))
            if modality == "audio":
                rows += [row for row in [bench_flac(files)] if row]
        if args.cpu_tiny:
            torch.manual_seed(0)
            rows.append(bench_omnibyte(modality, files, build_model("flat", "tiny").to(device), args,
                                       "untrained tiny flat model: speed only"))
        elif modality in model_dirs:
            model = load_model(model_dirs[modality], device)
            rows.append(bench_omnibyte(modality, files, model, args, f"model {model_dirs[modality]}"))
    if args.baselines_from:
        import json

        earlier = json.loads(args.baselines_from.read_text())["rows"]
        computed = {(row["modality"], row["codec"]) for row in rows}
        rows = [row for row in earlier if row["codec"] != "omnibyte" and (row["modality"], row["codec"]) not in computed
                and row["modality"] in args.modalities.split(",")] + rows
    add_reference_ratios(rows)
    print_table(rows, COLUMNS, title="Lossless compression on the held-out test splits")
    environment = describe_environment(device)
    write_json(args.out, {"environment": environment, "rows": rows,
                          "settings": {"batch_size": args.batch_size, "chunk_size": args.chunk_size,
                                       "dtype": args.dtype, "limit_bytes": args.limit_bytes}})
    if args.markdown:
        from omnibyte.fileio import atomic_write_bytes

        atomic_write_bytes(args.markdown, markdown(rows, environment).encode())
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Held-out compression table (issue 14, item 4): omnibyte through its CLI, as a user runs it, on
files of every kind that no model was trained on, against the classic codecs.

    python bench/bench_heldout.py --heldout runs/general-mix/heldout --train runs/general-mix/train \\
        --limit-bytes 65536 --out DIR

For each kind (a sub-folder of --heldout: prose, code, ELF binaries, raw images, WAV audio, MIDI,
a tar of mixed files), the first files in name order up to ``--limit-bytes`` are compressed each
on its own (what ``omnibyte compress FILE...`` and ``xz FILE`` do), sizes summed:

* classic codecs: xz -9e, brotli -q 11, zstd -19, bzip2 -9; PNG (Pillow, optimize) for the
  images, the BMP header counted as stored; FLAC (``flac -8``) for the WAV files;
* omnibyte with each ``--config`` (CLI options; the default set: the built-in model with its
  default numerics, the built-in model with ``--adapt``, a fresh ``--model none`` model with
  ``--adapt``), one ``omnibyte compress`` command per kind, then ``omnibyte decompress``, whose
  output must equal the input (the row fails otherwise). Speeds are wall time of the commands,
  start-up included.

``--train`` (a folder) refuses any held-out file whose bytes also occur as a training file.
Writes ``heldout.json`` and ``heldout.md`` into --out and prints the table.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compress import stream_codecs  # noqa: E402
from common import describe_environment, format_value, print_table, write_json  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = {
    "built-in": [],
    "built-in --adapt": ["--adapt"],
    "scratch --adapt (tiny)": ["--model", "none", "--preset", "tiny", "--adapt"],
}
COLUMNS = ["kind", "codec", "files", "bytes", "compressed", "bits_per_byte", "vs_best_classic",
           "compress_KBps", "decompress_KBps"]


def kind_files(folder: Path, limit: int) -> list[Path]:
    """Files of ``folder`` in name order that fit together in ``limit`` bytes (whole files: a
    larger one is passed over), or the smallest file when none fits."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "MANIFEST.json")
    chosen, total = [], 0
    for path in files:
        if total + path.stat().st_size <= limit:
            chosen.append(path)
            total += path.stat().st_size
    return chosen or [min(files, key=lambda path: path.stat().st_size)]


def training_hashes(folder: Path | None) -> set[str]:
    if folder is None:
        return set()
    return {hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.rglob("*") if path.is_file()}


def classic_rows(kind: str, files: list[Path]) -> list[dict[str, Any]]:
    rows = []
    contents = [path.read_bytes() for path in files]
    codecs = dict(stream_codecs())
    codecs.pop("gzip -9", None)  # the issue compares xz, brotli, zstd and bzip2
    for name, (pack, unpack) in codecs.items():
        started = time.perf_counter()
        packed = [pack(data) for data in contents]
        compress_s = time.perf_counter() - started
        started = time.perf_counter()
        assert [unpack(blob) for blob in packed] == contents, f"{name} round trip failed"
        rows.append(row(kind, name, contents, sum(map(len, packed)), compress_s, time.perf_counter() - started))
    if kind.startswith("image"):
        rows.append(png_row(kind, files, contents))
    if kind == "wav" and shutil.which("flac"):
        rows.append(flac_row(kind, files, contents))
    return rows


def png_row(kind: str, files: list[Path], contents: list[bytes]) -> dict[str, Any]:
    """PNG of each BMP's pixels; the BMP header (its bytes before the pixel data) is counted as
    stored, so the row stands for a lossless BMP codec."""
    from PIL import Image

    started = time.perf_counter()
    sizes = []
    for data in contents:
        image = Image.open(io.BytesIO(data))
        header = int.from_bytes(data[10:14], "little")  # BMP: offset of the pixel array
        buffer = io.BytesIO()
        image.save(buffer, "PNG", optimize=True)
        restored = Image.open(io.BytesIO(buffer.getvalue()))
        assert restored.tobytes() == image.tobytes(), "PNG round trip failed"
        sizes.append(len(buffer.getvalue()) + header)
    seconds = time.perf_counter() - started
    return row(kind, "PNG (+ BMP header)", contents, sum(sizes), seconds, None)


def flac_row(kind: str, files: list[Path], contents: list[bytes]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        wavs = []
        for index, data in enumerate(contents):
            wavs.append(Path(tmp) / f"{index}.wav")
            wavs[-1].write_bytes(data)
        started = time.perf_counter()
        subprocess.run(["flac", "-8", "--no-padding", "--no-seektable", "--silent", "--force", *map(str, wavs)],
                       check=True)
        compress_s = time.perf_counter() - started
        flacs = [wav.with_suffix(".flac") for wav in wavs]
        size = sum(path.stat().st_size for path in flacs)
        for wav in wavs:
            wav.unlink()
        started = time.perf_counter()
        subprocess.run(["flac", "-d", "--silent", "--force", *map(str, flacs)], check=True)
        decompress_s = time.perf_counter() - started
        assert [wav.read_bytes() for wav in wavs] == contents, "FLAC did not restore the WAV files"
    return row(kind, "FLAC -8", contents, size, compress_s, decompress_s)


def omnibyte_row(kind: str, name: str, options: list[str], files: list[Path], device: str) -> dict[str, Any]:
    """One ``omnibyte compress`` over the kind's files, then ``omnibyte decompress``; checked."""
    contents = [path.read_bytes() for path in files]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "omnibyte.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        packed, unpacked = Path(tmp) / "packed", Path(tmp) / "unpacked"
        packed.mkdir()
        unpacked.mkdir()
        # one input takes an output file, several an output folder
        target = packed / (files[0].name + ".omb") if len(files) == 1 else packed
        started = time.perf_counter()
        subprocess.run(command + ["compress", "-q", "--device", device, *options, "-o", str(target),
                                  *map(str, files)], check=True, env=env)
        compress_s = time.perf_counter() - started
        streams = sorted(packed.iterdir())
        size = sum(path.stat().st_size for path in streams)
        started = time.perf_counter()
        target = unpacked / files[0].name if len(files) == 1 else unpacked
        subprocess.run(command + ["decompress", "-q", "-o", str(target), *map(str, streams)], check=True, env=env)
        decompress_s = time.perf_counter() - started
        restored = {path.name: path.read_bytes() for path in unpacked.iterdir()}
        assert [restored[path.name] for path in files] == contents, f"omnibyte {name} round trip failed on {kind}"
    return row(kind, f"omnibyte {name}", contents, size, compress_s, decompress_s)


def row(kind, codec, contents, compressed, compress_s, decompress_s) -> dict[str, Any]:
    total = sum(map(len, contents))
    return {"kind": kind, "codec": codec, "files": len(contents), "bytes": total, "compressed": compressed,
            "bits_per_byte": 8 * compressed / total,
            "compress_KBps": total / 1e3 / compress_s if compress_s else None,
            "decompress_KBps": total / 1e3 / decompress_s if decompress_s else None}


def mark_best(rows: list[dict[str, Any]]) -> None:
    for kind in {row["kind"] for row in rows}:
        classic = [row for row in rows if row["kind"] == kind and not row["codec"].startswith("omnibyte")]
        best = min(row["compressed"] for row in classic)
        for item in rows:
            if item["kind"] == kind:
                item["vs_best_classic"] = item["compressed"] / best


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(format_value(item.get(column)) for column in COLUMNS) + " |" for item in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heldout", type=Path, required=True, help="one sub-folder of files per kind")
    parser.add_argument("--train", type=Path, default=None, help="the training files: none may be held out")
    parser.add_argument("--kinds", default=None, help="comma-separated sub-folders (default: all)")
    parser.add_argument("--limit-bytes", type=int, default=65536, help="bytes per kind")
    parser.add_argument("--config", action="append", default=None, metavar="NAME=OPTIONS",
                        help="an omnibyte row: NAME=compress options (repeatable; default: built-in, "
                             "built-in --adapt, scratch --adapt)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    configs = DEFAULT_CONFIGS if args.config is None else {
        name: options.split() for name, _, options in (item.partition("=") for item in args.config)}
    trained = training_hashes(args.train)
    kinds = args.kinds.split(",") if args.kinds else sorted(p.name for p in args.heldout.iterdir() if p.is_dir())
    rows: list[dict[str, Any]] = []
    for kind in kinds:
        files = kind_files(args.heldout / kind, args.limit_bytes)
        seen = [path.name for path in files if hashlib.sha256(path.read_bytes()).hexdigest() in trained]
        if seen:
            raise SystemExit(f"{kind}: held-out files also in the training data: {', '.join(seen)}")
        print(f"{kind}: {len(files)} files, {sum(p.stat().st_size for p in files):,} bytes", flush=True)
        rows += classic_rows(kind, files)
        for name, options in configs.items():
            rows.append(omnibyte_row(kind, name, options, files, args.device))
            print(f"  {name}: {rows[-1]['bits_per_byte']:.3f} bits/byte", flush=True)
        mark_best(rows)
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "heldout.json", {"environment": describe_environment(args.device if args.device != "auto"
                                                                                   else None),
                                               "command": " ".join(sys.argv), "rows": rows})
        (args.out / "heldout.md").write_text(markdown(rows))
    print_table(rows, COLUMNS)


if __name__ == "__main__":
    main()

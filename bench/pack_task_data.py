"""A compact copy of the data ``bench/bench_tasks.py`` reads, for a machine without
``../shared/data`` (about 41 MB; carry it, e.g. as ``runs/task_data``, which git ignores):

* ``fashion-mnist/``: the four idx ``.gz`` files as they are (30.9 MB);
* ``nottingham/ABC_cleaned/``: the 14 ABC files as they are (0.4 MB);
* ``fsdd/recordings/``: each recording already as the benchmark reads it, 8 kHz mono 8-bit
  PCM cut at 1 s, without the silence padding (9.8 MB instead of 21 MB). Reading it back with
  ``omnibyte.media.audio_to_wav`` gives byte for byte the WAV the original gives (checked here
  for every file).

    python bench/pack_task_data.py --data ../shared/data --out runs/task_data
"""
from __future__ import annotations

import argparse
import io
import shutil
import wave
from pathlib import Path

from omnibyte.media import SAMPLE_RATE, SILENCE, WAV_BYTES, audio_to_wav

FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz")


def compact_wav(original: Path) -> bytes:
    """The benchmark's WAV of ``original`` without its trailing silence (padding comes back on reading)."""
    standard = audio_to_wav(original)
    samples = standard[WAV_BYTES - SAMPLE_RATE:].rstrip(bytes([SILENCE])) or bytes([SILENCE])
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(samples)
    packed = buffer.getvalue()
    if audio_to_wav(packed) != standard:
        raise SystemExit(f"{original}: the compact copy does not read back identically")
    return packed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    (args.out / "fashion-mnist").mkdir(parents=True, exist_ok=True)
    for name in FASHION_FILES:
        shutil.copyfile(args.data / "fashion-mnist" / name, args.out / "fashion-mnist" / name)
    shutil.copytree(args.data / "nottingham" / "ABC_cleaned", args.out / "nottingham" / "ABC_cleaned",
                    dirs_exist_ok=True)
    recordings = args.out / "fsdd" / "recordings"
    recordings.mkdir(parents=True, exist_ok=True)
    for path in sorted((args.data / "fsdd" / "recordings").glob("*.wav")):
        (recordings / path.name).write_bytes(compact_wav(path))
    total = sum(path.stat().st_size for path in args.out.rglob("*") if path.is_file())
    print(f"wrote {args.out}: {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()

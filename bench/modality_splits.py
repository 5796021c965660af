"""Deterministic train / validation / test splits of the shared data, one per modality.

Each split is a list of ``(name, bytes)`` files, always in the same order:

* text   -- ``text/gcide.txt.gz`` decompressed (39,952,321 bytes): test = the last 2,000,000
            bytes, validation = the 2,000,000 before, train = the rest (one file each).
* code   -- Linux 6.1 (``code/linux-6.1-core.tar.xz``), regular files split by path:
            ``sha256(path)`` as a number mod 100 gives bucket 0-1 test, 2-3 validation,
            4-99 train (about 2 % / 2 % / 96 %).
* images -- Fashion-MNIST, every 28x28 image padded by 2 black pixels to 32x32 and written as
            an 8-bit greyscale BMP (Pillow): test = the 10,000 test images, train = the 60,000
            train images; names ``{index:05d}_{label}.bmp``. No validation split.
* audio  -- FSDD WAV files as they are: test = take index 0-4 (the official test split,
            300 files), train = index 5-49 (2,700 files). No validation split.

``python bench/modality_splits.py materialize images --split train --out /tmp/images-train``
writes a split as a folder of files, ready for ``omnibyte train /tmp/images-train``;
``python bench/modality_splits.py summary`` prints every split's size.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import sys
import tarfile
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("OMNIBYTE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MODALITIES = ("text", "code", "images", "audio")
SPLITS = ("train", "validation", "test")
TEXT_HELD_OUT = 2_000_000
CODE_BUCKETS = {"test": range(0, 2), "validation": range(2, 4), "train": range(4, 100)}
AUDIO_TEST_TAKES = range(0, 5)

File = tuple[str, bytes]


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (set OMNIBYTE_DATA to the shared data folder)")
    return path


def text_split(split: str, data_dir: Path = DATA) -> list[File]:
    with gzip.open(_require(data_dir / "text" / "gcide.txt.gz"), "rb") as file:
        text = file.read()
    test_start = len(text) - TEXT_HELD_OUT
    validation_start = test_start - TEXT_HELD_OUT
    ranges = {"train": (0, validation_start), "validation": (validation_start, test_start),
              "test": (test_start, len(text))}
    start, end = ranges[split]
    return [(f"gcide-{split}.txt", text[start:end])]


def code_bucket(path: str) -> int:
    return int.from_bytes(hashlib.sha256(path.encode("utf-8")).digest()[:8], "big") % 100


def code_split(split: str, data_dir: Path = DATA) -> list[File]:
    buckets = CODE_BUCKETS[split]
    files = []
    with tarfile.open(_require(data_dir / "code" / "linux-6.1-core.tar.xz"), "r:xz") as archive:
        for member in archive:
            if member.isfile() and code_bucket(member.name) in buckets:
                files.append((member.name, archive.extractfile(member).read()))
    return sorted(files)


def fashion_images(part: str, data_dir: Path = DATA) -> tuple[np.ndarray, np.ndarray]:
    """(images [n, 32, 32] uint8 padded, labels [n]) of Fashion-MNIST 'train' or 't10k'."""
    def idx(path: Path) -> np.ndarray:
        raw = gzip.open(_require(path), "rb").read()
        dims = np.frombuffer(raw, ">u4", raw[3], 4)
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(dims)

    folder = data_dir / "fashion-mnist"
    images = idx(folder / f"{part}-images-idx3-ubyte.gz")
    labels = idx(folder / f"{part}-labels-idx1-ubyte.gz")
    return np.pad(images, ((0, 0), (2, 2), (2, 2))), labels


def bmp_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image, "L").save(buffer, "BMP")
    return buffer.getvalue()


def image_split(split: str, data_dir: Path = DATA) -> list[File]:
    if split == "validation":
        return []
    images, labels = fashion_images("t10k" if split == "test" else "train", data_dir)
    return [(f"{index:05d}_{label}.bmp", bmp_bytes(image))
            for index, (image, label) in enumerate(zip(images, labels))]


def audio_take(name: str) -> int:
    """The take index of an FSDD file name ``{digit}_{speaker}_{index}.wav``."""
    return int(Path(name).stem.rsplit("_", 1)[1])


def audio_split(split: str, data_dir: Path = DATA) -> list[File]:
    if split == "validation":
        return []
    folder = _require(data_dir / "fsdd" / "recordings")
    wanted = (lambda take: take in AUDIO_TEST_TAKES) if split == "test" else (lambda take: take not in AUDIO_TEST_TAKES)
    return [(path.name, path.read_bytes()) for path in sorted(folder.glob("*.wav")) if wanted(audio_take(path.name))]


LOADERS = {"text": text_split, "code": code_split, "images": image_split, "audio": audio_split}


def load_split(modality: str, split: str = "test", data_dir: Path = DATA) -> list[File]:
    if modality not in LOADERS:
        raise ValueError(f"unknown modality {modality!r} (choose from {', '.join(MODALITIES)})")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    return LOADERS[modality](split, data_dir)


def materialize(modality: str, split: str, out_dir: Path, data_dir: Path = DATA) -> int:
    """Write a split as files under ``out_dir`` (code keeps its relative paths); return the count."""
    out_dir = Path(out_dir)
    files = load_split(modality, split, data_dir)
    for name, data in files:
        target = (out_dir / name).resolve()
        if out_dir.resolve() not in target.parents:
            raise ValueError(f"refusing to write outside {out_dir}: {name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return len(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("materialize", help="write a split as a folder of files")
    write.add_argument("modality", choices=MODALITIES)
    write.add_argument("--split", default="train", choices=SPLITS)
    write.add_argument("--out", type=Path, required=True)
    commands.add_parser("summary", help="files and bytes of every split")
    args = parser.parse_args(argv)
    if args.command == "materialize":
        count = materialize(args.modality, args.split, args.out)
        print(f"wrote {count:,} {args.modality} {args.split} files to {args.out}")
        return 0
    for modality in MODALITIES:
        for split in SPLITS:
            files = load_split(modality, split)
            print(f"{modality:<8}{split:<12}{len(files):>8,} files {sum(len(d) for _, d in files):>14,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

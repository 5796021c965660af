#!/usr/bin/env python3
"""Assemble the training mix of omnibyte's built-in general model, and a held-out set.

    python scripts/build_general_mix.py [--out runs/general-mix] [--data ../shared/data]
                                        [--max-mb 40] [--heldout-mb 8] [--seed 0]

Sources: every kind in the shared data folder (English text, Linux source, Fashion-MNIST as BMP
images, FSDD WAV speech, Nottingham ABC + MIDI, the CPython format samples) and the common
formats the Debian and PyPI packages of this machine provide (ELF executables and shared
libraries, Python source and .pyc, man pages, HTML / JSON / XML / CSV / SVG / PDF / fonts /
images / gettext catalogues / archives under /usr/share and the Python trees).

What it writes under ``--out``:

* ``train/<kind>/<kind>-NNNN.<ext>.xz``: the training folder ``omnibyte train`` reads. Each
  shard is whole files of one kind, concatenated, then xz-compressed (the trainer decompresses
  ``.xz`` in memory), so about 3-4x more raw bytes fit in the ``--max-mb`` the GPU machine
  receives. A shard's inner name never ends in a tar/zip/gz suffix, so archives are learnt as
  their own bytes, not unpacked into members.
* ``MANIFEST.json``: per kind the files, raw bytes, bytes on disk and sources; the settings.
* ``FILES.tsv.gz``: every training file: kind, shard, source name, bytes, sha256.
* ``heldout/<kind>/...``: files never in the training mix (different files, never a slice of
  a training file; byte-identical copies are removed from training by content hash), stored
  raw, with ``heldout/MANIFEST.json``. Kinds: prose, code-c, code-python, elf, image-raw, wav,
  midi, tar (tars of held-out files of the other kinds; named ``.tar.bin`` so ``omnibyte
  eval`` scores the tar's own bytes instead of its members).

Deterministic: the same sources, ``--seed`` and sizes give the same bytes (files are walked in
sorted order, shuffled with the seed, tars have fixed times and owners).
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import io
import json
import lzma
import os
import random
import shutil
import sys
import tarfile
import time
import warnings
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # omnibyte.media (BMP) from this checkout

MB = 1 << 20
SHARD_RAW_BYTES = 1 * MB  # whole files are concatenated up to about this much per shard
XZ_PRESET = 6
HELD_OUT_NOTE = ("files never in the training mix: different files (no slice of a training file); "
                 "training files byte-identical to one of these were dropped")
# Roots of the machine's own packages (Debian and PyPI); whatever is missing is skipped.
SYSTEM_ROOTS = ("/usr/share", "/usr/lib/python3", "/usr/lib/python3.11")
PYTHON_TREES = tuple(sorted({p for p in (sys.base_prefix + "/lib/python3.11", "/usr/lib/python3.11",
                                         "/usr/lib/python3/dist-packages") if os.path.isdir(p)}))
BINARY_DIRS = ("/usr/bin", "/usr/sbin", "/usr/lib/x86_64-linux-gnu", "/usr/libexec", "/usr/lib/git-core")
UNPACKED_SUFFIXES = (".tar", ".tgz", ".txz", ".tbz", ".tbz2", ".zip", ".gz", ".xz", ".lzma", ".bz2")


def stable_fraction(name: str, seed: int) -> float:
    """A number in [0, 1) from ``name`` and the seed, the same in every run."""
    return zlib.crc32(f"{seed}:{name}".encode("utf-8", "surrogateescape")) / 2**32


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- sources: each yields (name, bytes, source) in a deterministic order -----------------------

Item = tuple[str, bytes, str]


_WALKED: dict[str, list[tuple[str, int]]] = {}


def files_under(root: str) -> list[tuple[str, int]]:
    """(path, size) of every regular file (no symlinks) under ``root``, walked once; hidden
    folders and omnibyte's own trees are not walked."""
    if root not in _WALKED:
        found = []
        for folder, folders, names in os.walk(root):
            folders[:] = sorted(f for f in folders if not f.startswith(".") and f != "omnibyte")
            for name in sorted(names):
                path = os.path.join(folder, name)
                try:
                    if os.path.islink(path) or not os.path.isfile(path):
                        continue
                    found.append((path, os.path.getsize(path)))
                except OSError:
                    continue
        _WALKED[root] = found
    return _WALKED[root]


def walk_files(roots: Iterable[str], suffixes: tuple[str, ...] = (), max_bytes: int = 4 * MB,
               min_bytes: int = 1, accept: Callable[[str], bool] | None = None) -> list[str]:
    """Files under ``roots`` whose names end in ``suffixes`` (any when empty) and whose size
    is in [min_bytes, max_bytes], sorted."""
    found: set[str] = set()
    for root in roots:
        if not os.path.isdir(root):
            continue
        for path, size in files_under(root):
            if suffixes and not os.path.basename(path).lower().endswith(suffixes):
                continue
            if min_bytes <= size <= max_bytes and (accept is None or accept(path)):
                found.add(os.path.realpath(path))
    return sorted(found)


def read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def shuffled(paths: list[str], seed: int, salt: str) -> list[str]:
    order = list(paths)
    random.Random(f"{seed}:{salt}").shuffle(order)
    return order


def file_items(paths: Iterable[str], source: str, transform: Callable[[bytes], bytes | None] | None = None
               ) -> Iterator[Item]:
    for path in paths:
        data = read_bytes(path)
        if data is not None and transform is not None:
            try:
                data = transform(data)
            except Exception:  # a damaged system file: leave it out
                data = None
        if data:
            yield path, data, source


def is_x86_64_elf(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(20)
    except OSError:
        return False
    return len(head) == 20 and head[:4] == b"\x7fELF" and head[18:20] == b"\x3e\x00"


def is_text_script(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
    except OSError:
        return False
    return head == b"#!"


def tar_members(path: Path, accept: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """Regular members of a (compressed) tar, in archive order."""
    with tarfile.open(path, "r:*") as archive:
        for member in archive:
            if member.isreg() and member.size and accept(member.name):
                handle = archive.extractfile(member)
                if handle is not None:
                    yield member.name, handle.read()


def gunzip(data: bytes) -> bytes:
    return gzip.decompress(data)


def png_to_bmp(data: bytes, max_side: int = 256) -> bytes | None:
    """A PNG/GIF/JPEG from the packages, decoded to an uncompressed BMP (raw pixels)."""
    from PIL import Image

    with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as image:
        warnings.simplefilter("ignore")  # palette transparency notes: the pixels are what is kept
        image.load()
        if max(image.size) > max_side or min(image.size) < 8:
            return None
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="BMP")
        return buffer.getvalue()


def fashion_images(data_dir: Path, split: str) -> np.ndarray:
    from omnibyte.data.fashion_mnist import FILES, read_idx

    return read_idx(data_dir / "fashion-mnist" / FILES[split][0])


def mosaic(images: np.ndarray, columns: int) -> np.ndarray:
    """Images [N, 28, 28] tiled ``columns`` wide into one grey picture."""
    rows = len(images) // columns
    tiles = images[: rows * columns].reshape(rows, columns, 28, 28)
    return tiles.transpose(0, 2, 1, 3).reshape(rows * 28, columns * 28)


# ---- writing ------------------------------------------------------------------------------------

@dataclasses.dataclass
class KindStats:
    files: int = 0
    raw_bytes: int = 0
    disk_bytes: int = 0
    shards: int = 0
    sources: dict[str, int] = dataclasses.field(default_factory=dict)  # source -> files

    def add(self, size: int, source: str) -> None:
        self.files += 1
        self.raw_bytes += size
        self.sources[source] = self.sources.get(source, 0) + 1


class ShardWriter:
    """Concatenates whole files of one kind into ~``SHARD_RAW_BYTES`` shards, xz-compressed."""

    def __init__(self, folder: Path, kind: str, extension: str):
        self.folder, self.kind, self.extension = folder / kind, kind, extension
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.stats = KindStats()

    def add(self, data: bytes, source: str) -> int:
        """Buffers one file; returns the bytes written to disk by a shard this completed."""
        self.pending.append(data)
        self.pending_bytes += len(data)
        self.stats.add(len(data), source)
        return self.flush() if self.pending_bytes >= SHARD_RAW_BYTES else 0

    def flush(self) -> int:
        if not self.pending:
            return 0
        self.folder.mkdir(parents=True, exist_ok=True)
        inner = f"{self.kind}-{self.stats.shards:04d}{self.extension}"
        if inner.lower().endswith(UNPACKED_SUFFIXES):
            inner += ".bin"  # the trainer would unpack it; these bytes are to be learnt as they are
        packed = lzma.compress(b"".join(self.pending), preset=XZ_PRESET)
        (self.folder / (inner + ".xz")).write_bytes(packed)
        self.stats.shards += 1
        self.stats.disk_bytes += len(packed)
        self.pending, self.pending_bytes = [], 0
        return len(packed)


@dataclasses.dataclass
class Kind:
    """One kind of the training mix: its items, its share of ``--max-mb`` on disk, a cap on
    its raw bytes (so no single source dominates), and the extension its shards carry."""

    name: str
    extension: str
    share: float
    raw_cap_mb: float
    items: Iterator[Item]
    fill: bool = False  # takes more when other kinds leave their share unused


class MixBuilder:
    def __init__(self, out: Path, seed: int, held_out_digests: set[str]):
        self.out, self.seed = out, seed
        self.train_dir = out / "train"
        self.excluded = held_out_digests
        self.seen: set[str] = set()  # every file's content once in the whole mix
        self.writers: dict[str, ShardWriter] = {}
        self.disk = 0
        self.dropped_duplicates = 0
        self.listing: list[str] = []  # kind, shard, source name, bytes, sha256 of every file

    def writer(self, kind: Kind) -> ShardWriter:
        if kind.name not in self.writers:
            self.writers[kind.name] = ShardWriter(self.train_dir, kind.name, kind.extension)
        return self.writers[kind.name]

    @staticmethod
    def used(writer: ShardWriter) -> int:
        """Bytes on disk of a kind, its unwritten files counted at its ratio so far."""
        ratio = writer.stats.disk_bytes / max(writer.stats.raw_bytes - writer.pending_bytes, 1) \
            if writer.stats.disk_bytes else 0.4
        return writer.stats.disk_bytes + int(writer.pending_bytes * ratio)

    def estimated_disk(self) -> int:
        return sum(self.used(writer) for writer in self.writers.values())

    def fill(self, kind: Kind, disk_budget: int, raw_cap: int, total_cap: int) -> bool:
        """Adds files of ``kind`` until its disk budget, its raw cap or the mix's cap is
        used; False when its source ran dry."""
        writer = self.writer(kind)
        for name, data, source in kind.items:
            key = digest(data)
            if key in self.excluded or key in self.seen:
                self.dropped_duplicates += 1
                continue
            self.seen.add(key)
            self.listing.append(f"{kind.name}\t{writer.stats.shards:04d}\t{name}\t{len(data)}\t{key}")
            self.disk += writer.add(data, source)
            if (self.used(writer) >= disk_budget or writer.stats.raw_bytes >= raw_cap
                    or self.estimated_disk() >= total_cap):
                return True
        return False

    def finish(self) -> dict[str, KindStats]:
        for writer in self.writers.values():
            self.disk += writer.flush()
        return {name: writer.stats for name, writer in sorted(self.writers.items())}


# ---- the held-out set ----------------------------------------------------------------------------

@dataclasses.dataclass
class HeldOut:
    folder: Path
    files: dict[str, list[dict]] = dataclasses.field(default_factory=dict)
    digests: set[str] = dataclasses.field(default_factory=set)
    names: set[str] = dataclasses.field(default_factory=set)  # source paths held out

    def add(self, kind: str, name: str, data: bytes, source: str) -> bool:
        key = digest(data)
        if key in self.digests:
            return False
        target = self.folder / kind / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.digests.add(key)
        self.names.add(source)
        self.files.setdefault(kind, []).append({"file": f"{kind}/{name}", "bytes": len(data), "source": source,
                                                 "sha256": key})
        return True

    def kind_bytes(self, kind: str) -> int:
        return sum(entry["bytes"] for entry in self.files.get(kind, []))


def safe_name(path: str) -> str:
    return path.strip("/").replace("/", "__").replace(":", "_")


def take_held_out(held: HeldOut, kind: str, items: Iterable[Item], budget: int, rename=None) -> list[tuple]:
    """Adds items to the held-out ``kind`` until ``budget`` bytes; returns what was added."""
    added = []
    for name, data, source in items:
        if held.kind_bytes(kind) >= budget:
            break
        file_name = rename(name) if rename else safe_name(name)
        if held.add(kind, file_name, data, source):
            added.append((file_name, data))
    return added


def deterministic_tar(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# ---- the plan ------------------------------------------------------------------------------------

class Sources:
    """Every source file list, built once, split into held-out and training parts."""

    def __init__(self, data: Path, seed: int, held_fraction: float = 0.08):
        self.data, self.seed, self.held_fraction = data, seed, held_fraction
        self._linux: list[tuple[str, bytes]] | None = None
        self.python_files = shuffled(walk_files(PYTHON_TREES, (".py",), max_bytes=512 * 1024), seed, "py")
        self.elf_files = shuffled(walk_files(BINARY_DIRS + PYTHON_TREES, max_bytes=3 * MB // 2, min_bytes=2048,
                                             accept=is_x86_64_elf), seed, "elf")
        self.images = shuffled(walk_files(SYSTEM_ROOTS + PYTHON_TREES, (".png", ".gif", ".jpg", ".ico"),
                                          max_bytes=512 * 1024), seed, "img")

    def held(self, name: str) -> bool:
        """A member of a shared archive (a unique path) is held out by its whole name."""
        return stable_fraction(name, self.seed) < self.held_fraction

    def held_file(self, path: str) -> bool:
        """A file of this machine is held out by the name its copies share wherever they are
        installed (the same module in Debian's and pyenv's Python, an icon in every size): a
        Python file by its last two path parts, anything else by its file name."""
        parts = Path(path).parts
        key = "/".join(parts[-2:]) if path.endswith(".py") else parts[-1]
        return stable_fraction(key, self.seed) < self.held_fraction

    # shared data
    def rst_members(self) -> list[tuple[str, bytes]]:
        path = self.data / "text" / "python-3.11-docs-rst.tar.xz"
        return list(tar_members(path, lambda name: name.endswith(".txt"))) if path.exists() else []

    def linux_members(self) -> list[tuple[str, bytes]]:
        """The Linux tree's files (read once, about 110 MB)."""
        if self._linux is None:
            path = self.data / "code" / "linux-6.1-core.tar.xz"
            self._linux = list(tar_members(path, lambda name: True)) if path.exists() else []
        return self._linux


def build_held_out(src: Sources, out: Path, budget: int, seed: int) -> HeldOut:
    """The held-out set: one budget share per kind, whole files only."""
    held = HeldOut(out / "heldout")
    per_kind = budget // 9
    data = src.data
    # prose: Python docs pages that the mix leaves out (by a hash of their name)
    rst = [(n, d) for n, d in src.rst_members() if src.held(n)]
    take_held_out(held, "prose", ((f"python-docs:{n}", d, "shared/text/python-3.11-docs-rst.tar.xz") for n, d in
                                  sorted(rst)), int(per_kind * 1.5), rename=lambda n: safe_name(n.split(":", 1)[1]))
    # code: C from the Linux tree, Python from the machine's Python
    c_files = []
    for name, member in src.linux_members():
        if name.endswith((".c", ".h")) and src.held(name) and len(member) < 200_000:
            c_files.append((name, member))
    c_files.sort()
    random.Random(f"{seed}:c").shuffle(c_files)
    take_held_out(held, "code-c", ((f"linux:{n}", d, "shared/code/linux-6.1-core.tar.xz") for n, d in c_files),
                  per_kind, rename=lambda n: safe_name(n.split(":", 1)[1]))
    take_held_out(held, "code-python", file_items((p for p in src.python_files if src.held_file(p)), "python"),
                  per_kind // 2)
    take_held_out(held, "elf", file_items((p for p in src.elf_files if src.held_file(p) and
                                           os.path.getsize(p) <= 400_000), "debian/pypi ELF"), per_kind)
    # raw images: Fashion-MNIST test images tiled into BMPs, and package icons decoded to BMP
    from omnibyte.media import pixels_to_bmp

    images_dir = data / "fashion-mnist"
    if images_dir.is_dir():
        test = fashion_images(data, "test")
        for index in range(2):  # two mosaics, the rest of the budget real pictures of other kinds
            block = test[index * 100:(index + 1) * 100]
            held.add("image-raw", f"fashion-test-mosaic-{index}.bmp", pixels_to_bmp(mosaic(block, 10)),
                     "shared/fashion-mnist t10k (test split)")
    take_held_out(held, "image-raw", file_items((p for p in src.images if src.held_file(p)), "package images",
                                                png_to_bmp), per_kind, rename=lambda n: safe_name(n) + ".bmp")
    # WAV: the FSDD test split (take index 0-4), which the mix leaves out
    recordings = data / "fsdd" / "recordings"
    if recordings.is_dir():
        tests = sorted(p for p in recordings.glob("*.wav") if int(p.stem.rsplit("_", 1)[1]) < 5)
        random.Random(f"{seed}:wav").shuffle(tests)
        take_held_out(held, "wav", file_items((str(p) for p in tests), "shared/fsdd test split"), per_kind)
    # MIDI: every rendering of the tunes of one ABC book; the book's ABC is left out of the mix too
    midi_dir = data / "nottingham" / "MIDI"
    if midi_dir.is_dir():
        stem = HELD_OUT_TUNE_BOOK
        tunes = sorted(str(p) for p in midi_dir.rglob(f"{stem}*.mid"))
        take_held_out(held, "midi", file_items(tunes, f"shared/nottingham MIDI of {stem}.abc"), per_kind,
                      rename=lambda n: safe_name(str(Path(n).relative_to(midi_dir))))
    # tars of mixed held-out files (the tar kind needs its members unseen too)
    pool = [(entry["file"], (held.folder / entry["file"]).read_bytes())
            for kind in ("prose", "code-c", "code-python", "elf", "image-raw", "wav", "midi")
            for entry in held.files.get(kind, [])]
    rng = random.Random(f"{seed}:tar")
    for index in range(3):
        chosen = sorted(rng.sample(pool, min(len(pool), 80)), key=lambda item: item[0])
        members, size = [], 0
        for name, blob in chosen:
            if size + len(blob) > per_kind // 2:
                continue
            members.append((f"mixed/{name}", blob))
            size += len(blob)
        if members:
            held.add("tar", f"mixed-{index}.tar.bin", deterministic_tar(members), "held-out files of the other kinds")
    return held


HELD_OUT_TUNE_BOOK = "waltzes"  # Nottingham's waltzes: MIDI held out, ABC left out of the mix


def training_kinds(src: Sources, held: HeldOut, seed: int) -> list[Kind]:
    data = src.data
    def not_held(path: str) -> bool:
        """Not a held-out file, nor a copy of one elsewhere on this machine."""
        return path not in held.names and not src.held_file(path)

    def not_held_pyc(path: str) -> bool:
        """A .pyc compiled from a held-out module would carry its names and strings."""
        parts = Path(path).parts
        if len(parts) >= 3 and parts[-2] == "__pycache__":
            return not src.held_file(str(Path(*parts[:-2], parts[-1].split(".")[0] + ".py")))
        return True

    def gcide() -> Iterator[Item]:
        path = data / "text" / "gcide.txt.gz"
        if path.exists():
            text = gzip.decompress(path.read_bytes())
            # dictionary entries in ~256 KB pieces of whole lines, in a seeded order
            pieces, start = [], 0
            while start < len(text):
                end = text.find(b"\n", start + 256 * 1024)
                end = len(text) if end < 0 else end + 1
                pieces.append(text[start:end])
                start = end
            random.Random(f"{seed}:gcide").shuffle(pieces)
            for index, piece in enumerate(pieces):
                yield f"gcide#{index}", piece, "shared/text/gcide.txt.gz"

    def rst() -> Iterator[Item]:
        for name, member in src.rst_members():
            if not src.held(name):
                yield name, member, "shared/text/python-3.11-docs-rst.tar.xz"

    def linux(suffixes: tuple[str, ...] | None) -> Iterator[Item]:
        members = [(n, d) for n, d in src.linux_members()
                   if not src.held(n) and (suffixes is None or n.endswith(suffixes)) and len(d) <= 1 * MB]
        random.Random(f"{seed}:linux:{suffixes}").shuffle(members)
        for name, member in members:
            yield name, member, "shared/code/linux-6.1-core.tar.xz"

    def linux_other() -> Iterator[Item]:
        for name, member, source in linux(None):
            if not name.endswith((".c", ".h")):
                yield name, member, source

    def fashion_bmp() -> Iterator[Item]:
        from omnibyte.media import pixels_to_bmp

        if not (data / "fashion-mnist").is_dir():
            return
        train = fashion_images(data, "train")
        order = np.random.default_rng(seed).permutation(len(train))
        for count, index in enumerate(order):
            image = np.pad(train[index], 2) if count % 2 else train[index]
            if count % 5 == 4:  # some bigger pictures: 4x4 mosaics of training images
                picks = order[np.arange(count * 16, count * 16 + 16) % len(order)]
                image = mosaic(train[picks], 4)
            yield f"fashion#{index}", pixels_to_bmp(image), "shared/fashion-mnist train (as BMP)"

    def fashion_idx() -> Iterator[Item]:
        path = data / "fashion-mnist" / "train-images-idx3-ubyte.gz"
        if path.exists():
            raw = gzip.decompress(path.read_bytes())
            yield "fashion-idx", raw[: 16 + 784 * 1500], "shared/fashion-mnist train (idx header + 1,500 images)"
            labels = data / "fashion-mnist" / "train-labels-idx1-ubyte.gz"
            yield "fashion-labels", gzip.decompress(labels.read_bytes())[:20000], "shared/fashion-mnist labels"

    def fsdd() -> Iterator[Item]:
        recordings = data / "fsdd" / "recordings"
        files = sorted(str(p) for p in recordings.glob("*.wav") if int(p.stem.rsplit("_", 1)[1]) >= 5) \
            if recordings.is_dir() else []
        yield from file_items(shuffled(files, seed, "fsdd"), "shared/fsdd train split")

    def format_samples() -> Iterator[Item]:
        yield from file_items(walk_files([str(data / "format-samples")]), "shared/format-samples")

    def nottingham_midi() -> Iterator[Item]:
        midi = data / "nottingham" / "MIDI"
        files = [str(p) for p in sorted(midi.rglob("*.mid")) if not p.name.startswith(HELD_OUT_TUNE_BOOK)] \
            if midi.is_dir() else []
        yield from file_items(shuffled(files, seed, "midi"), "shared/nottingham MIDI")

    def nottingham_abc() -> Iterator[Item]:
        root = data / "nottingham"
        files = [str(p) for p in sorted(root.rglob("*.abc")) if not p.name.startswith(HELD_OUT_TUNE_BOOK)] \
            if root.is_dir() else []
        yield from file_items(files, "shared/nottingham ABC")

    def system(suffixes: tuple[str, ...], salt: str, transform=None, roots=SYSTEM_ROOTS + PYTHON_TREES,
               max_bytes: int = 2 * MB, label: str | None = None,
               keep: Callable[[str], bool] = lambda path: path not in held.names) -> Iterator[Item]:
        files = [p for p in walk_files(roots, suffixes, max_bytes=max_bytes) if keep(p)]
        yield from file_items(shuffled(files, seed, salt), label or "debian/pypi " + "/".join(suffixes), transform)

    def elf() -> Iterator[Item]:
        yield from file_items((p for p in src.elf_files if not_held(p)), "debian/pypi ELF")

    def scripts() -> Iterator[Item]:
        files = [p for p in walk_files(("/usr/bin", "/usr/sbin"), max_bytes=MB, accept=is_text_script)]
        yield from file_items(shuffled(files, seed, "scripts"), "debian shell/perl/python scripts")

    def python_source() -> Iterator[Item]:
        yield from file_items((p for p in src.python_files if not_held(p)), "python stdlib + site-packages")

    def raw_images() -> Iterator[Item]:
        yield from file_items((p for p in src.images if not_held(p)), "package images (decoded to BMP)", png_to_bmp)

    def archives() -> Iterator[Item]:
        # real archives and compressed files as they are, then tars of small training-side files
        yield from system((".zip", ".tar", ".whl", ".jar", ".tgz"), "archives", max_bytes=512 * 1024)
        yield from system((".gz", ".bz2", ".xz"), "compressed", max_bytes=128 * 1024)

    def mixed_tars() -> Iterator[Item]:
        small = [p for p in walk_files(("/usr/share/doc", "/usr/share/perl5", "/usr/share/X11"), max_bytes=64 * 1024)
                 if p not in held.names]
        rng = random.Random(f"{seed}:mixtar")
        for index in range(400):
            picks = sorted(rng.sample(small, min(len(small), 12)))
            members = [(p.strip("/"), read_bytes(p) or b"") for p in picks]
            yield f"mixed-tar-{index}", deterministic_tar(members), "tars of package files (made here)"

    return [
        # name, extension, share of --max-mb on disk, raw cap (MB), items, fill
        Kind("text-gcide", ".txt", 0.08, 40, gcide(), fill=True),
        Kind("text-python-docs", ".rst", 0.04, 20, rst()),
        Kind("text-docs", ".txt", 0.03, 12, system(("readme", ".txt", "copyright", "changelog"), "docs",
                                                   roots=("/usr/share/doc", "/usr/share/common-licenses"))),
        Kind("man", ".man", 0.04, 15, system((".gz",), "man", gunzip, roots=("/usr/share/man",), max_bytes=256 * 1024,
                                               label="debian man pages (troff, decompressed)")),
        Kind("code-c", ".c", 0.12, 60, linux((".c", ".h")), fill=True),
        Kind("code-build", ".txt", 0.01, 5, linux_other()),
        Kind("code-python", ".py", 0.08, 40, python_source(), fill=True),
        Kind("code-scripts", ".sh", 0.02, 6, scripts()),
        Kind("web", ".html", 0.04, 15, system((".html", ".htm", ".css", ".js"), "web")),
        Kind("data", ".json", 0.04, 15, system((".json", ".xml", ".csv", ".svg", ".yaml", ".yml", ".toml", ".ini"),
                                               "data")),
        Kind("markdown", ".md", 0.02, 8, system((".md", ".rst"), "md")),
        Kind("elf", ".elf", 0.15, 60, elf(), fill=True),
        Kind("pyc", ".pyc", 0.02, 6, system((".pyc",), "pyc", keep=not_held_pyc)),
        Kind("image-bmp", ".bmp", 0.06, 25, fashion_bmp()),
        Kind("image-raw", ".bmp", 0.04, 12, raw_images()),
        Kind("image-coded", ".png", 0.03, 3, system((".png", ".gif", ".jpg", ".ico", ".tiff", ".bmp"), "imgcoded",
                                                    max_bytes=256 * 1024, keep=not_held)),
        Kind("image-idx", ".idx", 0.005, 2, fashion_idx()),
        Kind("wav", ".wav", 0.08, 12, fsdd()),
        Kind("audio-samples", ".wav", 0.005, 1, format_samples()),
        Kind("midi", ".mid", 0.02, 7, nottingham_midi()),
        Kind("abc", ".abc", 0.005, 1, nottingham_abc()),
        Kind("pdf", ".pdf", 0.01, 2, system((".pdf", ".ps", ".eps"), "pdf")),
        Kind("fonts", ".ttf", 0.01, 2, system((".ttf", ".otf", ".pfb", ".afm"), "fonts", max_bytes=MB)),
        Kind("gettext", ".mo", 0.01, 4, system((".mo",), "mo")),
        Kind("archives", ".bin", 0.015, 1.5, archives()),
        Kind("tar", ".tar", 0.02, 8, mixed_tars()),
    ]


def build(args: argparse.Namespace) -> dict:
    out: Path = args.out
    if out.exists():
        if not args.force:
            raise SystemExit(f"error: {out} exists (use --force to replace it)")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    started = time.time()
    src = Sources(args.data, args.seed)
    held = build_held_out(src, out, int(args.heldout_mb * MB), args.seed)
    held_bytes = sum(held.kind_bytes(kind) for kind in held.files)
    print(f"held out: {sum(len(v) for v in held.files.values())} files, {held_bytes:,} bytes "
          f"({', '.join(f'{k} {held.kind_bytes(k):,}' for k in held.files)})", flush=True)
    builder = MixBuilder(out, args.seed, held.digests)
    cap = int(args.max_mb * MB)
    kinds = training_kinds(src, held, args.seed)
    live = {}
    for kind in kinds:  # pass 1: every kind up to its share
        live[kind.name] = builder.fill(kind, int(kind.share * cap), int(kind.raw_cap_mb * MB), cap)
        stats = builder.writer(kind).stats
        print(f"  {kind.name:<18} {stats.files:>6} files {stats.raw_bytes:>12,} raw bytes", flush=True)
    # pass 2: what kinds left unused goes to the big general kinds, round robin, shard by shard
    fillers = [kind for kind in kinds if kind.fill]
    while fillers and builder.estimated_disk() < cap * 0.98:
        kind = fillers.pop(0)
        if not live[kind.name]:
            continue
        budget = builder.used(builder.writer(kind)) + SHARD_RAW_BYTES // 3
        live[kind.name] = builder.fill(kind, budget, int(kind.raw_cap_mb * MB * 2), cap)
        fillers.append(kind)
    stats = builder.finish()
    manifest = write_manifests(args, out, stats, held, builder, time.time() - started)
    return manifest


def write_manifests(args, out: Path, stats: dict[str, KindStats], held: HeldOut, builder: MixBuilder,
                    seconds: float) -> dict:
    held_manifest = {
        "note": HELD_OUT_NOTE,
        "seed": args.seed,
        "kinds": {kind: {"files": len(entries), "bytes": held.kind_bytes(kind), "entries": entries}
                  for kind, entries in sorted(held.files.items())},
    }
    (held.folder / "MANIFEST.json").write_text(json.dumps(held_manifest, indent=1) + "\n")
    train_files = sorted(p for p in (out / "train").rglob("*") if p.is_file())
    content = hashlib.sha256()
    for path in train_files:  # the mix's identity: names and bytes of every shard
        content.update(str(path.relative_to(out)).encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    manifest = {
        "what": "training mix of omnibyte's built-in general model (scripts/build_general_mix.py)",
        "command": "python scripts/build_general_mix.py " + " ".join(sys.argv[1:]),
        "seed": args.seed,
        "max_mb": args.max_mb,
        "train_folder": "train",
        "train_sha256": content.hexdigest(),
        "raw_bytes": sum(s.raw_bytes for s in stats.values()),
        "disk_bytes": sum(s.disk_bytes for s in stats.values()),
        "files": sum(s.files for s in stats.values()),
        "duplicates_dropped": builder.dropped_duplicates,
        "kinds": {name: dataclasses.asdict(s) for name, s in stats.items()},
        "heldout_folder": "heldout",
        "heldout_bytes": sum(held.kind_bytes(kind) for kind in held.files),
        "heldout_sha256": hashlib.sha256(json.dumps(held_manifest, sort_keys=True).encode()).hexdigest(),
        "build_seconds": round(seconds, 1),
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    listing = "kind\tshard\tfile\tbytes\tsha256\n" + "\n".join(builder.listing) + "\n"
    (out / "FILES.tsv.gz").write_bytes(gzip.compress(listing.encode("utf-8", "surrogateescape"), mtime=0))
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "general-mix", help="output folder")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="the shared data folder")
    parser.add_argument("--max-mb", type=float, default=40.0, help="size of the training folder on disk (MiB)")
    parser.add_argument("--heldout-mb", type=float, default=8.0, help="size of the held-out set (MiB)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every choice")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    if args.max_mb <= 0 or args.heldout_mb <= 0:
        parser.error("--max-mb and --heldout-mb must be positive")
    manifest = build(args)
    print(f"wrote {args.out}: {manifest['files']:,} files, {manifest['raw_bytes']:,} raw bytes in "
          f"{manifest['disk_bytes']:,} bytes on disk ({len(manifest['kinds'])} kinds), held out "
          f"{manifest['heldout_bytes']:,} bytes, in {manifest['build_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

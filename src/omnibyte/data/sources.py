"""Turn user inputs (files, folders, globs, compressed files, archives) into documents.

Every input becomes one or more ``Document`` objects (a display name plus its bytes):

  * a folder is walked recursively in sorted order (hidden entries are skipped and counted);
  * a pattern with ``*``, ``?`` or ``[`` (``**`` included) expands like a shell glob;
  * ``.gz``/``.xz``/``.lzma``/``.bz2`` files are decompressed in memory;
  * ``.tar`` (plain or ``.gz``/``.tgz``/``.xz``/``.txz``/``.bz2``/``.tbz2``) and ``.zip``
    archives yield one document per regular member, named ``archive:member/path``;
  * other files of at least ``MEMMAP_MIN_BYTES`` are memory-mapped, smaller ones read.

Nothing is unpacked to disk. Empty and unreadable inputs are skipped and counted in a
``SkipLog``; a missing path, an input with no usable document and a corrupt archive raise
``OmnibyteError`` naming the path. Archives nested inside archives are plain bytes.

What omnibyte itself wrote is never read as data when it turns up in a folder or a glob (a run
directory inside the data, as ``omnibyte train . --out runs/x`` makes): a folder holding an
omnibyte run or model (``trainer_state.safetensors``, a sharded checkpoint's ``trainer.json`` +
``.metadata``, or an omnibyte ``config.json`` next to
``model.safetensors``) is skipped whole, and so are safetensors files carrying omnibyte's
metadata and compressed ``.omb`` streams; each is noted in the ``SkipLog``. ``exclude`` names
paths never to read at all (the run's own ``--out``).
"""
from __future__ import annotations

import bz2
import glob
import gzip
import json
import lzma
import os
import re
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import numpy as np

from omnibyte.errors import OmnibyteError

MEMMAP_MIN_BYTES = 1 << 20
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".tbz")
DECOMPRESSORS: dict[str, Callable[[BinaryIO], BinaryIO]] = {
    ".gz": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
    ".xz": lambda raw: lzma.LZMAFile(raw, mode="rb"),
    ".lzma": lambda raw: lzma.LZMAFile(raw, mode="rb"),
    ".bz2": lambda raw: bz2.BZ2File(raw, mode="rb"),
}
# What a damaged compressed stream or archive raises from the standard library.
CORRUPT_DATA_ERRORS = (
    OSError, EOFError, tarfile.TarError, zipfile.BadZipFile, lzma.LZMAError, zlib.error,
)
GLOB_CHARACTERS = re.compile(r"[*?\[]")
# what marks omnibyte's own output (the file names of omnibyte.models.modelfiles and
# omnibyte.train.checkpoint, the magic of omnibyte.apps.container; data depends on neither)
TRAINER_STATE_NAME = "trainer_state.safetensors"
DCP_CHECKPOINT_FILES = ("trainer.json", ".metadata")  # a checkpoints/step-N folder of a ddp/fsdp run
MODEL_FILES = ("config.json", "model.safetensors")
STREAM_MAGIC = b"\x89OMB"
SAFETENSORS_HEADER_MAX = 100 << 20  # a header longer than this is not one omnibyte wrote
OMNIBYTE_FOLDER = "omnibyte run or model folder"
OMNIBYTE_FILE = "written by omnibyte"
EXCLUDED = "excluded (output of this run)"
SPLIT_PIECE_SUFFIX = re.compile(r"\[[a-z]+\]$")  # "name[valid]" pieces made by ByteCorpus


@dataclass(frozen=True)
class Document:
    """One file or archive member: a display name and its bytes (possibly memory-mapped);
    ``label`` is its class when the data is labelled (``omnibyte.data.labelled``)."""

    name: str
    data: bytes | np.ndarray
    label: str | None = None

    def __len__(self) -> int:
        return len(self.data)


@dataclass
class SkipLog:
    """Inputs left out, counted per reason, with a few example names per reason."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 3

    def add(self, reason: str, name: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < self.max_examples:
            examples.append(name)

    def merge(self, other: SkipLog) -> None:
        for reason, count in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + count
            room = self.max_examples - len(self.examples.setdefault(reason, []))
            self.examples[reason].extend(other.examples.get(reason, [])[: max(room, 0)])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line, e.g. ``skipped 3 inputs: 2 empty (a.txt, b.txt), 1 unreadable (c)``."""
        if not self.counts:
            return "skipped nothing"
        parts = [
            f"{count} {reason} ({', '.join(self.examples.get(reason, []))}"
            f"{', ...' if count > len(self.examples.get(reason, [])) else ''})"
            for reason, count in sorted(self.counts.items())
        ]
        return f"skipped {self.total} input{'s' if self.total != 1 else ''}: {', '.join(parts)}"


def file_kind(name: str) -> str:
    """Short type label of a document name: ``"x.tar.xz:kernel/fork.c"`` -> ``".c"``."""
    base = SPLIT_PIECE_SUFFIX.sub("", name.replace("\\", "/").rsplit("/", 1)[-1])
    base = base.rsplit(":", 1)[-1].lower()  # "a.zip:top.txt" -> "top.txt"
    if base.endswith((".tgz", ".txz", ".tbz", ".tbz2")):
        return ".tar"
    stem, extension = os.path.splitext(base)
    while extension in DECOMPRESSORS:
        stem, extension = os.path.splitext(stem)
    return extension or "(none)"


def iter_documents(
    paths: Sequence[str | Path] | str | Path,
    skipped: SkipLog | None = None,
    exclude: Sequence[str | Path] = (),
) -> Iterator[Document]:
    """Yield the documents of every input path, in a deterministic order; files in or at a
    path of ``exclude`` are left out (noted in ``skipped``)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise OmnibyteError("no input paths given")
    skipped = skipped if skipped is not None else SkipLog()
    seen_files: set[str] = set()
    excluded = [os.path.realpath(path) for path in exclude]
    for argument in paths:
        local_skips = SkipLog()
        found_any = False
        try:
            for file_name in expand_path(str(argument), local_skips, excluded):
                if _is_excluded(file_name, excluded):
                    local_skips.add(EXCLUDED, file_name)
                    continue
                if _already_seen(file_name, seen_files):
                    local_skips.add("duplicate", file_name)
                    found_any = True  # its documents were already read for an earlier input
                    continue
                for document in documents_of_file(file_name, local_skips):
                    found_any = True
                    yield document
        finally:
            skipped.merge(local_skips)
        if not found_any:
            detail = f" ({local_skips.summary()})" if local_skips.total else ""
            raise OmnibyteError(f"no usable documents in {argument}{detail}")


def expand_path(argument: str, skipped: SkipLog, excluded: Sequence[str] = ()) -> list[str]:
    """Files named by one input: the file itself, a folder's files, or a glob's matches.
    A file named outright is read whatever it is; what a folder or a glob turns up is
    checked for omnibyte's own output first; folders in ``excluded`` (real paths) are not
    walked."""
    if os.path.isdir(argument):
        return _walk_folder(argument, skipped, excluded)
    if os.path.lexists(argument):
        return [argument]
    if GLOB_CHARACTERS.search(argument):
        matches = sorted(glob.glob(argument, recursive=True))
        if not matches:
            raise OmnibyteError(f"no files match {argument}")
        files: list[str] = []
        for match in matches:
            if os.path.isdir(match):
                files.extend(_walk_folder(match, skipped, excluded))
            elif _omnibyte_folder(os.path.dirname(match) or "."):
                skipped.add(OMNIBYTE_FOLDER, match)
            elif not _skipped_as_omnibyte_file(match, skipped):
                files.append(match)
        return files
    raise OmnibyteError(f"input not found: {argument}")


def _walk_folder(folder: str, skipped: SkipLog, excluded: Sequence[str] = ()) -> list[str]:
    files: list[str] = []
    for root, folders, names in os.walk(folder):
        if _is_excluded(root, excluded):  # noted once, not file by file
            skipped.add(EXCLUDED, root)
            folders[:] = []
            continue
        if _omnibyte_folder(root, folders + names):  # a run or model: none of it is data
            skipped.add(OMNIBYTE_FOLDER, root)
            folders[:] = []
            continue
        # Hidden entries (.git, .cache, ...) are metadata, not data; a hidden folder counts once.
        for hidden in sorted(name for name in folders + names if name.startswith(".")):
            skipped.add("hidden", os.path.join(root, hidden))
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in sorted(names):
            path = os.path.join(root, name)
            if not name.startswith(".") and not _skipped_as_omnibyte_file(path, skipped):
                files.append(path)
    return files


def _is_excluded(file_name: str, excluded: Sequence[str]) -> bool:
    if not excluded:
        return False
    real = os.path.realpath(file_name)
    return any(real == path or real.startswith(path.rstrip(os.sep) + os.sep) for path in excluded)


def _omnibyte_folder(folder: str, names: list[str] | None = None) -> bool:
    """True when ``folder`` holds an omnibyte run (its trainer state) or model (omnibyte's
    ``config.json`` next to ``model.safetensors``)."""
    if names is None:
        try:
            names = os.listdir(folder)
        except OSError:
            return False
    if TRAINER_STATE_NAME in names or all(name in names for name in DCP_CHECKPOINT_FILES):
        return True
    return all(name in names for name in MODEL_FILES) and _is_omnibyte_config(os.path.join(folder, MODEL_FILES[0]))


def _is_omnibyte_config(path: str) -> bool:
    """An omnibyte model document: {"format": ..., "arch": ..., "config": {...}}."""
    try:
        with open(path, "rb") as handle:
            text = handle.read(1 << 20)
        document = json.loads(text)
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and {"format", "arch", "config"} <= set(document)


def _skipped_as_omnibyte_file(path: str, skipped: SkipLog) -> bool:
    """Note and skip a file omnibyte wrote: a compressed stream, or a safetensors file with
    omnibyte's metadata (a model or trainer state copied out of its folder)."""
    lowered = path.lower()
    if not lowered.endswith((".omb", ".safetensors")):
        return False
    try:
        with open(path, "rb") as handle:
            if lowered.endswith(".omb"):
                ours = handle.read(len(STREAM_MAGIC)) == STREAM_MAGIC
            else:
                ours = _safetensors_metadata_has_omnibyte(handle)
    except OSError:
        return False  # unreadable: documents_of_file notes it
    if ours:
        skipped.add(OMNIBYTE_FILE, path)
    return ours


def _safetensors_metadata_has_omnibyte(handle: BinaryIO) -> bool:
    """A safetensors file starts with its header's length (8 bytes, little-endian) and the
    header's JSON, whose ``__metadata__`` carries omnibyte's config document."""
    prefix = handle.read(8)
    if len(prefix) != 8:
        return False
    length = int.from_bytes(prefix, "little")
    if not 2 <= length <= SAFETENSORS_HEADER_MAX:
        return False
    try:
        header = json.loads(handle.read(length))
    except ValueError:
        return False
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(metadata, dict) and "omnibyte" in metadata


def _already_seen(file_name: str, seen_files: set[str]) -> bool:
    key = os.path.realpath(file_name)
    if key in seen_files:
        return True
    seen_files.add(key)
    return False


def documents_of_file(file_name: str, skipped: SkipLog) -> Iterator[Document]:
    """Documents of one file on disk, dispatched on its name's suffix."""
    try:
        mode = os.stat(file_name).st_mode
    except OSError:
        skipped.add("unreadable", file_name)
        return
    if not stat.S_ISREG(mode):
        skipped.add("not a regular file", file_name)
        return
    lowered = file_name.lower()
    if lowered.endswith(TAR_SUFFIXES):
        yield from _tar_members(file_name, skipped)
    elif lowered.endswith(".zip"):
        yield from _zip_members(file_name, skipped)
    elif os.path.splitext(lowered)[1] in DECOMPRESSORS:
        yield from _decompressed_file(file_name, skipped)
    else:
        yield from _plain_file(file_name, skipped)


def _plain_file(file_name: str, skipped: SkipLog) -> Iterator[Document]:
    try:
        size = os.path.getsize(file_name)
        if size == 0:
            skipped.add("empty", file_name)
            return
        data = _memmap_or_read(file_name, size)
    except OSError:
        skipped.add("unreadable", file_name)
        return
    yield Document(file_name, data)


def _memmap_or_read(file_name: str, size: int) -> bytes | np.ndarray:
    if size >= MEMMAP_MIN_BYTES:
        try:
            return np.memmap(file_name, dtype=np.uint8, mode="r")
        except OSError:
            pass  # e.g. out of file descriptors (each map keeps one): read it instead
    with open(file_name, "rb") as handle:
        return handle.read()


def _open_raw(file_name: str, skipped: SkipLog) -> BinaryIO | None:
    try:
        return open(file_name, "rb")
    except OSError:
        skipped.add("unreadable", file_name)
        return None


def _corrupt(file_name: str, error: BaseException) -> OmnibyteError:
    reason = str(error) or type(error).__name__
    return OmnibyteError(f"cannot read {file_name}: corrupt or truncated data ({reason})")


def _decompressed_file(file_name: str, skipped: SkipLog) -> Iterator[Document]:
    raw = _open_raw(file_name, skipped)
    if raw is None:
        return
    with raw:
        try:
            with DECOMPRESSORS[os.path.splitext(file_name.lower())[1]](raw) as stream:
                data = stream.read()
        except CORRUPT_DATA_ERRORS as error:
            raise _corrupt(file_name, error) from None
    if not data:
        skipped.add("empty", file_name)
        return
    yield Document(file_name, data)


def _tar_members(file_name: str, skipped: SkipLog) -> Iterator[Document]:
    raw = _open_raw(file_name, skipped)
    if raw is None:
        return
    with raw:
        try:
            archive = tarfile.open(fileobj=raw, mode="r|*")  # streaming: one pass, no seeks
        except CORRUPT_DATA_ERRORS as error:
            raise _corrupt(file_name, error) from None
        with archive:
            while True:
                try:
                    member = archive.next()
                    if member is None:
                        return
                    data = _read_tar_member(archive, member)
                except CORRUPT_DATA_ERRORS as error:
                    raise _corrupt(file_name, error) from None
                name = f"{file_name}:{member.name}"
                if member.isdir():
                    continue
                if data is None:
                    skipped.add("not a regular file", name)
                elif not data:
                    skipped.add("empty", name)
                else:
                    yield Document(name, data)


def _read_tar_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes | None:
    if not member.isreg():
        return None
    handle = archive.extractfile(member)
    if handle is None:
        return None
    data = handle.read()
    if len(data) != member.size:
        raise EOFError(f"member {member.name} is truncated")
    return data


def _zip_members(file_name: str, skipped: SkipLog) -> Iterator[Document]:
    raw = _open_raw(file_name, skipped)
    if raw is None:
        return
    with raw:
        try:
            archive = zipfile.ZipFile(raw)
        except CORRUPT_DATA_ERRORS as error:
            raise _corrupt(file_name, error) from None
        with archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                name = f"{file_name}:{info.filename}"
                try:
                    data = archive.read(info)
                except (RuntimeError, NotImplementedError):
                    skipped.add("encrypted or unsupported zip member", name)
                    continue
                except CORRUPT_DATA_ERRORS as error:
                    raise _corrupt(file_name, error) from None
                if not data:
                    skipped.add("empty", name)
                else:
                    yield Document(name, data)

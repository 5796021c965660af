"""Paired records (a source and the target it converts to): their files, their token layout,
and the kinds of bytes a source or target may be.

**Pair files** hold one or more records back to back. Each record is one header line, then the
source bytes, then the target bytes::

    OBPAIR {"name": "jigs1", "source": "abc", "source_bytes": 431, "target": "midi", "target_bytes": 3020}\\n

The header gives both lengths, so the bytes that follow may be anything (MIDI is binary) and
are never searched for a delimiter. ``omnibyte datasets`` writes such files; ``omnibyte train
--task convert`` reads them (``read_pair_corpus``: one corpus document per record).

**Token layout.** A record becomes the model input ::

    BOS, source bytes..., BOS, escaped target bytes..., 0xFF, 0x00    (the target stream)

* The separator is the token ``BOS`` (256). It is outside the byte range 0..255, so no source
  byte can be taken for it, whatever the source holds. The model reads BOS (every family's
  input vocabulary has it) but never has to predict it.
* The end of the target must be predicted by the 256-way byte head, so it is written in bytes
  with an escape: in the target every 0xFF byte is doubled (``FF FF``), and ``FF 00`` ends the
  target. After an escape byte the decoder reads exactly one more byte: ``FF`` means a literal
  0xFF, ``00`` the end, anything else is malformed. A literal 0xFF can therefore never be taken
  for the end marker, in MIDI or any other binary target. 0xFF is chosen because it is rare in
  the targets here (ABC text never holds it; MIDI only in its few meta events), so escaping
  costs almost nothing.
* A target kind of fixed size (a CPU state: 260 bytes) needs no end marker: its size says
  where it ends, so it is neither escaped nor marked, and a copied byte sits at the same
  distance from its source byte in every record.
* The loss (``mask``) covers exactly the target stream (the escaped target and the end marker,
  or the fixed-size target): the positions whose input token is the separator or a later token.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from omnibyte import cpusim
from omnibyte.data.corpus import ByteCorpus
from omnibyte.data.sources import Document, SkipLog, iter_documents
from omnibyte.errors import OmnibyteError
from omnibyte.fileio import atomic_write_bytes
from omnibyte.models.base import BOS

HEADER_PREFIX = b"OBPAIR "
MAX_HEADER_BYTES = 4096
ESCAPE = 0xFF
END_BYTE = 0x00
END_MARKER = bytes([ESCAPE, END_BYTE])
SEPARATOR = BOS


# ---- kinds: what a source or target holds, checked before a model converts it -----------------

def describe_bytes(data: bytes) -> str:
    """What ``data`` looks like, for an error message."""
    if data.startswith(b"MThd"):
        return "MIDI (it starts with MThd)"
    if not data:
        return "empty"
    if is_text(data):
        return f"text ({len(data):,} bytes)"
    return f"binary data ({len(data):,} bytes)"


def is_text(data: bytes) -> bool:
    """Printable ASCII plus tab, CR and LF (the ABC of the Nottingham set is ASCII)."""
    return all(32 <= byte < 127 or byte in (9, 10, 13) for byte in data)


def abc_problem(data: bytes) -> str | None:
    if not is_text(data):
        return "ABC is ASCII text"
    lines = data.decode("ascii").splitlines()
    if not any(line.startswith("K:") for line in lines):
        return "ABC has a key field (a line starting with K:); this text has none"
    return None


def midi_problem(data: bytes) -> str | None:
    if not data.startswith(b"MThd") or len(data) < 14:
        return "a MIDI file starts with MThd"
    return None


def cpu_program_problem(data: bytes) -> str | None:
    try:
        cpusim.split_source(data)
    except cpusim.InvalidProgram as error:
        return str(error)
    return None


def cpu_state_problem(data: bytes) -> str | None:
    if len(data) != cpusim.STATE_BYTES:
        return f"a CPU state is {cpusim.STATE_BYTES} bytes, got {len(data)}"
    return None


def cpu_trace_problem(data: bytes) -> str | None:
    if len(data) < cpusim.STATE_BYTES:
        return f"a CPU trace ends with a {cpusim.STATE_BYTES}-byte state; {len(data)} bytes is not that"
    return cpusim.effects_problem(data[: len(data) - cpusim.STATE_BYTES])


def any_bytes_problem(data: bytes) -> str | None:
    return None if data else "the input is empty"


@dataclasses.dataclass(frozen=True)
class Kind:
    description: str
    problem: Callable[[bytes], str | None]  # why bytes are not of this kind (None: they are)
    suffix: str  # file name suffix of an output of this kind
    size: int | None = None  # bytes of every target of this kind (None: any length, end marker)
    size_for: Callable[[bytes], int] | None = None  # or: a target's bytes, from its record's source


def trace_size(source: bytes) -> int:
    return cpusim.program_length(source) * cpusim.EFFECT_BYTES + cpusim.STATE_BYTES


KINDS: dict[str, Kind] = {
    "abc": Kind("ABC notation", abc_problem, ".abc"),
    "midi": Kind("MIDI", midi_problem, ".mid"),
    "cpu": Kind("CPU programs (a state, then instructions)", cpu_program_problem, ".bin"),
    "cpu-state": Kind("CPU states", cpu_state_problem, ".bin", size=cpusim.STATE_BYTES),
    # its size follows from the program's length: not escaped, so a copied state stays aligned
    "cpu-trace": Kind("CPU traces (an effect per instruction, then the final state)", cpu_trace_problem, ".bin",
                      size_for=trace_size),
    "bytes": Kind("bytes", any_bytes_problem, ".bin"),
}


class UnknownKind(OmnibyteError, ValueError):
    """A kind name that is not in ``KINDS`` (a ValueError, so a task built from a damaged
    config is refused like any other invalid task option)."""


def check_kind_name(kind: object, role: str = "kind") -> str:
    if not isinstance(kind, str) or kind not in KINDS:
        raise UnknownKind(f"unknown {role} {kind!r} (known kinds: {', '.join(KINDS)})")
    return kind


def target_size(kind: str, source: bytes | None = None) -> int | None:
    """Bytes of a target of ``kind`` for ``source``: fixed for some kinds, from the source for
    others (``size_for``; a source is then needed), None where an end marker ends it."""
    found = KINDS[check_kind_name(kind)]
    if found.size_for is None:
        return found.size
    if source is None:
        raise OmnibyteError(f"the size of a {kind} target follows from its source; none was given")
    return found.size_for(bytes(source))


def kind_problem(kind: str, data: bytes) -> str | None:
    """Why ``data`` is not of ``kind``; None when it is."""
    return KINDS[check_kind_name(kind)].problem(bytes(data))


# ---- records and pair files -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PairRecord:
    """A source, the target it converts to, and what kinds of bytes both are."""

    source: bytes
    target: bytes
    source_kind: str = "bytes"
    target_kind: str = "bytes"
    name: str = ""

    def __post_init__(self) -> None:
        check_kind_name(self.source_kind, "source kind")
        check_kind_name(self.target_kind, "target kind")
        if not self.source:
            raise OmnibyteError(f"record {self.name or '(unnamed)'} has an empty source")
        name = self.name or "(unnamed)"
        if self.target_kind == "cpu-trace" and self.source_kind != "cpu":
            raise OmnibyteError(f"record {name}: a cpu-trace target is the trace of a cpu source, "
                                f"not of {self.source_kind}")
        size = target_size(self.target_kind, self.source)
        if size is not None and len(self.target) != size:
            raise OmnibyteError(f"record {name}: a {self.target_kind} target is {size} bytes, got {len(self.target)}")
        if self.target_kind == "cpu-trace":
            problem = cpusim.trace_problem(self.source, self.target)
            if problem:
                raise OmnibyteError(f"record {name}: {problem}")

    @property
    def direction(self) -> tuple[str, str]:
        return self.source_kind, self.target_kind


def encode_record(record: PairRecord) -> bytes:
    """A record as pair-file bytes (header line, source, target)."""
    header = {"name": record.name, "source": record.source_kind, "source_bytes": len(record.source),
              "target": record.target_kind, "target_bytes": len(record.target)}
    return HEADER_PREFIX + json.dumps(header, sort_keys=True).encode() + b"\n" + record.source + record.target


def encode_records(records: Iterable[PairRecord]) -> bytes:
    return b"".join(encode_record(record) for record in records)


def _size(header: dict, key: str, where: str) -> int:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OmnibyteError(f"{where}: header field {key!r} must be a byte count, got {value!r}")
    return value


def decode_records(data: bytes | np.ndarray, where: str = "pair file") -> Iterator[tuple[PairRecord, int]]:
    """Every record of pair-file bytes with the offset where it starts; a malformed file is a
    one-line ``OmnibyteError`` naming ``where``."""
    data = bytes(data)
    offset = 0
    while offset < len(data):
        here = f"{where} at byte {offset}"
        if not data.startswith(HEADER_PREFIX, offset):
            raise OmnibyteError(f"{here}: not a paired record (no OBPAIR header; write records with "
                                "omnibyte datasets)")
        end = data.find(b"\n", offset, offset + MAX_HEADER_BYTES)
        if end < 0:
            raise OmnibyteError(f"{here}: the OBPAIR header line has no end")
        try:
            header = json.loads(data[offset + len(HEADER_PREFIX) : end])
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
        if not isinstance(header, dict):
            raise OmnibyteError(f"{here}: the OBPAIR header is not a JSON object")
        source_bytes, target_bytes = _size(header, "source_bytes", here), _size(header, "target_bytes", here)
        body = end + 1
        if body + source_bytes + target_bytes > len(data):
            raise OmnibyteError(f"{here}: the record is cut short ({len(data) - body} of "
                                f"{source_bytes + target_bytes} bytes)")
        name = header.get("name", "")
        record = PairRecord(data[body : body + source_bytes],
                            data[body + source_bytes : body + source_bytes + target_bytes],
                            header.get("source", "bytes"), header.get("target", "bytes"),
                            name if isinstance(name, str) else "")
        yield record, offset
        offset = body + source_bytes + target_bytes


def decode_record(data: bytes | np.ndarray, where: str = "record") -> PairRecord:
    """The one record in ``data`` (a corpus document made by ``read_pair_corpus``)."""
    records = list(decode_records(data, where))
    if len(records) != 1:
        raise OmnibyteError(f"{where}: expected one paired record, found {len(records)}")
    return records[0][0]


def read_pair_corpus(paths: Sequence[str], exclude: Sequence[str] = ()) -> ByteCorpus:
    """Pair files (files, folders, globs, archives) as a corpus with one document per record,
    named ``file#index`` (or ``file`` when the file holds one record). A split by documents
    then never cuts a record apart."""
    skipped = SkipLog()
    documents: list[Document] = []
    for document in iter_documents(paths, skipped, exclude):
        records = list(decode_records(document.data, document.name))
        for index, (record, _) in enumerate(records):
            name = document.name if len(records) == 1 else f"{document.name}#{index}"
            documents.append(Document(name, encode_record(record)))
    if not documents:
        raise OmnibyteError(f"no paired records in {', '.join(map(str, paths))}")
    return ByteCorpus(documents, skipped)


def corpus_records(corpus: ByteCorpus) -> tuple[list[PairRecord], int]:
    """The records of a corpus made by ``read_pair_corpus`` (or of pair-file documents), and
    how many documents were not whole records (a piece cut by a tail split of a small corpus)."""
    records: list[PairRecord] = []
    broken = 0
    for index in range(corpus.num_documents):
        document = corpus.document(index)
        try:
            records += [record for record, _ in decode_records(document.data, document.name)]
        except OmnibyteError:
            broken += 1
    return records, broken


def records_corpus(records: Sequence[PairRecord]) -> ByteCorpus:
    """A corpus of one document per record (the form the conversion task trains on)."""
    return ByteCorpus([Document(record.name or f"record{index}", encode_record(record))
                       for index, record in enumerate(records)])


# ---- the token layout -------------------------------------------------------------------------

def escape_target(target: bytes) -> bytes:
    """The target as the model predicts it: 0xFF doubled, then the end marker ``FF 00``."""
    return bytes(target).replace(bytes([ESCAPE]), bytes([ESCAPE, ESCAPE])) + END_MARKER


def target_stream(target: bytes, kind: str = "bytes", source: bytes | None = None) -> bytes:
    """What the model predicts after the separator: a target of a sized kind as it is (its
    size, fixed or from ``source``, says where it ends), any other target escaped and ended by
    ``FF 00``."""
    size = target_size(kind, source)
    if size is None:
        return escape_target(target)
    if len(target) != size:
        raise OmnibyteError(f"a {kind} target is {size} bytes, got {len(target)}")
    return bytes(target)


def prompt_tokens(source: bytes) -> list[int]:
    """What a decoder is given: BOS, the source, the separator."""
    return [BOS, *bytes(source), SEPARATOR]


def record_tokens(source: bytes, target: bytes, target_kind: str = "bytes") -> np.ndarray:
    """The whole record as model tokens (``int64``): the prompt, then the target stream."""
    return np.array(prompt_tokens(source) + list(target_stream(target, target_kind, source)), dtype=np.int64)


class TargetReader:
    """Turns predicted bytes back into the target: undoes the escaping and stops at the end
    marker, or, for a sized kind, after its size (from ``source`` for a kind whose size
    follows from it). ``feed`` returns True once the target is complete (or malformed)."""

    def __init__(self, kind: str = "bytes", source: bytes | None = None) -> None:
        self.size = target_size(kind, source)
        self.output = bytearray()
        self.finished = False
        self.error: str | None = None
        self._escaped = False

    def feed(self, byte: int) -> bool:
        if self.finished:
            return True
        if self.size is not None:
            self.output.append(byte)
            self.finished = len(self.output) >= self.size
        elif self._escaped:
            self._escaped = False
            if byte == ESCAPE:
                self.output.append(ESCAPE)
            elif byte == END_BYTE:
                self.finished = True
            else:
                self.finished = True
                self.error = f"malformed escape FF {byte:02X} after {len(self.output)} bytes"
        elif byte == ESCAPE:
            self._escaped = True
        else:
            self.output.append(byte)
        return self.finished


def read_target(predicted: bytes, kind: str = "bytes", source: bytes | None = None) -> tuple[bytes, bool]:
    """(target, whether it is complete) from predicted bytes."""
    reader = TargetReader(kind, source)
    for byte in predicted:
        if reader.feed(byte):
            break
    return bytes(reader.output), reader.finished and reader.error is None


def unescape_target(predicted: bytes) -> tuple[bytes, bool]:
    """(target, whether the end marker was reached) from predicted bytes of an escaped target."""
    return read_target(predicted, "bytes")


# ---- datasets on disk ---------------------------------------------------------------------------

DATASET_FILE = "dataset.json"  # what ``write_pair_dataset`` wrote, and with which options
SPLITS = ("train", "test")


def check_dataset_folder(folder: Path, force: bool) -> None:
    """Refuse (before any work) a file, or a folder that holds anything, unless ``force``."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OmnibyteError(f"--out {folder} is a file, not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise OmnibyteError(f"--out {folder} is not empty (use --force to replace a dataset written there)")


def _previous_files(folder: Path) -> list[Path]:
    """The files an earlier ``write_pair_dataset`` listed in ``folder``'s manifest."""
    try:
        listed = json.loads((folder / DATASET_FILE).read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [folder / name for name in listed if isinstance(name, str) and ".." not in Path(name).parts]


def remove_previous_dataset(folder: str | Path) -> None:
    """Remove the files that the manifest in ``folder`` lists (the caller checked ``--force``);
    nothing else is touched."""
    for path in _previous_files(Path(folder)):
        path.unlink(missing_ok=True)


def write_pair_dataset(folder: str | Path, splits: dict[str, Sequence[PairRecord]], description: dict,
                       records_per_file: int = 1) -> dict:
    """Write ``splits`` (``{"train": records, "test": records}``) as pair files under
    ``folder/<split>/`` and a manifest ``dataset.json`` (``description`` + counts + files).

    ``records_per_file`` 1 names each file after its record (``jigs1.pair``); more packs them
    into numbered shards (``records-00000.pairs``). Files listed by an earlier manifest in the
    folder are removed first (the caller checked ``--force``); nothing else is touched. Every
    file is written atomically, the manifest last."""
    folder = Path(folder)
    remove_previous_dataset(folder)
    written: list[str] = []
    counts = {}
    for split, records in splits.items():
        counts[split] = len(records)
        for first in range(0, len(records), records_per_file):
            chunk = records[first : first + records_per_file]
            if records_per_file == 1 and chunk[0].name:
                name = f"{split}/{safe_file_name(chunk[0].name)}.pair"
            else:
                name = f"{split}/records-{first // records_per_file:05d}.pairs"
            atomic_write_bytes(folder / name, encode_records(chunk))
            written.append(name)
    manifest = {**description, "records": counts, "files": written}
    atomic_write_bytes(folder / DATASET_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def safe_file_name(name: str) -> str:
    """``name`` with anything but letters, digits, ``-``, ``_`` and ``.`` replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".") or "record"

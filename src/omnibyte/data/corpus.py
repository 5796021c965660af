"""A list of documents addressed as one virtual byte stream, and its train/validation splits.

Documents stay where they are (memory maps are never copied); the corpus keeps only the
arrays and the ``int64`` offset at which each one starts in the concatenated stream.
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from omnibyte.data.sources import Document, SkipLog, file_kind, iter_documents
from omnibyte.errors import OmnibyteError

SPLIT_METHODS = ("auto", "documents", "tail")
AUTO_DOCUMENT_SPLIT_MIN = 20  # "auto" splits by whole documents from this many documents on


def as_byte_array(data: bytes | np.ndarray) -> np.ndarray:
    """A 1-D ``uint8`` view of ``data`` (no copy for bytes, memmaps and uint8 arrays)."""
    if isinstance(data, np.ndarray):
        if data.dtype.itemsize != 1:
            raise TypeError(f"document data must be bytes or uint8, got {data.dtype}")
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


class ByteCorpus:
    """Documents concatenated into one addressable stream of ``num_bytes`` bytes."""

    def __init__(self, documents: Sequence[Document], skipped: SkipLog | None = None):
        self._arrays = [as_byte_array(document.data) for document in documents]
        self._names = [document.name for document in documents]
        self._labels = [document.label for document in documents]
        empty = [name for name, array in zip(self._names, self._arrays) if len(array) == 0]
        if empty:
            raise ValueError(f"empty document(s) in corpus: {', '.join(empty[:3])}")
        lengths = np.array([len(array) for array in self._arrays], dtype=np.int64)
        self.doc_starts = np.cumsum(lengths) - lengths
        self.doc_lengths = lengths
        self.num_bytes = int(lengths.sum())
        self.skipped = skipped if skipped is not None else SkipLog()

    @classmethod
    def from_paths(
        cls,
        paths: Sequence[str | Path] | str | Path,
        max_bytes: int | None = None,
        exclude: Sequence[str | Path] = (),
    ) -> ByteCorpus:
        """Read files/folders/globs/archives; stop (cutting the last document) at ``max_bytes``.
        Nothing in or at a path of ``exclude`` is read (``train`` passes its ``--out``), and
        omnibyte's own runs, models and streams found in folders are skipped (see
        ``omnibyte.data.sources``); ``skipped`` notes both."""
        if max_bytes is not None and max_bytes <= 0:
            raise OmnibyteError(f"max_bytes must be positive, got {max_bytes}")
        skipped = SkipLog()
        documents: list[Document] = []
        total = 0
        for document in iter_documents(paths, skipped, exclude):
            if max_bytes is not None and total + len(document) >= max_bytes:
                documents.append(Document(document.name, document.data[: max_bytes - total]))
                break
            documents.append(document)
            total += len(document)
        return cls(documents, skipped)

    # ---- access ---------------------------------------------------------------------
    @property
    def num_documents(self) -> int:
        return len(self._arrays)

    @property
    def names(self) -> list[str]:
        return list(self._names)

    @property
    def labels(self) -> list[str | None]:
        """Each document's class (None where the data is not labelled)."""
        return list(self._labels)

    def document(self, index: int) -> Document:
        return Document(self._names[index], self._arrays[index], self._labels[index])

    def read(self, start: int, length: int) -> np.ndarray:
        """Bytes ``[start, start + length)`` of the stream (may span documents), a copy."""
        if start < 0 or length < 0 or start + length > self.num_bytes:
            raise ValueError(f"read({start}, {length}) outside a corpus of {self.num_bytes} bytes")
        out = np.empty(length, dtype=np.uint8)
        index = int(np.searchsorted(self.doc_starts, start, side="right")) - 1
        filled = 0
        while filled < length:
            array = self._arrays[index]
            offset = start + filled - int(self.doc_starts[index])
            take = min(len(array) - offset, length - filled)
            out[filled : filled + take] = array[offset : offset + take]
            filled += take
            index += 1
        return out

    def bytes_by_kind(self) -> dict[str, int]:
        """Bytes per file type (see ``file_kind``), largest first."""
        totals: dict[str, int] = {}
        for name, length in zip(self._names, self.doc_lengths.tolist()):
            kind = file_kind(name)
            totals[kind] = totals.get(kind, 0) + length
        return dict(sorted(totals.items(), key=lambda item: (-item[1], item[0])))

    def __repr__(self) -> str:
        return f"ByteCorpus({self.num_documents} documents, {self.num_bytes:,} bytes)"

    # ---- splits ---------------------------------------------------------------------
    def split(
        self, validation_fraction: float = 0.05, by: str = "auto"
    ) -> tuple[ByteCorpus, ByteCorpus]:
        """Deterministic (train, validation) split.

        ``"documents"``: a document is validation iff a stable hash of its name falls under
        the fraction (at least one document each side when there are two or more).
        ``"tail"``: the last fraction of the concatenated stream (a document may be cut; its
        validation piece is named ``name[valid]``). ``"auto"``: documents from
        ``AUTO_DOCUMENT_SPLIT_MIN`` documents on, else tail.
        """
        if not 0.0 <= validation_fraction < 1.0:
            raise OmnibyteError(
                f"validation fraction must be in [0, 1), got {validation_fraction}"
            )
        if by not in SPLIT_METHODS:
            raise OmnibyteError(f"unknown split {by!r} (choose from {', '.join(SPLIT_METHODS)})")
        if by == "auto":
            by = "documents" if self.num_documents >= AUTO_DOCUMENT_SPLIT_MIN else "tail"
        if by == "documents":
            return self._split_documents(validation_fraction)
        validation_bytes = round(self.num_bytes * validation_fraction)
        if validation_fraction > 0 and self.num_bytes >= 2:
            validation_bytes = min(max(validation_bytes, 1), self.num_bytes - 1)
        cut = self.num_bytes - validation_bytes
        return self.byte_range(0, cut), self.byte_range(cut, self.num_bytes, "[valid]")

    def split_tail_bytes(
        self, test_bytes: int, validation_bytes: int
    ) -> tuple[ByteCorpus, ByteCorpus, ByteCorpus]:
        """(train, validation, test): the last ``test_bytes`` are test, the
        ``validation_bytes`` before them validation, everything before that train."""
        if test_bytes < 0 or validation_bytes < 0:
            raise OmnibyteError("test and validation sizes must not be negative")
        if test_bytes + validation_bytes >= self.num_bytes:
            raise OmnibyteError(
                f"cannot hold out {test_bytes:,} test + {validation_bytes:,} validation bytes "
                f"from a corpus of {self.num_bytes:,} bytes"
            )
        test_start = self.num_bytes - test_bytes
        validation_start = test_start - validation_bytes
        return (
            self.byte_range(0, validation_start),
            self.byte_range(validation_start, test_start, "[valid]"),
            self.byte_range(test_start, self.num_bytes, "[test]"),
        )

    def byte_range(self, start: int, end: int, cut_suffix: str = "") -> ByteCorpus:
        """Sub-corpus of stream bytes ``[start, end)``; views, no copies. A document that
        starts before ``start`` keeps only its tail, named with ``cut_suffix`` appended."""
        pieces: list[Document] = []
        first = max(int(np.searchsorted(self.doc_starts, start, side="right")) - 1, 0)
        last = int(np.searchsorted(self.doc_starts, end, side="left"))
        for index in range(first, last):
            doc_start = int(self.doc_starts[index])
            doc_end = doc_start + int(self.doc_lengths[index])
            low, high = max(start, doc_start), min(end, doc_end)
            if low >= high:
                continue
            name = self._names[index] + (cut_suffix if low > doc_start else "")
            pieces.append(Document(name, self._arrays[index][low - doc_start : high - doc_start],
                                   self._labels[index]))
        return ByteCorpus(pieces, self.skipped)

    def _split_documents(self, validation_fraction: float) -> tuple[ByteCorpus, ByteCorpus]:
        # hashed below the folder all documents share: the same files split the same way
        # wherever that folder is (a run's split used to change with the data's location)
        scores = [stable_unit_hash(name) for name in names_below_common_folder(self._names)]
        in_validation = [score < validation_fraction for score in scores]
        if validation_fraction > 0 and self.num_documents >= 2:
            if not any(in_validation):
                in_validation[int(np.argmin(scores))] = True
            if all(in_validation):
                in_validation[int(np.argmax(scores))] = False
        train = [self.document(i) for i, valid in enumerate(in_validation) if not valid]
        validation = [self.document(i) for i, valid in enumerate(in_validation) if valid]
        return ByteCorpus(train, self.skipped), ByteCorpus(validation, self.skipped)


def names_below_common_folder(names: Sequence[str]) -> list[str]:
    """``names`` without the folder path that all of them start with ("/data/a/x", "/data/b/y"
    -> "a/x", "b/y"); a lone name keeps only its file name."""
    prefix = os.path.commonprefix(list(names))
    cut = max(prefix.rfind("/"), prefix.rfind(os.sep)) + 1
    return [name[cut:] for name in names]


def stable_unit_hash(name: str) -> float:
    """A hash of ``name`` in [0, 1) that is the same in every process (unlike ``hash``)."""
    return zlib.crc32(name.encode("utf-8", "surrogateescape")) / 2**32

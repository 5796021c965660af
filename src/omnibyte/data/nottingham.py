"""Nottingham tunes (``ABC_cleaned/*.abc``) as labelled ABC documents: one document per tune
(from its ``X:`` line to the next), labelled with its tune type, the file's stem without the
alphabetical range of the reel files (``reelsa-c`` -> ``reels``, ``hpps`` = hornpipes).
Tunes are split into train/test by a stable hash of file and tune number (20% test)."""
from __future__ import annotations

import re
from pathlib import Path

from omnibyte.data.corpus import stable_unit_hash
from omnibyte.data.sources import Document
from omnibyte.errors import OmnibyteError

SPLITS = ("train", "test")
TEST_FRACTION = 0.2
RANGE_SUFFIX = re.compile(r"[a-z]-[a-z]$")  # reelsa-c -> reels
TUNE_START = re.compile(rb"^X:", re.MULTILINE)


def tune_type(file_name: str) -> str:
    return RANGE_SUFFIX.sub("", Path(file_name).stem)


def split_tunes(text: bytes) -> list[bytes]:
    """The tunes of an ABC file: each from an ``X:`` line up to the next."""
    starts = [match.start() for match in TUNE_START.finditer(text)]
    return [text[start:end].strip() + b"\n" for start, end in zip(starts, starts[1:] + [len(text)])]


def nottingham_documents(abc_folder: str | Path, split: str = "train") -> list[Document]:
    """The tunes of ``split`` from the ``.abc`` files in ``abc_folder`` (``ABC_cleaned``)."""
    if split not in SPLITS:
        raise OmnibyteError(f"Nottingham has splits {', '.join(SPLITS)}, not {split!r}")
    files = sorted(Path(abc_folder).glob("*.abc"))
    if not files:
        raise OmnibyteError(f"no .abc files in {abc_folder}")
    documents = []
    for path in files:
        for number, tune in enumerate(split_tunes(path.read_bytes())):
            name = f"nottingham:{path.name}#{number}"
            in_test = stable_unit_hash(name) < TEST_FRACTION
            if in_test == (split == "test"):
                documents.append(Document(name, tune, tune_type(path.name)))
    return documents

"""enwik8 (first 10^8 bytes of English Wikipedia) with its usual 90M/5M/5M split.

For users who already have the file (raw or the usual ``enwik8.zip``); never downloads.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from omnibyte.data.corpus import ByteCorpus
from omnibyte.data.sources import Document
from omnibyte.errors import OmnibyteError

ENWIK8_BYTES = 100_000_000
ENWIK8_MD5 = "a1fa5ffddb56f4953e226637dabbb36a"
ENWIK8_MEMBER = "enwik8"
HOLDOUT_DIVISOR = 20  # validation and test are each 1/20 (5M) of the file


def load_enwik8(
    path: str | Path, check_md5: bool = True
) -> tuple[ByteCorpus, ByteCorpus, ByteCorpus]:
    """(train, validation, test) corpora of enwik8: the first 90%, the next 5%, the last 5%."""
    path = Path(path)
    if not path.is_file():
        raise OmnibyteError(f"enwik8 not found at {path} (omnibyte never downloads it)")
    data = _read_zip_member(path) if path.suffix.lower() == ".zip" else _map_file(path)
    if len(data) != ENWIK8_BYTES:
        raise OmnibyteError(
            f"{path} holds {len(data):,} bytes; enwik8 has exactly {ENWIK8_BYTES:,}"
        )
    if check_md5:
        digest = hashlib.md5(data).hexdigest()
        if digest != ENWIK8_MD5:
            raise OmnibyteError(f"{path} has md5 {digest}, enwik8's is {ENWIK8_MD5}")
    holdout = len(data) // HOLDOUT_DIVISOR
    corpus = ByteCorpus([Document(ENWIK8_MEMBER, data)])
    return corpus.split_tail_bytes(test_bytes=holdout, validation_bytes=holdout)


def _map_file(path: Path) -> np.ndarray:
    if path.stat().st_size == 0:
        raise OmnibyteError(f"{path} is empty, not enwik8")
    return np.memmap(path, dtype=np.uint8, mode="r")


def _read_zip_member(path: Path) -> bytes:
    try:
        with zipfile.ZipFile(path) as archive:
            if ENWIK8_MEMBER not in archive.namelist():
                raise OmnibyteError(f"{path} has no member named {ENWIK8_MEMBER!r}")
            return archive.read(ENWIK8_MEMBER)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise OmnibyteError(f"cannot read {path}: {error}") from None

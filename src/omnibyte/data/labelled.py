"""Labelled data for classification: documents with a class, from DATA arguments.

A DATA argument is one of:

* a folder with one sub-folder per class: every file below ``DATA/CLASS/`` (recursively,
  archives expanded as for training) is of class ``CLASS``; a file directly in ``DATA`` has
  no class and is refused, and so is a class folder without files;
* a CSV file (``.csv``) of ``path,label`` rows (an optional ``path,label`` header; paths
  relative to the CSV's folder);
* a built-in dataset made in memory, ``NAME:SPLIT``: ``fashion-mnist:train|test`` (32x32 BMPs),
  ``fsdd:train|test`` (1 s 8 kHz WAVs, official split), ``nottingham:train|test`` (ABC tunes
  labelled with their tune type). They are read from ``$OMNIBYTE_DATA`` (default
  ``../shared/data``): ``fashion-mnist/``, ``fsdd/recordings/``, ``nottingham/ABC_cleaned/``.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable, Sequence

from omnibyte.data.corpus import ByteCorpus
from omnibyte.data.fashion_mnist import fashion_mnist_documents
from omnibyte.data.fsdd import fsdd_documents
from omnibyte.data.nottingham import nottingham_documents
from omnibyte.data.sources import Document, SkipLog, documents_of_file, expand_path
from omnibyte.errors import OmnibyteError

DATA_ROOT_ENV = "OMNIBYTE_DATA"
DEFAULT_DATA_ROOT = "../shared/data"
# NAME -> (folder under the data root, loader(folder, split))
DATASETS: dict[str, tuple[str, Callable[[Path, str], list[Document]]]] = {
    "fashion-mnist": ("fashion-mnist", fashion_mnist_documents),
    "fsdd": ("fsdd/recordings", fsdd_documents),
    "nottingham": ("nottingham/ABC_cleaned", nottingham_documents),
}
UNLABELLED_HINT = "give a folder with one sub-folder per class, a CSV of path,label, or NAME:SPLIT"


def data_root() -> Path:
    return Path(os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT)


def dataset_spec(argument: str) -> tuple[str, str] | None:
    """``(name, split)`` when ``argument`` names a built-in dataset and no such file exists."""
    name, sep, split = str(argument).partition(":")
    if sep and name in DATASETS and not os.path.lexists(argument):
        return name, split
    return None


def dataset_documents(name: str, split: str) -> list[Document]:
    folder_name, loader = DATASETS[name]
    folder = data_root() / folder_name
    if not folder.is_dir():
        raise OmnibyteError(f"{name}:{split}: {folder} not found (set ${DATA_ROOT_ENV} to the folder holding "
                            f"{folder_name})")
    return loader(folder, split)


def labelled_documents(argument: str | Path, skipped: SkipLog, exclude: Sequence[str | Path] = ()) -> list[Document]:
    """The labelled documents of one DATA argument (see the module docstring)."""
    spec = dataset_spec(str(argument))
    if spec is not None:
        return dataset_documents(*spec)
    path = Path(argument)
    if path.is_dir():
        return _class_folders(path, skipped, exclude)
    if path.is_file() and path.suffix.lower() == ".csv":
        return _csv_documents(path, skipped)
    if not path.exists():
        raise OmnibyteError(f"input not found: {argument}")
    raise OmnibyteError(f"cannot tell the class of {argument}: {UNLABELLED_HINT}")


def _class_folders(folder: Path, skipped: SkipLog, exclude: Sequence[str | Path]) -> list[Document]:
    excluded = [os.path.realpath(path) for path in exclude]
    entries = sorted(entry for entry in folder.iterdir() if not entry.name.startswith("."))
    loose = [entry.name for entry in entries if not entry.is_dir()]
    if loose:
        raise OmnibyteError(f"{folder} holds files outside class folders ({', '.join(loose[:3])}): {UNLABELLED_HINT}")
    classes = [entry for entry in entries if os.path.realpath(entry) not in excluded]
    if not classes:
        raise OmnibyteError(f"{folder} has no class folders: {UNLABELLED_HINT}")
    documents: list[Document] = []
    for class_folder in classes:
        found = [Document(document.name, document.data, class_folder.name)
                 for file_name in expand_path(str(class_folder), skipped, excluded)
                 for document in documents_of_file(file_name, skipped)]
        if not found:
            raise OmnibyteError(f"class folder {class_folder} holds no usable files")
        documents.extend(found)
    return documents


def _csv_documents(table: Path, skipped: SkipLog) -> list[Document]:
    try:
        rows = list(csv.reader(table.read_text(encoding="utf-8").splitlines()))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise OmnibyteError(f"cannot read {table}: {error}") from None
    first_line = 1
    if rows and [cell.strip().lower() for cell in rows[0]] == ["path", "label"]:
        rows, first_line = rows[1:], 2
    documents: list[Document] = []
    for line, row in enumerate(rows, start=first_line):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise OmnibyteError(f"{table} row {line}: expected path,label, got {','.join(row)!r}")
        file_name = table.parent / row[0].strip()
        if not file_name.is_file():
            raise OmnibyteError(f"{table} row {line}: file not found: {file_name}")
        documents.extend(Document(document.name, document.data, row[1].strip())
                         for document in documents_of_file(str(file_name), skipped))
    if not documents:
        raise OmnibyteError(f"{table} lists no usable files")
    return documents


def read_labelled(paths: Sequence[str | Path], exclude: Sequence[str | Path] = ()) -> ByteCorpus:
    """A corpus of labelled documents from DATA arguments (see the module docstring)."""
    if not paths:
        raise OmnibyteError("no input paths given")
    skipped = SkipLog()
    documents = [document for argument in paths for document in labelled_documents(argument, skipped, exclude)]
    return ByteCorpus(documents, skipped)

"""Classifying files with a model trained by ``omnibyte train --task classify``, and scoring
such a classifier on labelled data (accuracy, per-class accuracy, confusion matrix)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from omnibyte.data.sources import Document
from omnibyte.devices import autocast
from omnibyte.errors import OmnibyteError
from omnibyte.fileio import save_png
from omnibyte.models.base import ByteModel
from omnibyte.models.serialization import read_config
from omnibyte.tasks import ClassifyTask, load_task
from omnibyte.tasks.classify import file_rows


def saved_task_name(directory: str | Path) -> str:
    """The task the model in ``directory`` was trained for (``read_config`` checks the file)."""
    return str(read_config(directory)["task"].get("name"))


def is_classifier(directory: str | Path) -> bool:
    return saved_task_name(directory) == ClassifyTask.name


def refuse_classifier(directory: str | Path, command: str) -> None:
    """A classifier's byte head is not what it was trained for: commands that need next-byte
    predictions refuse it in one line."""
    if is_classifier(directory):
        raise OmnibyteError(f"{directory} holds a classifier (--task classify), not a next-byte model; "
                            f"{command} needs a model trained with --task next-byte (use omnibyte classify)")


def load_classifier(directory: str | Path) -> ClassifyTask:
    """The classification task (labels and head weights) saved with the model in ``directory``."""
    name = saved_task_name(directory)
    if name != ClassifyTask.name:
        raise OmnibyteError(f"{directory} holds a model trained for task {name!r}, not a classifier "
                            "(train one with omnibyte train --task classify)")
    task = load_task(directory)
    assert isinstance(task, ClassifyTask)
    return task


@torch.no_grad()
def class_probabilities(model: ByteModel, task: ClassifyTask, files: Sequence[bytes | np.ndarray],
                        batch_size: int = 8) -> np.ndarray:
    """``[len(files), classes]`` probabilities; files are cut to the row length the classifier
    was trained at (or the model's context when unknown)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    seq_len = min(task.seq_len or model.max_seq_len, model.max_seq_len)
    task.head.to(model.device).eval()
    model.eval()
    rows = []
    for first in range(0, len(files), batch_size):
        tokens, mask = file_rows(files[first : first + batch_size], seq_len)
        with autocast(model.device):  # bf16 on CUDA, as in training
            logits = task.logits(model, tokens.to(model.device), mask.to(model.device))
        rows.append(torch.softmax(logits, dim=-1).cpu().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, len(task.labels)))


@dataclasses.dataclass
class Prediction:
    path: str
    label: str
    probabilities: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def classify_documents(model: ByteModel, task: ClassifyTask, documents: Sequence[Document],
                       batch_size: int = 8) -> list[Prediction]:
    """The most probable class of every document, with all class probabilities."""
    probabilities = class_probabilities(model, task, [document.data for document in documents], batch_size)
    return [Prediction(document.name, task.labels[int(row.argmax())],
                       {label: float(p) for label, p in zip(task.labels, row)})
            for document, row in zip(documents, probabilities)]


@dataclasses.dataclass
class ClassifierReport:
    """``confusion[i, j]``: files of class ``labels[i]`` classified as ``labels[j]``."""

    labels: list[str]
    confusion: np.ndarray

    @property
    def files(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion)) / max(self.files, 1)

    def per_class(self) -> dict[str, dict[str, float | int]]:
        totals = self.confusion.sum(axis=1)
        return {label: {"files": int(total), "accuracy": float(self.confusion[i, i]) / total if total else None}
                for i, (label, total) in enumerate(zip(self.labels, totals.tolist()))}

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "accuracy": self.accuracy, "per_class": self.per_class(),
                "labels": self.labels, "confusion": self.confusion.tolist()}


def evaluate_classifier(model: ByteModel, task: ClassifyTask, documents: Iterable[Document],
                        batch_size: int = 8) -> ClassifierReport:
    """Accuracy and confusion matrix over labelled ``documents``; their labels must be classes
    the classifier knows."""
    documents = list(documents)
    index = {label: i for i, label in enumerate(task.labels)}
    unknown = sorted({str(document.label) for document in documents if document.label not in index})
    if unknown:
        raise OmnibyteError(f"classes not known to this classifier: {', '.join(unknown[:5])} "
                            f"(it knows {', '.join(task.labels)})")
    confusion = np.zeros((len(task.labels), len(task.labels)), dtype=np.int64)
    probabilities = class_probabilities(model, task, [document.data for document in documents], batch_size)
    for document, row in zip(documents, probabilities):
        confusion[index[document.label], int(row.argmax())] += 1
    return ClassifierReport(list(task.labels), confusion)


def plot_confusion(report: ClassifierReport, path: str | Path) -> Path:
    """The confusion matrix as a PNG (rows: true class, columns: predicted), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.5 * len(report.labels) + 2.0)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(report.confusion, cmap="Blues")
    ticks = range(len(report.labels))
    axes.set_xticks(ticks, report.labels, rotation=45, ha="right")
    axes.set_yticks(ticks, report.labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"accuracy {report.accuracy:.3f} ({report.files} files)")
    threshold = report.confusion.max() / 2 if report.confusion.size else 0
    for (row, column), count in np.ndenumerate(report.confusion):
        axes.text(column, row, str(count), ha="center", va="center",
                  color="white" if count > threshold else "black", fontsize=8)
    figure.tight_layout()
    return save_png(figure, path, dpi=100)

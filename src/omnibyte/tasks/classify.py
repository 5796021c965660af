"""Classification of whole files: a linear head on the pooled trunk of any family.

One row of a batch is one file: ``[BOS, byte 0, byte 1, ...]``, cut after ``seq_len``
tokens (the file's head is kept: ``seq_len - 1`` bytes) or padded with token 0 up to
``seq_len``; ``mask`` marks the real tokens and ``labels`` holds one class index per row.
The logits are ``head(model.pool(model.encode(tokens), mask))`` (the mean of the trunk's
states over the real tokens; padding comes after them, so causal trunks never see it).

The label set comes from the data (``for_data``: the sorted class names of the training
corpus) and is recorded with the model, with the row length it was trained at (``seq_len``,
used again when the model classifies new files).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from omnibyte.data.corpus import ByteCorpus
from omnibyte.data.labelled import read_labelled
from omnibyte.data.sampler import Batch
from omnibyte.errors import OmnibyteError
from omnibyte.models.base import BOS
from omnibyte.tasks.base import Task, register_task

if TYPE_CHECKING:
    from pathlib import Path

    from omnibyte.models.base import ByteModel

EVAL_ORDER_SEED = 0  # validation visits files in one fixed shuffled order: any prefix mixes classes


def file_rows(files: Sequence[bytes | np.ndarray], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens, mask)`` [B, seq_len]: each file as ``[BOS, bytes...]`` cut or padded to ``seq_len``."""
    tokens = np.zeros((len(files), seq_len), dtype=np.int64)
    mask = np.zeros((len(files), seq_len), dtype=bool)
    for row, data in enumerate(files):
        body = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else np.asarray(data, np.uint8)
        body = body[: seq_len - 1]
        tokens[row, 0] = BOS
        tokens[row, 1 : 1 + len(body)] = body
        mask[row, : 1 + len(body)] = True
    return torch.from_numpy(tokens), torch.from_numpy(mask)


def labelled_batch(corpus: ByteCorpus, indices: Sequence[int], label_ids: np.ndarray, seq_len: int) -> Batch:
    """The files ``indices`` of ``corpus`` as one batch with their class indices."""
    tokens, mask = file_rows([corpus.document(int(index)).data for index in indices], seq_len)
    labels = torch.from_numpy(label_ids[np.asarray(indices, dtype=np.int64)])
    return Batch(tokens, torch.zeros_like(tokens), mask, labels=labels)


class FileBatches:
    """Training batches of whole files: epochs of a shuffled order, each a pure function of
    ``(seed, epoch)``, so ``batch(index)`` depends only on the index and the seed."""

    def __init__(self, corpus: ByteCorpus, label_ids: np.ndarray, seq_len: int, batch_size: int, seed: int):
        if corpus.num_documents == 0:
            raise OmnibyteError("the training data holds no files")
        self.corpus, self.label_ids = corpus, label_ids
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) > 4:
                self._orders.clear()
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.corpus.num_documents)
        return self._orders[epoch]

    def batch(self, index: int) -> Batch:
        count = self.corpus.num_documents
        positions = index * self.batch_size + np.arange(self.batch_size)
        indices = [int(self._order(int(position // count))[position % count]) for position in positions]
        return labelled_batch(self.corpus, indices, self.label_ids, self.seq_len)


@register_task
class ClassifyTask(Task):
    """Cross-entropy of the file's class; validated by loss (the objective) and accuracy."""

    name: ClassVar[str] = "classify"
    objective: ClassVar[str] = "loss"
    unused_parameters: ClassVar[bool] = True  # the model's byte head takes no part

    def __init__(self, labels: Sequence[str], hidden_size: int, seq_len: int | None = None):
        labels = list(labels)
        if len(labels) < 2 or len(set(labels)) != len(labels) or not all(isinstance(x, str) and x for x in labels):
            raise ValueError(f"a classifier needs two or more distinct class names, got {labels!r}")
        if not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"hidden_size must be a positive integer, got {hidden_size!r}")
        self.labels = labels
        self.hidden_size = hidden_size
        self.seq_len = seq_len  # the row length of training; set by train_batches
        self.head = nn.Linear(hidden_size, len(labels))

    # ---- data ---------------------------------------------------------------------------
    @classmethod
    def read_corpus(cls, paths: Sequence[str | Path], exclude: Sequence[str | Path] = ()) -> ByteCorpus:
        return read_labelled(paths, exclude)

    @classmethod
    def for_data(cls, corpus: ByteCorpus, model: ByteModel, **options: Any) -> ClassifyTask:
        """The classes of ``corpus`` (sorted names), a head as wide as ``model``'s trunk."""
        labels = corpus.labels
        if any(label is None for label in labels):
            raise OmnibyteError("classification needs labelled data: one sub-folder per class or a CSV of path,label")
        classes = sorted(set(labels))
        if len(classes) < 2:
            raise OmnibyteError(f"classification needs at least two classes, the data has {classes or 'none'}")
        return cls(classes, model.hidden_size, **options)

    def label_ids(self, corpus: ByteCorpus) -> np.ndarray:
        """The class index of every file of ``corpus``; a class the model does not know is an error."""
        index = {label: position for position, label in enumerate(self.labels)}
        unknown = sorted({str(label) for label in corpus.labels if label not in index})
        if unknown:
            raise OmnibyteError(f"classes not known to this classifier: {', '.join(unknown[:5])} "
                                f"(it knows {', '.join(self.labels)})")
        return np.array([index[label] for label in corpus.labels], dtype=np.int64)

    def _check_seq_len(self, seq_len: int) -> None:
        if self.seq_len is None:
            self.seq_len = seq_len
        elif self.seq_len != seq_len:
            raise OmnibyteError(f"this classifier reads files as rows of {self.seq_len} tokens; "
                                f"--seq-len {seq_len} differs")

    def train_batches(self, corpus: ByteCorpus, seq_len: int, batch_size: int, seed: int) -> FileBatches:
        self._check_seq_len(seq_len)
        return FileBatches(corpus, self.label_ids(corpus), seq_len, batch_size, seed)

    def eval_batches(self, corpus: ByteCorpus, seq_len: int, batch_size: int) -> Iterator[Batch]:
        label_ids = self.label_ids(corpus)
        order = np.random.default_rng(EVAL_ORDER_SEED).permutation(corpus.num_documents)
        for first in range(0, len(order), batch_size):
            yield labelled_batch(corpus, order[first : first + batch_size].tolist(), label_ids, seq_len)

    # ---- the objective ----------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        return {"head": self.head}

    def logits(self, model: ByteModel, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Class logits [B, classes] (float32) of rows made by ``file_rows``."""
        return self.head(model.pool(model.encode(tokens), mask)).float()

    def loss(self, model: ByteModel, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(self.logits(model, batch.tokens, batch.mask), batch.labels)

    def metrics(self, model: ByteModel, batch: Batch) -> dict[str, float]:
        logits = self.logits(model, batch.tokens, batch.mask)
        nats = F.cross_entropy(logits, batch.labels, reduction="sum")
        correct = (logits.argmax(dim=-1) == batch.labels).sum()
        return {"nats": float(nats), "correct": float(correct), "files": float(batch.labels.numel())}

    def summarize(self, totals: dict[str, float]) -> dict[str, float]:
        files = max(totals.get("files", 0.0), 1.0)
        loss = totals.get("nats", 0.0) / files
        return {"loss": loss, "bits": loss / math.log(2), "accuracy": totals.get("correct", 0.0) / files}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "labels": list(self.labels), "hidden_size": self.hidden_size,
                "seq_len": self.seq_len}

"""Conversion as next-byte prediction: ``source + separator + target + end marker``, with the
loss on the target only.

A record (``omnibyte.data.pairs``: its file format and token layout) is one row of a batch:
``BOS, source, BOS, escaped target, FF 00``, padded (a target of fixed size, a CPU state, is
neither escaped nor marked). The mask is true exactly on the targets that are bytes of the
target stream, so the model learns to produce the target (and to stop) from the source, and
nothing about the source itself. Any family trains
this way through ``model.loss``; validation reports bits per byte of that target part and the
share of those bytes predicted right (argmax).

Rows are padded to the longest record of their batch (rounded up to ``WIDTH_STEP`` tokens,
at most ``seq_len``). A record longer than ``seq_len`` tokens (source + target + 3) cannot be
one row: it is left out of training and validation, and a note on stderr says how many were.

The task records its direction (``source`` and ``target`` kinds), so ``omnibyte convert``
refuses input of the wrong kind (MIDI given to an ABC -> MIDI model).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from omnibyte.data.corpus import ByteCorpus
from omnibyte.data.pairs import (
    KINDS,
    PairRecord,
    check_kind_name,
    corpus_records,
    describe_bytes,
    kind_problem,
    read_pair_corpus,
    record_tokens,
)
from omnibyte.data.sampler import Batch
from omnibyte.errors import OmnibyteError
from omnibyte.tasks.base import Task, register_task

if TYPE_CHECKING:
    from omnibyte.models.base import ByteModel

LN2 = math.log(2)
WIDTH_STEP = 256  # row widths are multiples of this: few distinct shapes, little padding


class RecordRows:
    """The token rows of the records that fit in ``seq_len`` tokens, and how to batch them."""

    def __init__(self, records: Sequence[PairRecord], seq_len: int, role: str):
        if seq_len < 1:
            raise OmnibyteError(f"seq_len must be positive, got {seq_len}")
        self.seq_len = seq_len
        rows = [record_tokens(record.source, record.target, record.target_kind) for record in records]
        # a record of n tokens gives n - 1 (input, target) positions
        self.rows = [row for row in rows if len(row) - 1 <= seq_len]
        self.source_lengths = [len(record.source) for record, row in zip(records, rows) if len(row) - 1 <= seq_len]
        too_long = len(rows) - len(self.rows)
        if too_long:
            longest = max(len(row) - 1 for row in rows)
            print(f"omnibyte: note: {too_long} of {len(rows)} {role} records are longer than --seq-len "
                  f"{seq_len} (longest: {longest} tokens) and are left out", file=sys.stderr)

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, indices: Sequence[int], batch_size: int) -> Batch:
        """Rows ``indices`` (then empty, fully masked rows up to ``batch_size``) as a Batch."""
        longest = max([len(self.rows[index]) - 1 for index in indices] + [1])
        width = min(-(-longest // WIDTH_STEP) * WIDTH_STEP, self.seq_len)
        tokens = np.zeros((batch_size, width), dtype=np.int64)
        targets = np.zeros((batch_size, width), dtype=np.int64)
        mask = np.zeros((batch_size, width), dtype=bool)
        for slot, index in enumerate(indices):
            row = self.rows[index]
            count = len(row) - 1
            tokens[slot, :count] = row[:-1]
            targets[slot, :count] = row[1:]
            # the input at position source_length + 1 is the separator: from there on every
            # prediction is a byte of the escaped target or of the end marker
            mask[slot, self.source_lengths[index] + 1 : count] = True
        targets[~mask] = 0  # the separator (BOS) is a target of no loss: no model predicts it
        return Batch(torch.from_numpy(tokens), torch.from_numpy(targets), torch.from_numpy(mask))


class RecordBatches:
    """Training batches of random records; ``batch(index)`` is a pure function of (seed, index)."""

    def __init__(self, rows: RecordRows, batch_size: int, seed: int):
        if len(rows) == 0:
            raise OmnibyteError(f"no training record fits in --seq-len {rows.seq_len}; raise --seq-len")
        if batch_size < 1 or seed < 0:
            raise OmnibyteError(f"batch_size must be positive and seed not negative, got {batch_size}, {seed}")
        self.rows, self.batch_size, self.seed = rows, batch_size, seed

    def batch(self, index: int) -> Batch:
        if index < 0:
            raise ValueError(f"batch index must not be negative, got {index}")
        chosen = np.random.default_rng([self.seed, index]).integers(0, len(self.rows), self.batch_size)
        return self.rows.batch(chosen.tolist(), self.batch_size)


def records_of(corpus: ByteCorpus, role: str) -> list[PairRecord]:
    """The paired records of a corpus; a corpus with none is a one-line error."""
    records, broken = corpus_records(corpus)
    if not records:
        raise OmnibyteError(f"the {role} data holds no paired records (write them with omnibyte datasets, "
                            "see docs/tasks.md)")
    if broken:  # pieces of a record cut by a tail split (a corpus of fewer than 20 records)
        print(f"omnibyte: note: {broken} {role} piece(s) that are not whole records are left out",
              file=sys.stderr)
    return records


@register_task
class ConvertTask(Task):
    """Next-byte prediction of a record's target given its source; validated in bits per
    target byte. ``source``/``target`` name the kinds of bytes converted (``pairs.KINDS``)."""

    name: ClassVar[str] = "convert"
    objective: ClassVar[str] = "bits_per_byte"

    def __init__(self, source: str = "bytes", target: str = "bytes"):
        self.source = check_kind_name(source, "source kind")
        self.target = check_kind_name(target, "target kind")
        self._eval_rows: tuple[tuple[int, int], ByteCorpus, RecordRows] | None = None

    # ---- the objective --------------------------------------------------------------------
    def loss(self, model: ByteModel, batch: Batch) -> torch.Tensor:
        return model.loss(batch.tokens, batch.targets, batch.mask)

    @torch.no_grad()
    def metrics(self, model: ByteModel, batch: Batch) -> dict[str, float]:
        logits = model(batch.tokens).float()
        losses = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), reduction="none")
        mask = batch.mask.flatten()
        right = (logits.argmax(-1).flatten() == batch.targets.flatten()) & mask
        return {"bits": float((losses * mask).sum()) / LN2, "bytes": float(mask.sum()),
                "correct": float(right.sum())}

    def summarize(self, totals: dict[str, float]) -> dict[str, float]:
        count = max(totals.get("bytes", 0.0), 1.0)
        return {"bits_per_byte": totals.get("bits", 0.0) / count, "accuracy": totals.get("correct", 0.0) / count}

    # ---- batches --------------------------------------------------------------------------
    def train_batches(self, corpus: ByteCorpus, seq_len: int, batch_size: int, seed: int) -> RecordBatches:
        return RecordBatches(RecordRows(self.checked(records_of(corpus, "training")), seq_len, "training"),
                             batch_size, seed)

    def eval_batches(self, corpus: ByteCorpus, seq_len: int, batch_size: int) -> Iterator[Batch]:
        if batch_size < 1:
            raise OmnibyteError(f"batch_size must be positive, got {batch_size}")
        key = (id(corpus), seq_len)
        if self._eval_rows is None or self._eval_rows[0] != key:  # parsed (and noted) once per corpus
            rows = RecordRows(self.checked(records_of(corpus, "validation")), seq_len, "validation")
            self._eval_rows = (key, corpus, rows)  # the corpus is kept so its id stays its own
        rows = self._eval_rows[2]
        for first in range(0, len(rows), batch_size):
            yield rows.batch(list(range(first, min(first + batch_size, len(rows)))), batch_size)

    def checked(self, records: list[PairRecord]) -> list[PairRecord]:
        """``records``, refused in one line when one converts another way than this task."""
        for record in records:
            if record.direction != (self.source, self.target):
                raise OmnibyteError(f"record {record.name or '(unnamed)'} converts {record.source_kind} to "
                                    f"{record.target_kind}, but the task converts {self.source} to {self.target}")
        return records

    # ---- a new run ------------------------------------------------------------------------
    @classmethod
    def read_corpus(cls, paths: Sequence[str | Path], exclude: Sequence[str | Path] = ()) -> ByteCorpus:
        """Pair files (``omnibyte datasets``) as one corpus document per record."""
        return read_pair_corpus([str(path) for path in paths], [str(path) for path in exclude])

    @classmethod
    def for_data(cls, corpus: ByteCorpus, model: ByteModel | None = None, **options: Any) -> ConvertTask:
        """The task of the direction the records convert (they must all agree)."""
        records = records_of(corpus, "training")
        directions = sorted({record.direction for record in records})
        if len(directions) > 1:
            listed = ", ".join(f"{source} -> {target}" for source, target in directions)
            raise OmnibyteError(f"the data mixes conversion directions ({listed}); train one direction per model")
        source, target = directions[0]
        return cls(**{"source": source, "target": target, **options})

    # ---- conversion -----------------------------------------------------------------------
    def check_source(self, data: bytes, name: str = "input") -> None:
        """Refuse, in one line, a source this model was not trained to convert."""
        problem = kind_problem(self.source, data)
        if problem is not None:
            raise OmnibyteError(f"{name} is {describe_bytes(data)}, but this model converts "
                                f"{KINDS[self.source].description} to {KINDS[self.target].description}: {problem}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "target": self.target}

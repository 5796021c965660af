"""Bits per byte and friends over files, overall and per file type."""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from omnibyte.data import Document, SkipLog, file_kind, iter_documents
from omnibyte.models.base import BOS, ByteModel
from omnibyte.scoring import ByteScores, score_bytes, window_starts


@dataclasses.dataclass
class ScoreStats:
    """Aggregates over scored bytes."""

    num_bytes: int = 0
    total_bits: float = 0.0
    num_correct: int = 0
    prob_sum: float = 0.0
    min_prob: float = 1.0
    max_prob: float = 0.0

    def add(self, scores: ByteScores) -> None:
        if len(scores.log2_probs) == 0:
            return
        probs = np.exp2(scores.log2_probs)
        self.num_bytes += len(probs)
        self.total_bits += float(-scores.log2_probs.sum())
        self.num_correct += int(scores.correct.sum())
        self.prob_sum += float(probs.sum())
        self.min_prob = min(self.min_prob, float(probs.min()))
        self.max_prob = max(self.max_prob, float(probs.max()))

    def to_dict(self) -> dict:
        n = max(self.num_bytes, 1)
        bits_per_byte = self.total_bits / n
        return {
            "bytes": self.num_bytes,
            "bits_per_byte": bits_per_byte,
            "perplexity": float(2 ** bits_per_byte),
            "accuracy": self.num_correct / n,
            "mean_true_byte_prob": self.prob_sum / n,
            "min_true_byte_prob": self.min_prob if self.num_bytes else None,
            "max_true_byte_prob": self.max_prob if self.num_bytes else None,
        }


@dataclasses.dataclass
class EvalReport:
    overall: ScoreStats
    by_type: dict[str, ScoreStats]
    by_file: dict[str, ScoreStats]
    skipped: SkipLog
    patches: int | None = None  # patches the scored windows fell into (patched families only)

    def to_dict(self, per_file: bool = False) -> dict:
        report = {**self.overall.to_dict(),
                  "files": len(self.by_file),
                  "by_type": {kind: stats.to_dict() for kind, stats in sorted(self.by_type.items())},
                  "skipped": self.skipped.summary() if self.skipped.total else ""}
        if self.patches is not None:
            report["bytes_per_patch"] = self.overall.num_bytes / max(self.patches, 1)
        if per_file:
            report["by_file"] = {name: stats.to_dict() for name, stats in self.by_file.items()}
        return report


@torch.no_grad()
def count_patches(model: ByteModel, data: bytes, context: int | None = None, batch_size: int = 8) -> int:
    """Patches that a patched model (one with ``patch_starts``, e.g. BLT) cuts ``data`` into,
    over the windows ``score_bytes`` scores (non-overlapping, each starting from its own first
    token, the first one BOS)."""
    array = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    if len(array) == 0:
        return 0
    context = min(context or model.max_seq_len, model.max_seq_len)
    stream = np.concatenate([[BOS], array])
    starts = window_starts(len(array), context, context)
    length = min(context, len(array))
    scored_until, patches = 0, 0
    for first in range(0, len(starts), batch_size):
        batch_starts = starts[first : first + batch_size]
        tokens = torch.from_numpy(np.stack([stream[s : s + length] for s in batch_starts])).to(model.device)
        marks = model.patch_starts(tokens).cpu().numpy()
        for row, start in enumerate(batch_starts):
            offset = max(scored_until - start, 0)  # the last window overlaps: count its new bytes only
            patches += int(marks[row, offset:].sum()) + (1 if offset and not marks[row, offset] else 0)
            scored_until = start + length
    return patches


def evaluate_documents(
    model: ByteModel,
    documents: Iterable[Document],
    context: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
    skipped: SkipLog | None = None,
) -> EvalReport:
    # checked before the first file is read; score_bytes checks them again for its own callers
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if context is not None and context < 1:
        raise ValueError(f"context must be at least 1, got {context}")
    overall, by_type, by_file = ScoreStats(), defaultdict(ScoreStats), {}
    patched, patches = hasattr(model, "patch_starts"), 0
    bar = tqdm(documents, disable=not progress, unit="file", desc="eval", dynamic_ncols=True)
    for document in bar:
        scores = score_bytes(model, document.data, context=context, batch_size=batch_size)
        file_stats = ScoreStats()
        for stats in (overall, by_type[file_kind(document.name)], file_stats):
            stats.add(scores)
        by_file[document.name] = file_stats
        if patched:
            patches += count_patches(model, document.data, context, batch_size)
        bar.set_postfix(bpb=f"{overall.to_dict()['bits_per_byte']:.3f}")
    return EvalReport(overall, dict(by_type), by_file, skipped or SkipLog(), patches if patched else None)


def evaluate_paths(model: ByteModel, paths: Sequence[str | Path], **options) -> EvalReport:
    skipped = SkipLog()
    documents = iter_documents(paths, skipped=skipped)
    return evaluate_documents(model, documents, skipped=skipped, **options)

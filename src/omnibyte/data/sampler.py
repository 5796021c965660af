"""Training and evaluation windows over a corpus's token stream.

The token stream of a corpus is ``[BOS, doc0 bytes..., BOS, doc1 bytes..., ...]``: every
document starts with BOS (256), so no window lets one file bleed into the next unnoticed.
A window is ``seq_len + 1`` consecutive stream tokens ``u``; ``tokens = u[:-1]`` and
``targets = u[1:]``. Targets that are BOS are masked (no model predicts BOS) and set to 0.
Positions past the end of the stream are padding: token 0, target 0, mask False. A corpus
shorter than one window is therefore allowed; its windows are padded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from omnibyte.data.corpus import ByteCorpus
from omnibyte.errors import OmnibyteError
from omnibyte.models.base import BOS

PAD = -1  # stream positions past the end, before conversion to a Batch


@dataclass
class Batch:
    """Model inputs, next-byte targets and which targets count, all ``[B, T]``.

    ``doc_ids`` (evaluation batches only) is the corpus document index of each target,
    -1 on padding, for per-document or per-file-type scores. ``labels`` is whatever a task
    other than next-byte prediction learns from (e.g. one class id per row, ``[B]``); the
    window samplers leave it empty."""

    tokens: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    doc_ids: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch on ``device``."""

        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device, non_blocking=non_blocking)

        return Batch(move(self.tokens), move(self.targets), move(self.mask),
                     move(self.doc_ids), move(self.labels))

    @property
    def num_targets(self) -> int:
        """Number of unmasked targets (bytes that are scored)."""
        return int(self.mask.sum())


class TokenStream:
    """The BOS-marked token stream of a corpus, computed on the fly from ``doc_starts``."""

    def __init__(self, corpus: ByteCorpus):
        self.corpus = corpus
        # Document k's BOS sits at stream position doc_starts[k] + k; its bytes follow.
        self.bos_positions = corpus.doc_starts + np.arange(corpus.num_documents, dtype=np.int64)
        self.num_tokens = corpus.num_bytes + corpus.num_documents

    def read(self, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens at stream positions ``[start, start + length)`` (``PAD`` past the end) and
        the document index of each (-1 past the end), both ``int64``."""
        tokens = np.full(length, PAD, dtype=np.int64)
        doc_ids = np.full(length, -1, dtype=np.int64)
        count = min(max(self.num_tokens - start, 0), length)
        if count == 0:
            return tokens, doc_ids
        positions = np.arange(start, start + count, dtype=np.int64)
        doc_index = np.searchsorted(self.bos_positions, positions, side="right") - 1
        is_bos = positions == self.bos_positions[doc_index]
        byte_index = positions - doc_index - 1  # stream byte behind each non-BOS position
        values = np.full(count, BOS, dtype=np.int64)
        byte_positions = byte_index[~is_bos]
        if len(byte_positions):
            low = int(byte_positions[0])
            chunk = self.corpus.read(low, int(byte_positions[-1]) + 1 - low)
            values[~is_bos] = chunk[byte_positions - low]
        tokens[:count] = values
        doc_ids[:count] = doc_index
        return tokens, doc_ids


def windows_to_batch(windows: np.ndarray, doc_ids: np.ndarray | None = None) -> Batch:
    """Batch from ``[B, T + 1]`` stream tokens (``PAD`` past the end)."""
    tokens = windows[:, :-1].copy()
    tokens[tokens == PAD] = 0
    targets = windows[:, 1:].copy()
    mask = (targets != PAD) & (targets != BOS)
    targets[~mask] = 0
    target_docs = None
    if doc_ids is not None:
        target_docs = torch.from_numpy(np.where(mask, doc_ids[:, 1:], -1))
    return Batch(
        torch.from_numpy(tokens), torch.from_numpy(targets), torch.from_numpy(mask), target_docs
    )


class WindowSampler:
    """Random training windows; ``batch(step)`` is a pure function of ``(seed, step)``, so a
    resumed run draws exactly the batches it would have drawn."""

    def __init__(self, corpus: ByteCorpus, seq_len: int, batch_size: int, seed: int = 0):
        if corpus.num_bytes == 0:
            raise OmnibyteError("the training corpus is empty")
        if seq_len < 1 or batch_size < 1:
            raise OmnibyteError(
                f"seq_len and batch_size must be positive, got {seq_len}, {batch_size}"
            )
        if seed < 0:
            raise OmnibyteError(f"seed must not be negative, got {seed}")
        self.stream = TokenStream(corpus)
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        # Window starts keep all seq_len + 1 tokens inside the stream when it is long enough.
        self.num_starts = max(self.stream.num_tokens - seq_len, 1)

    def window_starts(self, step: int) -> np.ndarray:
        """Stream positions where the windows of ``step`` begin."""
        generator = np.random.default_rng([self.seed, step])
        return generator.integers(0, self.num_starts, size=self.batch_size)

    def batch(self, step: int) -> Batch:
        if step < 0:
            raise ValueError(f"step must not be negative, got {step}")
        starts = self.window_starts(step).tolist()
        windows = np.stack([self.stream.read(start, self.seq_len + 1)[0] for start in starts])
        return windows_to_batch(windows)


def num_eval_windows(corpus: ByteCorpus, seq_len: int) -> int:
    """Windows needed so that every byte of ``corpus`` is a target exactly once."""
    num_tokens = corpus.num_bytes + corpus.num_documents
    return -(-(num_tokens - 1) // seq_len) if num_tokens > 1 else 0


def iter_eval_windows(corpus: ByteCorpus, seq_len: int, batch_size: int) -> Iterator[Batch]:
    """Non-overlapping windows covering the corpus once: every byte is an unmasked target
    exactly once (each document's first byte predicted from its BOS). The last batch is
    padded to ``batch_size`` rows with fully masked windows; an empty corpus yields nothing."""
    if seq_len < 1 or batch_size < 1:
        raise OmnibyteError(
            f"seq_len and batch_size must be positive, got {seq_len}, {batch_size}"
        )
    stream = TokenStream(corpus)
    num_windows = num_eval_windows(corpus, seq_len)
    for first in range(0, num_windows, batch_size):
        indices = range(first, first + batch_size)
        rows = [stream.read(index * seq_len, seq_len + 1) for index in indices]
        tokens, doc_ids = (np.stack(column) for column in zip(*rows))
        yield windows_to_batch(tokens, doc_ids)

"""Per-byte scoring of whole byte strings with any model, in windows of its context."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from omnibyte.devices import autocast
from omnibyte.models.base import BOS, ByteModel


@dataclasses.dataclass
class ByteScores:
    """For every byte of the input: log2 p(byte | context) and whether it was the argmax."""

    log2_probs: np.ndarray  # float64 [n]
    correct: np.ndarray  # bool [n]

    @property
    def bits(self) -> np.ndarray:
        return -self.log2_probs


def window_starts(num_bytes: int, context: int, stride: int) -> list[int]:
    """Start offsets of windows of ``context`` tokens, ``stride`` apart, covering every byte."""
    if num_bytes <= context:
        return [0]
    last = num_bytes - context
    starts = list(range(0, last, stride))
    return starts + [last] if starts[-1] != last else starts


@torch.no_grad()
def score_bytes(
    model: ByteModel,
    data: bytes | np.ndarray,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
) -> ByteScores:
    """Score every byte of ``data``; the first byte is predicted from BOS.

    Windows of ``context`` tokens (default: the model's) advance by ``stride`` (default:
    ``context``, i.e. non-overlapping); each byte is scored once, by the first window that
    holds it with at least ``context - stride`` bytes of history (when overlapping).
    """
    # a batch of 0 or -1 would score nothing and report 0 bits/byte: refuse, never guess
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for name, value in (("context", context), ("stride", stride)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    array = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else np.asarray(data, np.uint8)
    num_bytes = len(array)
    context = min(context or model.max_seq_len, model.max_seq_len)
    stride = min(stride or context, context)
    log2_probs = np.zeros(num_bytes, dtype=np.float64)
    correct = np.zeros(num_bytes, dtype=bool)
    if num_bytes == 0:
        return ByteScores(log2_probs, correct)
    stream = np.concatenate([[BOS], array.astype(np.int64)])  # stream[i] predicts array[i]
    starts = window_starts(num_bytes, context, stride)
    scored_until = 0  # bytes [0, scored_until) already have scores
    device = model.device
    for first in range(0, len(starts), batch_size):
        batch_starts = starts[first : first + batch_size]
        length = min(context, num_bytes)
        tokens = np.stack([stream[s : s + length] for s in batch_starts])
        targets = np.stack([array[s : s + length] for s in batch_starts]).astype(np.int64)
        with autocast(device):
            logits = model(torch.from_numpy(tokens).to(device)).float()
        log_probs = torch.log_softmax(logits, dim=-1)
        target_tensor = torch.from_numpy(targets).to(device)
        picked = log_probs.gather(-1, target_tensor.unsqueeze(-1)).squeeze(-1) / math.log(2)
        hits = logits.argmax(-1) == target_tensor
        picked, hits = picked.cpu().numpy(), hits.cpu().numpy()
        for row, start in enumerate(batch_starts):
            offset = max(scored_until - start, 0)
            log2_probs[start + offset : start + length] = picked[row, offset:]
            correct[start + offset : start + length] = hits[row, offset:]
            scored_until = start + length
    return ByteScores(log2_probs, correct)

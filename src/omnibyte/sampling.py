"""Turning next-byte logits into sampled bytes, reproducibly per row.

Sampling is Gumbel-max with counter-based noise: the noise of byte ``v`` at step ``t`` of a row
is a hash of (the row's seed, ``t``, ``v``). A row's sample therefore depends only on its own
seed and logits, never on the batch it runs in or on a generator's position, so a batched sample
equals the same row sampled alone, and the whole draw stays on the device (no host sync, no
per-row generator calls).
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """An avalanching 32-bit integer hash of int64 ``x`` (values in [0, 2**32)). The multipliers
    are below 2**31, so every product stays below 2**63: no signed overflow in int64."""
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & _MASK32
    x = ((x ^ (x >> 15)) * 0x5BD1E995) & _MASK32
    return x ^ (x >> 16)


def row_uniforms(seeds: torch.Tensor, steps: torch.Tensor, width: int) -> torch.Tensor:
    """Uniforms in (0, 1), [B, S, width]: a pure function of (seed of the row, step, column).
    ``steps`` is [S] (the same steps for every row) or [B, S] (each row its own steps)."""
    seeds, steps = seeds.long(), steps.long().to(seeds.device)
    key = _hash32((seeds & _MASK32) ^ _hash32((seeds >> 32) & _MASK32))  # [B]
    step_keys = _hash32(steps & _MASK32)
    key = _hash32(key.unsqueeze(1) ^ (step_keys.unsqueeze(0) if step_keys.dim() == 1 else step_keys))  # [B, S]
    columns = _hash32(torch.arange(width, device=seeds.device, dtype=torch.long) + 0x9E37)
    bits = _hash32(key.unsqueeze(2) ^ columns) >> 8  # 24 random bits
    return (bits.float() + 0.5) / float(1 << 24)


def gumbel(uniforms: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise from uniforms in (0, 1)."""
    return -torch.log(-torch.log(uniforms))


class GumbelNoise:
    """Per-row Gumbel noise for sampling step after step, computed ``block`` steps at a time
    (a few dozen small kernels per block instead of per byte)."""

    def __init__(self, seeds: torch.Tensor, width: int = 256, block: int = 256):
        self.seeds, self.width, self.block = seeds, width, block
        self.first, self.table = -1, None

    def __call__(self, step: int) -> torch.Tensor:
        """Noise [B, width] of ``step``."""
        if self.table is None or not self.first <= step < self.first + self.block:
            self.first = step - step % self.block
            steps = torch.arange(self.first, self.first + self.block)
            self.table = gumbel(row_uniforms(self.seeds, steps, self.width))
        return self.table[:, step - self.first]

    def at(self, steps: np.ndarray) -> torch.Tensor:
        """Noise [B, S, width] of each row's own ``steps`` [B, S] (host): the same values
        ``self(step)`` gives, for rows that have advanced by different amounts (speculative
        decoding). Steps inside one block are gathered from its table (one kernel instead of the
        hash's few dozen, which a verify call of a fast decoder would wait for)."""
        steps = np.asarray(steps, dtype=np.int64)
        first = int(steps.min()) - int(steps.min()) % self.block
        if int(steps.max()) >= first + self.block:  # straddles two blocks: hash them directly
            return gumbel(row_uniforms(self.seeds, torch.from_numpy(steps).to(self.seeds.device), self.width))
        self(first)  # the table of this block
        rows = torch.arange(steps.shape[0], device=self.seeds.device).unsqueeze(1)
        return self.table[rows, torch.from_numpy(steps - first).to(self.seeds.device)]


def check_sampling_options(temperature: float, top_k: int | None = None, top_p: float | None = None) -> None:
    """ValueError for options that would otherwise be ignored or sample garbage: a NaN or
    negative temperature, ``top_k`` < 1 and ``top_p`` outside (0, 1] (and NaN)."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature >= 0 \
            or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 (or None), got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be a number in (0, 1] (or None), got {top_p!r}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """``logits`` [B, V] with everything outside the top-k / top-p nucleus set to -inf."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probabilities = torch.softmax(sorted_logits, dim=-1)
        # keep the smallest prefix whose mass reaches top_p (the first byte always stays)
        drop_sorted = probabilities.cumsum(dim=-1) - probabilities >= top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One byte per row from ``logits`` [B, V]: greedy at temperature 0, else a draw from
    softmax(logits / temperature) restricted to top-k / top-p. ``noise`` [B, V] is the rows'
    Gumbel noise (``GumbelNoise``); without it the draw uses torch's global generator."""
    check_sampling_options(temperature, top_k, top_p)  # a few comparisons: nothing next to a model step
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(dim=-1)
    if noise is None:
        noise = gumbel(torch.rand_like(logits).clamp(1e-10, 1 - 1e-7))
    logits = filter_logits(logits / temperature, top_k, top_p)
    return (logits + noise).argmax(dim=-1)

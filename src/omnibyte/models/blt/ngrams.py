"""Hash n-gram ids of the BLT's byte embeddings, shared by the model and its decoder."""
from __future__ import annotations

import torch

from omnibyte.models.base import INPUT_VOCAB

NGRAM_PAD = INPUT_VOCAB  # stands for the tokens before a sequence's first one
HASH_BASE = 1_000_003
HASH_MODULUS = 2**31 - 1  # a Mersenne prime: products stay far inside int64


def ngram_ids(tokens: torch.Tensor, history: torch.Tensor | None, sizes: list[int], buckets: int) -> torch.Tensor:
    """Row of the n-gram table of every position and n: [B, T, len(sizes)].

    For each ``n`` a rolling polynomial hash (base ``HASH_BASE`` modulo ``HASH_MODULUS``, oldest
    token first) of the ``n`` tokens ending at ``t``, then modulo ``buckets``; table ``k``'s rows
    follow the ``k`` tables before it. ``history`` [B, >= max(sizes) - 1] holds the tokens
    before ``tokens`` (a decoder's last ones); None: ``NGRAM_PAD`` stands for them."""
    batch, length = tokens.shape
    before = max(sizes) - 1
    if history is None:
        history = tokens.new_full((batch, before), NGRAM_PAD)
    window = torch.cat((history[:, history.shape[1] - before:], tokens), dim=1)
    ids = []
    for table, n in enumerate(sizes):
        value = torch.zeros_like(tokens)
        for offset in range(before - n + 1, before + 1):
            value = (value * HASH_BASE + window[:, offset : offset + length]) % HASH_MODULUS
        ids.append(value % buckets + table * buckets)
    return torch.stack(ids, dim=-1)

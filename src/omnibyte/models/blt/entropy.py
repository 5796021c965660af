"""The entropy model: a small byte model whose next-byte entropy decides where patches start.

Any omnibyte next-byte model serves (a ``tiny`` flat model is the usual choice), trained with
the normal trainer and saved as its own run folder (docs/blt.md gives the recipe);
``load_entropy_model(run_dir)`` reads it. ``EntropyModel`` keeps it frozen and in eval mode.

Layout: ``entropies(tokens)[b, t]`` is the entropy in bits of the model's prediction of
``tokens[b, t]`` from the tokens before it (0 at position 0, which nothing predicts): the
entropy of the byte *about to be* seen, which is what the patchers read.

Long inputs: the model sees at most ``window`` tokens (its context). Past that, position ``t``
is predicted from the tokens since ``max(0, (t // h - 1) * h)``, ``h = window // 2``: between
``h`` and ``2h - 1`` tokens of history, the same whether computed by a full forward or
incrementally, where the decoder re-reads the last ``h`` tokens every ``h`` tokens.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from omnibyte.models.base import BOS, ByteModel

LN2 = math.log(2.0)
WINDOW_TOKENS_PER_FORWARD = 2**16  # long inputs: windows run in batches of about this many tokens


def entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (bits) of the softmax of ``logits`` [..., V], in float32: [...]."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1) / LN2


def window_start(position: np.ndarray | int, half: int) -> np.ndarray | int:
    """First token the model sees when it predicts the token at ``position``."""
    return np.maximum(0, (np.asarray(position) // half - 1) * half)


class EntropyModel(nn.Module):
    """A frozen next-byte model that gives the entropy of each next byte.

    An ``nn.Module`` so that ``.to(device)`` and ``state_dict`` carry it along with a model that
    holds it; its weights never train (``requires_grad`` off) and it stays in eval mode
    whatever ``train()`` says."""

    def __init__(self, model: ByteModel):
        super().__init__()
        self.model = model
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> "EntropyModel":
        super().train(False)  # frozen: dropout and friends stay off
        return self

    @property
    def window(self) -> int:
        """Tokens the model sees at once (its context)."""
        return self.model.max_seq_len

    @torch.no_grad()
    def entropies(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] -> entropies [B, T] in bits (see the module docstring for the layout)."""
        batch, length = tokens.shape
        if length <= self.window:
            return self._shifted(tokens)
        # window j >= 1 holds tokens [(j-1)h, (j+1)h): its second half is block j's positions
        # (the first window gives blocks 0 and 1); all windows run as one batch, in chunks
        half = self.window // 2
        blocks = -(-length // half)
        padded = torch.full((batch, blocks * half), BOS, dtype=tokens.dtype, device=tokens.device)
        padded[:, :length] = tokens
        windows = padded.unfold(1, 2 * half, half).reshape(-1, 2 * half)  # [B * (blocks - 1), 2h]
        per_chunk = max(1, WINDOW_TOKENS_PER_FORWARD // (2 * half))
        entropies = torch.cat([self._shifted(windows[i : i + per_chunk])
                               for i in range(0, len(windows), per_chunk)]).view(batch, blocks - 1, 2 * half)
        return torch.cat((entropies[:, 0, :half], entropies[:, :, half:].reshape(batch, -1)), dim=1)[:, :length]

    def _shifted(self, tokens: torch.Tensor) -> torch.Tensor:
        """Entropies of one window: the prediction after token t-1, placed at t."""
        out = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
        if tokens.shape[1] > 1:
            out[:, 1:] = entropy_bits(self.model(tokens[:, :-1]))
        return out

    def decoder(self, batch_size: int, max_len: int, fast: bool = False, compile: bool = False) -> "EntropyDecoder":
        return EntropyDecoder(self, batch_size, max_len, fast, compile)


class EntropyDecoder:
    """Incremental entropies per row, on the model's shared decoder protocol.

    ``prefill(tokens, lengths)`` appends ragged prompts and returns the entropy of each of
    their tokens [B, T] (as ``EntropyModel.entropies`` lays them out, continuing each row's
    history); ``step(tokens [B])`` appends one token per row; ``next`` [B] always holds the
    entropy of the byte each row is about to see; ``reset(rows)`` restarts rows. A row's
    tokens are kept (``capacity`` of them) so that a prefill and the re-reading of long
    inputs see the same history as a full forward."""

    def __init__(self, entropy_model: EntropyModel, batch_size: int, max_len: int, fast: bool = False,
                 compile: bool = False):
        self.entropy_model = entropy_model
        self.batch_size, self.capacity = batch_size, max_len
        self.half = entropy_model.window // 2
        device = entropy_model.model.device
        self.device = device
        self.inner = entropy_model.model.decoder(batch_size, min(max_len, entropy_model.window), fast=fast,
                                                 compile=compile)
        self.history = torch.full((batch_size, max_len), BOS, dtype=torch.long, device=device)
        self.lengths = np.zeros(batch_size, dtype=np.int64)  # tokens seen per row
        self.device_lengths = torch.zeros(batch_size, dtype=torch.long, device=device)  # the same, for steps
        self.held_from = np.zeros(batch_size, dtype=np.int64)  # first token the inner decoder holds
        self.next = torch.zeros(batch_size, dtype=torch.float32, device=device)
        self.rows = torch.arange(batch_size, device=device)

    def reset(self, rows=None) -> None:
        chosen = np.ones(self.batch_size, dtype=bool) if rows is None else np.zeros(self.batch_size, dtype=bool)
        if rows is not None:
            chosen[np.asarray(rows, dtype=np.int64)] = True
        self.inner.reset(np.flatnonzero(chosen).tolist())
        self.lengths[chosen] = 0
        self.held_from[chosen] = 0
        chosen_rows = torch.from_numpy(chosen).to(self.device)
        self.device_lengths.masked_fill_(chosen_rows, 0)
        self.next.masked_fill_(chosen_rows, 0.0)

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor, lengths=None) -> torch.Tensor:
        """tokens [B, T], lengths [B] (default all T) -> entropies [B, T] of those tokens
        (0 past a row's length)."""
        width = tokens.shape[1]
        counts = np.full(self.batch_size, width, np.int64) if lengths is None else np.asarray(lengths, np.int64)
        if (self.lengths + counts > self.capacity).any():
            raise ValueError(f"context of {self.capacity} tokens exceeded")
        tokens = tokens.to(self.device)
        starts = self.lengths.copy()
        for row in np.flatnonzero(counts):  # a prefill is rare: one copy per row
            self.history[row, starts[row] : starts[row] + counts[row]] = tokens[row, : counts[row]]
        self.lengths += counts
        self.device_lengths.add_(torch.from_numpy(counts).to(self.device))
        # entropies of the new tokens: one full forward over each row's history (a prefill is
        # rare and the entropy model small), read at the new positions
        longest = int(self.lengths.max())
        full = self.entropy_model.entropies(self.history[:, :longest])
        offsets = torch.arange(width, device=self.device).unsqueeze(0)
        positions = (torch.from_numpy(starts).to(self.device).unsqueeze(1) + offsets).clamp_max(max(longest - 1, 0))
        valid = offsets < torch.from_numpy(counts).to(self.device).unsqueeze(1)
        out = torch.where(valid, full.gather(1, positions), 0.0)
        self._reread(counts > 0)
        return out

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row; the entropy of each row's next byte [B]."""
        if (self.lengths + 1 > self.capacity).any():
            raise ValueError(f"context of {self.capacity} tokens exceeded")
        tokens = tokens.to(self.device)
        self.history[self.rows, self.device_lengths] = tokens  # no host-to-device copy per step
        self.device_lengths.add_(1)
        self.lengths += 1
        moving = window_start(self.lengths, self.half) > self.held_from  # their window moves on
        if not moving.any():
            self.next = entropy_bits(self.inner.step(tokens))
            return self.next
        staying = ~moving
        if staying.any():
            logits = self.inner.prefill(tokens.unsqueeze(1), staying.astype(np.int64))
            self.next = torch.where(torch.from_numpy(staying).to(self.device), entropy_bits(logits), self.next)
        self._reread(moving)
        return self.next

    def _reread(self, chosen: np.ndarray) -> None:
        """Refill the inner decoder of the ``chosen`` rows with their current window."""
        if not chosen.any():
            return
        first = np.where(chosen, window_start(self.lengths, self.half), 0)
        counts = np.where(chosen, self.lengths - first, 0)
        self.inner.reset(np.flatnonzero(chosen).tolist())
        width = int(counts.max())
        gather = (torch.from_numpy(first).to(self.device).unsqueeze(1)
                  + torch.arange(width, device=self.device)).clamp_max(self.capacity - 1)
        logits = self.inner.prefill(self.history.gather(1, gather), counts)
        self.next = torch.where(torch.from_numpy(chosen).to(self.device), entropy_bits(logits), self.next)
        self.held_from = np.where(chosen, first, self.held_from)


def load_entropy_model(run_dir: str | Path, device: str | torch.device = "cpu") -> EntropyModel:
    """The next-byte model saved in ``run_dir`` (a model or a training run folder), frozen."""
    from omnibyte.errors import OmnibyteError
    from omnibyte.models.serialization import load_model, read_config  # here: serialization imports the registry

    task = read_config(run_dir).get("task", {"name": "next-byte"})
    name = task.get("name") if isinstance(task, dict) else task
    if name != "next-byte":
        raise OmnibyteError(f"{run_dir}: an entropy model must be a next-byte model, this one was trained for {name!r}")
    return EntropyModel(load_model(run_dir, device))

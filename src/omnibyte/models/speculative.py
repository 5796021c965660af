"""Speculative decoding with drafts from the context itself (prompt lookup / n-gram self-drafting).

Each round, every row proposes up to ``max_draft`` bytes by finding the most recent earlier
occurrence of its last few bytes in its own text (prompt + generated) and copying what followed.
The model verifies a row's pending byte and its whole draft in one cached call
(``Decoder.extend``), which returns the logits at every appended position; the rejected tail is
dropped again with ``Decoder.rewind``.

Why the output is exactly what plain decoding samples, at any temperature: sampling is
Gumbel-max with counter-based noise (``omnibyte.sampling``), so the byte plain decoding emits at
step ``t`` of a row is a deterministic function ``f(logits_t, noise(seed, t))``. Verification
computes, for each draft position, the byte ``s_t = f(logits_t, noise(seed, t))`` from the logits
after the text up to ``t``, and accepts the draft byte only while it equals ``s_t``; at the first
mismatch it emits ``s_t`` itself, and when the whole draft is accepted it emits the byte sampled
from the logits after the draft (a free extra byte). Every emitted byte is therefore ``s_t``,
computed from the logits of exactly the text plain decoding would have at step ``t`` and with the
same noise: the emitted sequence is the plain sample itself (not merely one with the same
distribution), and so its distribution is unchanged. Drafts only decide how many steps are
checked per model call. The one caveat is floating point: the verify call computes the logits
with differently shaped kernels than a one-token step, so logits agree to rounding (float32:
~1e-6), and a near-tie of two bytes could, rarely, resolve differently from the eager step.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import torch

from omnibyte.sampling import GumbelNoise


class VerifyingDecoder(Protocol):
    """What speculation needs of a ``base.Decoder`` with ``supports_speculation`` (named here
    because base.py imports this module)."""

    device: torch.device

    def step(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def extend(self, tokens: torch.Tensor, lengths: Sequence[int] | np.ndarray) -> torch.Tensor: ...

    def rewind(self, counts: Sequence[int] | np.ndarray) -> None: ...

MAX_NGRAM = 4  # longest suffix looked up in the context
MAX_DRAFT = 8  # bytes proposed per round


def draft_from_context(text: bytes, max_ngram: int = MAX_NGRAM, max_draft: int = MAX_DRAFT) -> bytes:
    """Up to ``max_draft`` bytes that may follow ``text``: for ``n`` from ``max_ngram`` down to
    1, find the most recent earlier occurrence of the last ``n`` bytes and copy what followed it;
    ``b""`` when no suffix occurs earlier. The copy may run past the end of ``text`` into the
    bytes it has just copied (an overlapping copy, as in LZ77), so a period shorter than the
    draft (``abcabc``) still yields a full draft."""
    if max_draft < 1:
        return b""
    for n in range(min(max_ngram, len(text) - 1), 0, -1):
        # an occurrence inside text[:-1] starts before the suffix itself does
        start = text.rfind(text[-n:], 0, len(text) - 1)
        if start < 0:
            continue
        source = start + n
        draft = bytearray()
        for offset in range(max_draft):
            position = source + offset
            draft.append(text[position] if position < len(text) else draft[position - len(text)])
        return bytes(draft)
    return b""


@dataclasses.dataclass
class SpeculationStats:
    """What a speculative run did: model calls, bytes drafted and accepted, bytes emitted."""

    calls: int = 0  # model calls after the prefill (verify calls and plain steps)
    drafted: int = 0
    accepted: int = 0
    emitted: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def bytes_per_call(self) -> float:
        return self.emitted / self.calls if self.calls else 0.0


def accepted_lengths(drafts: np.ndarray, draft_lengths: np.ndarray, sampled: np.ndarray) -> np.ndarray:
    """Leading draft bytes of each row that equal the bytes sampled at their positions:
    ``drafts`` [B, K] (valid up to ``draft_lengths`` [B]), ``sampled`` [B, >= K]."""
    width = drafts.shape[1]
    valid = np.arange(width)[None, :] < draft_lengths[:, None]
    matches = (drafts == sampled[:, :width]) & valid
    return np.cumprod(matches, axis=1).sum(axis=1).astype(np.int64)


def draft_rows(texts: list[bytearray], room: np.ndarray, max_ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """Every row's draft of at most ``room[b]`` bytes, as a [B, longest] array padded with 0,
    and the drafts' lengths [B]."""
    found = [draft_from_context(bytes(text), max_ngram, int(limit)) if limit > 0 else b""
             for text, limit in zip(texts, room)]
    lengths = np.array([len(draft) for draft in found], np.int64)
    drafts = np.zeros((len(found), int(lengths.max())), np.int64)
    for row, draft in enumerate(found):
        drafts[row, : len(draft)] = np.frombuffer(draft, np.uint8)
    return drafts, lengths


def speculative_steps(
    decoder: VerifyingDecoder,
    prompts: list[bytes],
    first_logits: torch.Tensor,
    max_new_bytes: int,
    sample: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    noise: GumbelNoise,
    stats: SpeculationStats | None = None,
    max_ngram: int = MAX_NGRAM,
    max_draft: int = MAX_DRAFT,
) -> Iterator[list[bytes]]:
    """Yield each round's new bytes of every row (rows advance by different amounts, a finished
    row yields ``b""``) until every row holds ``max_new_bytes``. ``decoder`` has been prefilled
    with the prompts and returned ``first_logits`` [B, 256]; ``sample(logits [N, 256], noise
    [N, 256])`` is the plain sampler. A round in which no row has a draft is a plain ``step``."""
    stats = stats if stats is not None else SpeculationStats()
    rows = len(prompts)
    if max_new_bytes == 0:
        return
    device = decoder.device
    texts = [bytearray(prompt) for prompt in prompts]
    # byte 0 of every row comes straight from the prefill's logits, as in plain decoding
    pending = sample(first_logits, noise(0)).to("cpu").numpy()
    produced = np.ones(rows, np.int64)  # bytes decided per row (the pending one included)
    for row in range(rows):
        texts[row].append(int(pending[row]))
    stats.emitted += rows
    yield [bytes([int(byte)]) for byte in pending]
    while (produced < max_new_bytes).any():
        active = produced < max_new_bytes
        # at most remaining - 1 drafts: accepted drafts + the correction fit in what is left
        room = np.where(active, np.minimum(max_draft, max_new_bytes - produced - 1), 0)
        drafts, draft_lengths = draft_rows(texts, room, max_ngram)
        stats.calls += 1
        width = drafts.shape[1]
        if width == 0 and active.all():  # nothing to verify: a plain step (the fast path's graph)
            logits = decoder.step(torch.from_numpy(pending).to(device)).unsqueeze(1)
        else:  # finished rows append nothing
            tokens = np.concatenate([pending[:, None], drafts], axis=1)
            counts = np.where(active, 1 + draft_lengths, 0)
            logits = decoder.extend(torch.from_numpy(tokens).to(device), counts)  # [B, 1 + width, 256]
        # the byte at position j of this call is step produced + j of its row
        steps = produced[:, None] + np.arange(logits.shape[1])[None, :]
        flat_noise = noise.at(steps).reshape(-1, logits.shape[-1])
        sampled = sample(logits.reshape(-1, logits.shape[-1]), flat_noise).view(rows, -1).to("cpu").numpy()
        accepted = accepted_lengths(drafts, draft_lengths, sampled)
        if width:
            decoder.rewind(draft_lengths - accepted)  # the rejected drafts (0 for finished rows)
        stats.drafted += int(draft_lengths.sum())
        stats.accepted += int(accepted.sum())
        news = []
        for row in range(rows):
            if not active[row]:
                news.append(b"")
                continue
            # accepted drafts equal the sampled bytes, so the new bytes are sampled[: accepted + 1]
            new = sampled[row, : accepted[row] + 1].astype(np.uint8).tobytes()
            texts[row] += new
            pending[row] = sampled[row, accepted[row]]
            news.append(new)
        produced += np.where(active, accepted + 1, 0)
        stats.emitted += int(np.where(active, accepted + 1, 0).sum())
        yield news

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
import time
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import torch

from omnibyte.sampling import GumbelNoise, gumbel, row_uniforms


class VerifyingDecoder(Protocol):
    """What speculation needs of a ``base.Decoder`` with ``supports_speculation`` (named here
    because base.py imports this module)."""

    device: torch.device

    def step(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def extend(self, tokens: torch.Tensor, lengths: Sequence[int] | np.ndarray) -> torch.Tensor: ...

    def rewind(self, counts: Sequence[int] | np.ndarray) -> None: ...

MAX_NGRAM = 4  # longest suffix looked up in the context
MAX_DRAFT = 8  # bytes proposed per round
# Rounds of drafts pay only while they emit bytes faster than plain steps would: a verify round
# costs about two plain steps on a GPU (the graph replay, then the host's work between rounds:
# bench/RESULTS.md, issue 13 s19), and it depends on the device and the model, so ``Pace``
# measures both rates as it goes. Plain steps are first tried when rounds accept fewer than MIN_ACCEPTED_PER_ROUND
# drafted bytes on average; from then on the faster way is taken, PLAIN_BLOCK steps at a time
# (no host round trip between them), with one round of drafts (a probe) after each stretch of
# blocks to follow the text.
MIN_ACCEPTED_PER_ROUND = 1.0
PLAIN_BLOCK = 16
# a probe round that loses to plain steps doubles the plain blocks before the next probe, up to
# this many (a probe costs about two plain steps: every block, 1/8 of the time; every 16, 1/128)
MAX_BLOCKS_BETWEEN_PROBES = 16
MEMORY = 0.75  # weight of the past in the running means: a few bad rounds do not switch
CLOCK = time.perf_counter


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
    plain_steps: int = 0  # steps of plain blocks, taken where they were faster than drafts (``Pace``)

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
    [N, 256])`` is the plain sampler. A round in which no row has a draft is a plain ``step``.
    Where plain steps emit bytes faster than rounds of drafts (``Pace``), every row decodes
    blocks of ``PLAIN_BLOCK`` plain steps, with a round of drafts after each stretch of blocks."""
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
    pace = Pace()
    while (produced < max_new_bytes).any():
        started = CLOCK()
        active = produced < max_new_bytes
        block = min(PLAIN_BLOCK, int((max_new_bytes - produced).min()) - 1)
        if pace.plain_next() and active.all() and block >= 2:
            news = plain_block(decoder, pending, produced, block, sample, noise)
            for row in range(rows):
                texts[row] += news[row].tobytes()
            pending = news[:, -1].astype(pending.dtype)
            produced += block
            stats.calls += block
            stats.plain_steps += block
            stats.emitted += rows * block
            pace.plain_block_done(CLOCK() - started, rows * block)
            yield [news[row].tobytes() for row in range(rows)]
            continue
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
        if width:
            pace.round_done(CLOCK() - started, int(np.where(active, accepted + 1, 0).sum()),
                            float(accepted[active].mean()))
        yield news


class Pace:
    """Whether the next stretch is better decoded by a round of drafts or a block of plain steps,
    from the seconds per emitted byte each has taken lately (running means). Only the speed
    depends on it: both ways emit the very bytes plain decoding samples."""

    def __init__(self) -> None:
        self.round_seconds_per_byte: float | None = None
        self.step_seconds_per_byte: float | None = None
        self.accepted_per_round = 2 * MIN_ACCEPTED_PER_ROUND  # draft first; a few bad rounds try plain
        self.probe = False  # after plain blocks, one round of drafts
        self.blocks_between_probes = 1  # doubled by every probe that loses, back to 1 when one wins
        self.blocks_since_probe = 0

    @staticmethod
    def _mean(old: float | None, new: float) -> float:
        return new if old is None else MEMORY * old + (1 - MEMORY) * new

    def plain_next(self) -> bool:
        if self.probe:
            return False
        if self.step_seconds_per_byte is None or self.round_seconds_per_byte is None:
            return self.accepted_per_round < MIN_ACCEPTED_PER_ROUND  # time to measure plain steps
        return self.step_seconds_per_byte < self.round_seconds_per_byte

    def round_done(self, seconds: float, emitted: int, accepted: float) -> None:
        per_byte = seconds / max(emitted, 1)
        won = self.step_seconds_per_byte is not None and per_byte < self.step_seconds_per_byte
        if self.probe and won:
            self.round_seconds_per_byte = per_byte  # the probe beat plain steps: draft again at once
            self.blocks_between_probes = 1
        else:
            self.round_seconds_per_byte = self._mean(self.round_seconds_per_byte, per_byte)
            if self.probe:  # text where drafts keep losing: probe it less and less often
                self.blocks_between_probes = min(2 * self.blocks_between_probes, MAX_BLOCKS_BETWEEN_PROBES)
        self.accepted_per_round = self._mean(self.accepted_per_round, accepted)
        self.probe = False

    def plain_block_done(self, seconds: float, emitted: int) -> None:
        self.step_seconds_per_byte = self._mean(self.step_seconds_per_byte, seconds / emitted)
        self.blocks_since_probe += 1
        if self.blocks_since_probe >= self.blocks_between_probes:
            self.probe, self.blocks_since_probe = True, 0


def plain_block(decoder: VerifyingDecoder, pending: np.ndarray, produced: np.ndarray, count: int,
                sample: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: GumbelNoise) -> np.ndarray:
    """``count`` plain steps of every row from its ``pending`` byte, sampled on the device with
    the noise of each row's own steps (``produced`` [B] bytes decided so far): the bytes [B,
    count] (uint8), read back once at the end."""
    block_noise = noise.at(produced[:, None] + np.arange(count)[None, :])  # [B, count, 256]
    tokens = torch.from_numpy(pending.astype(np.int64)).to(decoder.device)
    sampled = []
    for offset in range(count):
        tokens = sample(decoder.step(tokens), block_noise[:, offset])
        sampled.append(tokens)
    return torch.stack(sampled, dim=1).to("cpu", torch.uint8).numpy()


# ---- whole rounds on the device -------------------------------------------------------------
# A fast decoder that supports them runs its rounds on the device (``DeviceRounds``, see
# ``rounds_on_device``); benches set this False to time the host's rounds (``speculative_steps``,
# with ``Pace``) against them.
ROUNDS_ON_DEVICE = True
# Rounds replayed between two reads of the rows' progress: few enough that a stream's bytes come
# out every few milliseconds, many enough that the host's read (a sync) is rare.
MAX_ROUNDS_PER_READ = 64


def rounds_on_device(decoder, fast: bool, compile: bool, temperature: float) -> bool:
    """Whether speculation runs its rounds on the device (``DeviceRounds``) rather than on the
    host (``speculative_steps``). Uncompiled, a device round adds about a hundred small kernels
    (drafting, noise, acceptance) to the verify call: with greedy decoding's many accepted drafts
    that still beats the host's rounds (H200, ``small``: 4,164 against 3,635 bytes/s), but when
    sampling, where few drafts are accepted, the host's ``Pace`` falls back to plain steps and
    wins (1,733 against 1,425). Compiled, those kernels fuse (a round's graph then costs what a
    plain step's does: 0.346 against 0.340 ms) and device rounds win at both temperatures (7,720
    and 3,130 bytes/s against plain steps' 2,521 and 2,507): bench/RESULTS.md, issue 13, s21."""
    return (ROUNDS_ON_DEVICE and fast and getattr(decoder, "supports_device_rounds", False)
            and (compile or temperature <= 0))


def device_drafts(text: torch.Tensor, lengths: torch.Tensor, max_ngram: int = MAX_NGRAM
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``draft_from_context`` for every row at once, in tensor operations (capturable in a CUDA
    graph): ``text`` [B, W] holds row ``b``'s bytes in its first ``lengths[b]`` columns. Returns
    where each row's draft starts copying (``source`` [B], the column after the most recent
    earlier occurrence of its longest suffix of at most ``max_ngram`` bytes that occurs) and
    whether one occurs (``found`` [B]). The draft's byte ``j`` is ``text[source + j % (lengths -
    source)]`` (``draft_bytes``): the overlapping copy of ``draft_from_context``."""
    width = text.shape[1]
    offsets = torch.arange(max_ngram, device=text.device)  # k: the byte k before the last
    last = (lengths - 1).view(-1, 1, 1)  # the column of each row's last byte
    suffix = text.gather(1, (last.view(-1, 1) - offsets).clamp_min(0))  # [B, N]: text[last - k]
    # before[b, e, k] = text[b, e - k] (-1 before the start): all suffix lengths in one pass
    before = torch.nn.functional.pad(text, (max_ngram - 1, 0), value=-1).unfold(1, max_ngram, 1).flip(-1)
    # matches[b, e, k]: the k + 1 bytes ending at column e equal the row's last k + 1 bytes
    matches = (before == suffix.unsqueeze(1)).to(torch.uint8).cumprod(dim=2).bool()
    columns = torch.arange(width, device=text.device).view(1, -1, 1)
    # an occurrence ends before the last byte, starts at column >= 0, and n < the row's length
    allowed = (columns >= offsets) & (columns < last) & (last > offsets)
    ends = torch.where(matches & allowed, columns, -1).amax(dim=1)  # [B, N]: the latest end per length
    # a suffix that occurs has shorter suffixes that occur too: the found lengths are a prefix
    found = ends >= 0
    longest = (found.sum(dim=1, keepdim=True) - 1).clamp_min(0)
    best_end = torch.where(found[:, 0], ends.gather(1, longest).squeeze(1), -1)
    return best_end + 1, best_end >= 0


def draft_bytes(text: torch.Tensor, lengths: torch.Tensor, source: torch.Tensor, width: int) -> torch.Tensor:
    """The ``width`` bytes each row's draft copies from ``source`` [B] on ([B, width]), running
    on past the row's end by repeating its last ``lengths - source`` bytes."""
    period = (lengths - source).clamp_min(1).unsqueeze(1)
    columns = source.unsqueeze(1) + torch.arange(width, device=text.device).unsqueeze(0) % period
    return text.gather(1, columns.clamp(0, text.shape[1] - 1))


class DeviceRounds:
    """Speculative decoding with every round on the device: each row drafts from its own text
    (``device_drafts``), the decoder verifies the pending byte and the draft in one call, the
    bytes are sampled with each row's own noise and the accepted drafts kept, all in one piece
    that a fast decoder captures as one CUDA graph. The host replays it round after round and
    only reads the rows' progress now and then, so the host's work no longer sits between two
    rounds (it did in ``speculative_steps``: 0.6-0.8 ms a round on the H200, more than the
    verify call). The bytes are those ``speculative_steps`` emits, that is plain decoding's:
    the same drafter, the same acceptance rule and the same noise of each row's own steps."""

    def __init__(self, decoder, prompts: list[bytes], first: torch.Tensor, max_new_bytes: int,
                 sample: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], seeds: torch.Tensor,
                 noisy: bool = True, max_ngram: int = MAX_NGRAM, max_draft: int = MAX_DRAFT):
        device = decoder.device
        rows, longest = len(prompts), max(len(prompt) for prompt in prompts)
        # ``noisy``: the sampler reads the noise (greedy decoding does not: no noise is made)
        self.decoder, self.sample, self.seeds, self.noisy = decoder, sample, seeds, noisy
        self.max_new_bytes, self.max_ngram, self.max_draft = max_new_bytes, max_ngram, max_draft
        width = max_draft + 1  # the pending byte and the draft
        self.columns = torch.arange(width, device=device).unsqueeze(0)
        # texts (prompt + bytes so far) and the bytes out, each with a last column that takes the
        # writes of bytes not kept (a write of static shape, as in the cache)
        self.text_sink = longest + max_new_bytes + width
        self.text = torch.zeros(rows, self.text_sink + 1, dtype=torch.long, device=device)
        texts = np.zeros((rows, longest), np.int64)
        for row, prompt in enumerate(prompts):
            texts[row, : len(prompt)] = np.frombuffer(prompt, np.uint8)
        self.text[:, :longest] = torch.from_numpy(texts).to(device)
        self.text_lengths = torch.tensor([len(prompt) for prompt in prompts], dtype=torch.long, device=device)
        self.out_sink = max_new_bytes + width
        self.out = torch.zeros(rows, self.out_sink + 1, dtype=torch.long, device=device)
        self.produced = torch.zeros(rows, dtype=torch.long, device=device)
        self.pending = torch.zeros(rows, dtype=torch.long, device=device)
        self.drafted = torch.zeros(rows, dtype=torch.long, device=device)
        self.accepted = torch.zeros(rows, dtype=torch.long, device=device)
        self._keep(first.long(), torch.ones(rows, dtype=torch.long, device=device))
        self.pending.copy_(first.long())
        state = [self.text, self.text_lengths, self.out, self.produced, self.pending, self.drafted, self.accepted]
        saved = [tensor.clone() for tensor in state]

        def restore() -> None:  # capturing runs the round: put everything back (the decoder restores its own)
            for tensor, value in zip(state, saved):
                tensor.copy_(value)

        decoder.add_piece("round", self._round, restore)

    def _keep(self, new: torch.Tensor, counts: torch.Tensor) -> None:
        """Append each row's first ``counts[b]`` bytes of ``new`` [B, W] to its text and output."""
        new = new if new.dim() == 2 else new.unsqueeze(1)
        kept = self.columns[:, : new.shape[1]] < counts.unsqueeze(1)
        self.text.scatter_(1, torch.where(kept, self.text_lengths.unsqueeze(1) + self.columns[:, : new.shape[1]],
                                          self.text_sink), new)
        self.out.scatter_(1, torch.where(kept, self.produced.unsqueeze(1) + self.columns[:, : new.shape[1]],
                                         self.out_sink), new)
        self.text_lengths.add_(counts)
        self.produced.add_(counts)

    def _round(self) -> None:
        """One round of every row that still has bytes to make; finished rows append nothing."""
        active = self.produced < self.max_new_bytes
        # drafts + the correction fit in what is left (as in speculative_steps)
        room = (self.max_new_bytes - self.produced - 1).clamp(0, self.max_draft)
        source, found = device_drafts(self.text, self.text_lengths, self.max_ngram)
        drafts = draft_bytes(self.text, self.text_lengths, source, self.max_draft)
        draft_lengths = torch.where(found & active, room, 0)
        counts = torch.where(active, draft_lengths + 1, 0)
        tokens = torch.cat([self.pending.unsqueeze(1), drafts], dim=1)
        logits = self.decoder.verify_on_device(tokens, self.columns < counts.unsqueeze(1))
        vocab = logits.shape[-1]
        noise = gumbel(row_uniforms(self.seeds, self.produced.unsqueeze(1) + self.columns, vocab)).view(-1, vocab) \
            if self.noisy else None
        sampled = self.sample(logits.reshape(-1, vocab), noise).view(tokens.shape)
        matches = (drafts == sampled[:, : self.max_draft]) & (self.columns[:, : self.max_draft] < draft_lengths.unsqueeze(1))
        accepted = matches.long().cumprod(dim=1).sum(dim=1)
        self.decoder.rewind_on_device(draft_lengths - accepted)
        self.drafted.add_(draft_lengths)
        self.accepted.add_(accepted)
        self.pending.copy_(torch.where(active, sampled.gather(1, accepted.unsqueeze(1)).squeeze(1), self.pending))
        self._keep(sampled, torch.where(active, accepted + 1, 0))

    def run(self, stats: SpeculationStats | None = None) -> Iterator[list[bytes]]:
        """Yield the new bytes of every row at each read of the progress until every row holds
        ``max_new_bytes`` (rows advance by different amounts; a finished row yields ``b""``)."""
        rows = self.out.shape[0]
        shown = np.zeros(rows, np.int64)
        rounds = 0
        while True:
            produced = self.produced.to("cpu").numpy().copy()  # on the CPU, .numpy() would alias the tensor
            start = int(shown.min())
            news = self.out[:, start: int(produced.max())].to("cpu", torch.uint8).numpy()
            yield [news[row, shown[row] - start: produced[row] - start].tobytes() for row in range(rows)]
            shown = produced
            if (produced >= self.max_new_bytes).all():
                break
            # no row emits more than max_draft + 1 bytes a round, so while this many rounds run the
            # slowest row still has bytes to make: no round is spent on finished rows alone
            remaining = int((self.max_new_bytes - produced).max())
            count = min(MAX_ROUNDS_PER_READ, -(-remaining // (self.max_draft + 1)))
            for _ in range(count):
                self.decoder.run_piece("round")
            rounds += count
        self.decoder.sync_lengths()
        if stats is not None:
            stats.calls += rounds
            stats.drafted += int(self.drafted.sum())
            stats.accepted += int(self.accepted.sum())
            stats.emitted += int(self.produced.sum())

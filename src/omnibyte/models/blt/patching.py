"""Patchers: where the patches of a byte sequence start (Byte Latent Transformer, SpaceByte).

Four schemes, one config (``PatchingConfig``, nested in the BLT config as ``patching``):

  * ``entropy``: a patch starts at ``t`` when the entropy model's next-byte entropy ``H_t``
    exceeds ``threshold`` bits (hard bytes start short patches, easy bytes share long ones);
  * ``monotonic``: a patch starts at ``t`` when the entropy rises by more than ``threshold``
    bits over the previous byte's (``H_t - H_{t-1} > threshold``);
  * ``fixed``: a patch starts every ``stride`` bytes;
  * ``space``: a patch starts at ``t`` when byte ``t-1`` is "space-like" (SpaceByte's rule):
    not an ASCII letter or digit. Bytes 0x80..0xFF (the bytes of UTF-8 multi-byte characters)
    count as letters, so a character is never cut and words of any script stay whole;
    SpaceByte counts UTF-8 lead bytes as space-like, which cuts accented Latin words after the
    lead byte of each accented letter.

``entropies[b, t]`` is the entropy (bits) of the entropy model's prediction of ``tokens[b, t]``
from ``tokens[b, :t]``: it is known before the byte is seen, so a decoder knows whether the
byte it is about to predict starts a patch (``EntropyModel.entropies`` returns this layout).

Rules shared by every scheme, applied in this order at each position ``t``, where ``run`` is
the number of tokens in the current patch so far:

  1. *hard starts*, whatever the sizes say: position 0 (a row's first token), every BOS token
     (id 256, a document start) and the token after a BOS. So a BOS is a patch of its own, as
     in Meta's BLT (whose patches always start at positions 0 and 1), and a document never
     shares a patch with the one before it;
  2. a *forced* start when the current patch holds ``max_patch_size`` tokens;
  3. the scheme's own start, only once the current patch holds ``min_patch_size`` tokens.

Padding: rows are scanned left to right, so whatever follows a row's real tokens never changes
that row's starts; the starts computed at padded positions are meaningless and callers ignore
them. The batch form ``patch_starts`` and the incremental ``PatchTracker`` give the same starts.

How the batch form avoids a loop over positions: from a start ``s`` the next start is
``f(s) = min(next hard start after s, next scheme start at or after s + min_patch_size,
s + max_patch_size)`` (for ``fixed`` the scheme start is ``s + max(stride, min_patch_size)``).
``f`` is computed for every ``s`` at once; the starts are the orbit ``0, f(0), f(f(0)), ...``,
which pointer doubling enumerates in ``log2(T)`` rounds of gathers, all on the device.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from omnibyte.models.base import BOS, BaseConfig
from omnibyte.models.validation import ConfigError, Limit

SCHEMES = ("entropy", "monotonic", "fixed", "space")
ENTROPY_SCHEMES = ("entropy", "monotonic")
MAX_ENTROPY_BITS = 8.0  # of a 256-way distribution; a rise is in [-8, 8]
MAX_PATCH_SIZE = 2**16


@dataclasses.dataclass
class PatchingConfig(BaseConfig):
    """Where patches start; see the module docstring for the rules."""

    LIMITS: ClassVar[dict[str, Limit]] = {
        "threshold": Limit(-MAX_ENTROPY_BITS, MAX_ENTROPY_BITS),
        "min_patch_size": Limit(1, MAX_PATCH_SIZE),
        "max_patch_size": Limit(1, MAX_PATCH_SIZE),
        "stride": Limit(1, MAX_PATCH_SIZE),
    }
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"scheme": SCHEMES}

    scheme: str = "entropy"
    threshold: float = 2.0  # bits: entropy above it (entropy) or rise above it (monotonic)
    min_patch_size: int = 1
    max_patch_size: int = 16  # a patch that reaches this length is closed
    stride: int = 4  # the fixed scheme's patch length

    def validate(self) -> None:
        super().validate()
        if self.min_patch_size > self.max_patch_size:
            raise ConfigError("min_patch_size", f"must not exceed max_patch_size ({self.max_patch_size}), "
                                                f"got {self.min_patch_size}")

    def describe(self) -> str:
        """One line for ``omnibyte info`` and ``omnibyte patches``."""
        sizes = f"patches of {self.min_patch_size}..{self.max_patch_size} bytes"
        if self.scheme == "entropy":
            return f"entropy > {self.threshold:g} bits, {sizes}"
        if self.scheme == "monotonic":
            return f"entropy rise > {self.threshold:g} bits, {sizes}"
        if self.scheme == "fixed":
            return f"fixed, every {self.stride} bytes, {sizes}"
        return f"space (after a byte that is not a letter or digit), {sizes}"


def needs_entropy(config: PatchingConfig) -> bool:
    """Whether the scheme reads the entropy model's entropies."""
    return config.scheme in ENTROPY_SCHEMES


def word_bytes(tokens: torch.Tensor) -> torch.Tensor:
    """True where a token is an ASCII letter or digit or a non-ASCII byte (not space-like);
    BOS (256) is space-like."""
    letters = ((tokens | 0x20) >= ord("a")) & ((tokens | 0x20) <= ord("z"))
    digits = (tokens >= ord("0")) & (tokens <= ord("9"))
    non_ascii = (tokens >= 0x80) & (tokens < BOS)
    return letters | digits | non_ascii


def _check_inputs(config: PatchingConfig, tokens: torch.Tensor, entropies: torch.Tensor | None) -> None:
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [batch, length], got shape {tuple(tokens.shape)}")
    if needs_entropy(config):
        if entropies is None:
            raise ValueError(f"the {config.scheme} patcher needs entropies")
        if entropies.shape != tokens.shape:
            raise ValueError(f"entropies {tuple(entropies.shape)} and tokens {tuple(tokens.shape)} differ in shape")


def _hard_starts(tokens: torch.Tensor) -> torch.Tensor:
    """Position 0, BOS tokens and the tokens after a BOS: [B, T]."""
    is_bos = tokens == BOS
    hard = is_bos.clone()
    hard[:, 0] = True
    hard[:, 1:] |= is_bos[:, :-1]
    return hard


def _scheme_starts(config: PatchingConfig, tokens: torch.Tensor, entropies: torch.Tensor | None) -> torch.Tensor:
    """Where the scheme itself would start a patch, before the size rules: [B, T]."""
    if config.scheme == "entropy":
        return entropies > config.threshold
    if config.scheme == "monotonic":
        rise = torch.zeros_like(entropies)
        rise[:, 1:] = entropies[:, 1:] - entropies[:, :-1]
        return rise > config.threshold
    if config.scheme == "space":
        wants = torch.zeros_like(tokens, dtype=torch.bool)
        wants[:, 1:] = ~word_bytes(tokens[:, :-1])
        return wants
    raise ValueError(f"the {config.scheme} scheme has no per-position starts")


def _next_at_or_after(marks: torch.Tensor) -> torch.Tensor:
    """[B, T] -> [B, T + 1]: the first position >= p where ``marks`` is true (T if none),
    for every p in 0..T."""
    batch, length = marks.shape
    positions = torch.arange(length, device=marks.device).expand(batch, length)
    sentinel = torch.full((batch, 1), length, dtype=torch.long, device=marks.device)
    candidates = torch.cat((torch.where(marks, positions, length), sentinel), dim=1)
    return candidates.flip(1).cummin(dim=1).values.flip(1)


def patch_starts(
    config: PatchingConfig, tokens: torch.Tensor, entropies: torch.Tensor | None = None
) -> torch.Tensor:
    """True at the first token of each patch: tokens [B, T] (and entropies [B, T] in bits for
    the entropy schemes) -> bool [B, T]. Position 0 always starts a patch."""
    _check_inputs(config, tokens, entropies)
    batch, length = tokens.shape
    device = tokens.device
    if length == 0:
        return torch.zeros_like(tokens, dtype=torch.bool)
    positions = torch.arange(length + 1, device=device).expand(batch, length + 1)  # s = 0..T (T: past the end)
    next_hard = _next_at_or_after(_hard_starts(tokens))
    after = (positions + 1).clamp_max(length)
    following = [next_hard.gather(1, after), positions + config.max_patch_size]
    if config.scheme == "fixed":
        following.append(positions + max(config.stride, config.min_patch_size))
    else:
        next_wanted = _next_at_or_after(_scheme_starts(config, tokens, entropies))
        following.append(next_wanted.gather(1, (positions + config.min_patch_size).clamp_max(length)))
    successor = torch.stack(following).amin(dim=0).clamp_max(length)  # f(s), with f(T) = T

    # the k-th start of a row is f^k(0): build f^(2^j) by doubling, then walk every k at once
    steps = torch.arange(length, device=device).expand(batch, length)  # k = 0..T-1 (at most T starts)
    orbit = torch.zeros((batch, length), dtype=torch.long, device=device)
    jump, bit = successor, 1
    while bit < length:
        take = (steps & bit) != 0
        orbit = torch.where(take, jump.gather(1, orbit), orbit)
        jump, bit = jump.gather(1, jump), bit * 2
    starts = torch.zeros((batch, length + 1), dtype=torch.bool, device=device)
    starts.scatter_(1, orbit, True)
    return starts[:, :length]


class PatchTracker:
    """The patchers' incremental form, for cached decoding: one state per row.

    Before the model predicts token ``t`` of a row, ``starts(previous_tokens, entropies)``
    (token ``t-1`` and ``H_t``) says whether token ``t`` starts a patch; rows not ``active``
    keep their state. After ``reset`` a row's next token starts a patch (position 0). Fed a
    finished sequence token by token it gives exactly ``patch_starts`` of that sequence: pass
    ``tokens`` (the token itself, when it is already known, as in a prefill) so that a BOS in
    the middle of a row starts a patch; a decoder predicting bytes never predicts a BOS, so a
    generation step leaves it out."""

    def __init__(self, config: PatchingConfig, batch_size: int, device: torch.device | str | None = None):
        config.validate()
        self.config = config
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.run = torch.zeros(batch_size, dtype=torch.long, device=self.device)  # tokens in the open patch
        self.fresh = torch.ones(batch_size, dtype=torch.bool, device=self.device)  # next token is position 0
        self.last_entropy = torch.zeros(batch_size, dtype=torch.float32, device=self.device)  # monotonic

    def reset(self, rows: torch.Tensor | None = None) -> None:
        """Restart the rows where the bool mask ``rows`` [B] is true (or that an index tensor
        names); all rows when None."""
        if rows is None:
            chosen = torch.ones(self.batch_size, dtype=torch.bool, device=self.device)
        elif rows.dtype == torch.bool:
            chosen = rows.to(self.device)
        else:
            chosen = torch.zeros(self.batch_size, dtype=torch.bool, device=self.device)
            chosen[rows.to(self.device)] = True
        self.fresh |= chosen
        self.run.masked_fill_(chosen, 0)
        self.last_entropy.masked_fill_(chosen, 0.0)

    def starts(
        self,
        previous_tokens: torch.Tensor,
        entropies: torch.Tensor | None = None,
        active: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Does the token about to be predicted start a patch? previous_tokens [B] (ignored
        for a fresh row), entropies [B] (bits, entropy schemes only), active [B] (default:
        all), tokens [B] (the token itself, if known) -> bool [B] (False where not active)."""
        config = self.config
        if active is None:
            active = torch.ones(self.batch_size, dtype=torch.bool, device=self.device)
        if needs_entropy(config) and entropies is None:
            raise ValueError(f"the {config.scheme} patcher needs entropies")
        hard = self.fresh | (previous_tokens == BOS)
        if tokens is not None:
            hard |= tokens == BOS
        if config.scheme == "entropy":
            wanted = entropies > config.threshold
        elif config.scheme == "monotonic":
            wanted = (entropies - self.last_entropy) > config.threshold
        elif config.scheme == "space":
            wanted = ~word_bytes(previous_tokens)
        else:
            wanted = self.run >= config.stride
        start = hard | (self.run >= config.max_patch_size) | (wanted & (self.run >= config.min_patch_size))
        start &= active
        self.run = torch.where(active, torch.where(start, 1, self.run + 1), self.run)
        self.fresh &= ~active
        if entropies is not None:
            self.last_entropy = torch.where(active, entropies.float(), self.last_entropy)
        return start


def mean_patch_size(starts: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """Tokens per patch over the ``valid`` positions (default: all)."""
    if valid is not None:
        starts = starts & valid
        total = int(valid.sum())
    else:
        total = starts.numel()
    return total / max(int(starts.sum()), 1)


def calibrate_threshold(
    config: PatchingConfig,
    entropies: torch.Tensor,
    target_mean_patch_size: float,
    tokens: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    iterations: int = 40,
) -> float:
    """The threshold (bits) that gives ``target_mean_patch_size`` tokens per patch on sample
    data, by bisection: entropies [B, T] or [T] from ``EntropyModel.entropies`` on the sample
    (``tokens``, default all bytes; ``valid`` masks padding). Entropy and monotonic schemes.

    A higher threshold means fewer, longer patches. The target must lie between what the
    lowest and the highest thresholds give (bounded by the size limits and the hard starts),
    else a ``ConfigError`` says what range this sample allows."""
    if not needs_entropy(config):
        raise ConfigError("scheme", f"calibration sets the threshold of the entropy or monotonic "
                                    f"scheme, not of {config.scheme!r}")
    if entropies.dim() == 1:
        entropies = entropies.unsqueeze(0)
        tokens = None if tokens is None else tokens.unsqueeze(0)
        valid = None if valid is None else valid.unsqueeze(0)
    if tokens is None:
        tokens = torch.zeros(entropies.shape, dtype=torch.long, device=entropies.device)

    def size_at(threshold: float) -> float:
        trial = dataclasses.replace(config, threshold=threshold)
        return mean_patch_size(patch_starts(trial, tokens, entropies), valid)

    low, high = -MAX_ENTROPY_BITS, MAX_ENTROPY_BITS
    smallest, largest = size_at(low), size_at(high)
    if not smallest <= target_mean_patch_size <= largest:
        raise ConfigError("target mean patch size", f"must be in [{smallest:.3g}, {largest:.3g}] bytes "
                                                    f"for this sample and size limits, got {target_mean_patch_size:g}")
    for _ in range(iterations):
        middle = (low + high) / 2
        if size_at(middle) < target_mean_patch_size:
            low = middle
        else:
            high = middle
    # the closer of the two ends (the mean is a step function of the threshold)
    return high if abs(size_at(high) - target_mean_patch_size) <= abs(size_at(low) - target_mean_patch_size) else low

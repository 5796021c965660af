"""The one interface every omnibyte model family implements.

Token convention (shared by all families, the data pipeline and every tool):
  * ids 0..255 are bytes; id ``BOS`` (256) marks the start of a document.
  * ``forward(tokens)[:, t]`` are the logits of the byte that follows ``tokens[:, t]``.
  * To score a whole file ``f`` feed ``[BOS] + f[:-1]`` and read the targets ``f``:
    every byte, the first one included, gets a probability.

Trunk and head: ``encode(tokens) -> hidden [B, T, D]`` is the trunk, ``head(hidden)`` the
256-way next-byte head, and ``forward == head(encode(tokens))``. ``pool(hidden, mask)`` is a
representation of a whole sequence, for task heads (classification) on any family.

Decoding: ``model.decoder(batch_size, max_len, fast=...)`` returns a ``Decoder``, the only way
an app steps a model. Every row has its own length, so rows may hold prompts of different
lengths, and ``reset(rows)`` restarts chosen rows without rebuilding the decoder:

    decoder = model.decoder(batch_size=2, max_len=100)
    logits = decoder.prefill(tokens, lengths=[5, 3])   # ragged prompts: next-byte logits [2, 256]
    logits = decoder.step(next_bytes)                  # one token per row
    decoder.reset([0])                                 # row 0 starts over

``fast`` makes every step static-shape (attention over the whole cache) and, on CUDA, replays it
as a CUDA graph; the eager and the fast path run the same block code. ``compile`` (with
``fast``) passes that code through ``torch.compile`` before the graph captures it.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import itertools
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from omnibyte.models import modelfiles
from omnibyte.models.layers import fuse_legacy_projections
from omnibyte.models.validation import (
    ConfigError,
    Limit,
    ModelSize,
    check_finite,
    check_model_size,
    check_range,
    field_path,
)
from omnibyte.models import speculative as speculation
from omnibyte.models.speculative import DeviceRounds, SpeculationStats, speculative_steps
from omnibyte.sampling import GumbelNoise, sample_next

BOS = 256
NUM_BYTES = 256
INPUT_VOCAB = 257  # bytes + BOS


# ---- configs --------------------------------------------------------------------------

def _coerce(hint: Any, value: Any, name: str) -> Any:
    """``value`` checked against the type ``hint`` of field ``name``; nested configs are built.

    Strict on purpose: a bool is not a number, a string is not a number (``"64"``), an integer
    field refuses ``1024.5`` and ``1e9`` (JSON reads both as floats), a float field refuses NaN
    and infinities. Errors are ``ConfigError``s that name the field."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(option, value, name)
            except ValueError as error:
                errors.append(error)
        raise errors[0] if errors else ConfigError(name, f"has an invalid value {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(name, f"must be a list, got {type(value).__name__}")
        (item,) = typing.get_args(hint) or (Any,)
        return [_coerce(item, element, f"{name}[{index}]") for index, element in enumerate(value)]
    if isinstance(hint, type) and issubclass(hint, BaseConfig):
        return _sub_config(hint, value, name)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(name, f"must be true or false, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, f"must be an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(name, f"must be a number, got {value!r}")
        check_finite(name, value)
        return float(value)
    elif hint is str and not isinstance(value, str):
        raise ConfigError(name, f"must be a string, got {value!r}")
    return value


def _sub_config(hint: type[BaseConfig], value: Any, name: str) -> BaseConfig:
    """A nested config from a dict (or an existing one, checked again: it may have been
    changed since it was built); its errors name the field under ``name``."""
    with field_path(name):
        if isinstance(value, hint):
            value.validate()
            return value
        if not isinstance(value, dict):
            raise ConfigError("", f"must be an object ({hint.__name__}), got {type(value).__name__}")
        return hint.from_dict(value)


def _plain(value: Any) -> Any:
    """A config value as JSON-ready data (nested configs through their own ``to_dict``)."""
    if isinstance(value, BaseConfig):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return copy.deepcopy(value)


@functools.lru_cache(maxsize=None)
def _field_hints(config_class: type) -> dict[str, Any]:
    return typing.get_type_hints(config_class)


@dataclasses.dataclass
class BaseConfig:
    """Config base class: a dataclass that round-trips through JSON and is checked when it is
    built, from ``from_dict`` (JSON, ``--set``) and from Python alike.

    Every field is checked against its type (nested sub-configs, fields typed as a
    ``BaseConfig`` subclass or a list of them, are built from dicts), against its range in
    ``LIMITS`` and its allowed values in ``CHOICES``; then ``fill_defaults`` replaces
    placeholders (``intermediate_size=0``), then ``validate`` applies the rules between
    fields. Errors are ``ConfigError``s (a ``ValueError`` and an ``OmnibyteError``) naming the
    field and what it may be. A family with several parts has one config document."""

    LIMITS: ClassVar[dict[str, Limit]] = {}
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {}
    # fields added after models were saved: left out of ``to_dict`` while at their default, so
    # an older model's document, and the compression fingerprint hashed from it, stay the same
    OMIT_WHEN_DEFAULT: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self._check_fields()  # first, so nothing is derived from a value out of range
        self.fill_defaults()
        self.validate()

    def fill_defaults(self) -> None:
        """Replace placeholder values by what they stand for (runs after the field checks)."""

    def validate(self) -> None:
        """Raise ``ConfigError`` on a field of the wrong type or out of range, or on fields
        that do not fit together. Families add their rules after ``super().validate()``."""
        self._check_fields()

    def _check_fields(self) -> None:
        hints = _field_hints(type(self))
        for field in dataclasses.fields(self):
            name = field.name
            value = _coerce(hints.get(name, Any), getattr(self, name), name)
            if name in self.LIMITS:
                check_range(name, value, self.LIMITS[name], "an integer" if isinstance(value, int) else "a number")
            choices = self.CHOICES.get(name)
            if choices is not None and value not in choices:
                raise ConfigError(name, f"must be one of {', '.join(choices)}, got {value!r}")
            setattr(self, name, value)  # coerced: int -> float, dict -> sub-config

    def estimate_size(self) -> ModelSize | None:
        """Parameters and build memory of the model this config describes, from the config
        alone (None: no estimate; the size limit then does not apply)."""
        return None

    def to_dict(self) -> dict[str, Any]:
        return {field.name: _plain(getattr(self, field.name)) for field in dataclasses.fields(self)
                if not (field.name in self.OMIT_WHEN_DEFAULT and getattr(self, field.name) == field.default)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        if not isinstance(values, dict):
            raise ConfigError("", f"{cls.__name__} must be an object, got {type(values).__name__}")
        known = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = sorted((name for name in values if name not in known), key=str)
        if unknown:
            raise ConfigError("", f"unknown {cls.__name__} field {unknown[0]!r} (fields: {', '.join(known)})")
        config = cls(**values)
        config.validate()  # again: a family's own __post_init__ may not chain to ours
        return config

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))


# ---- the model interface ------------------------------------------------------------------

class ByteModel(nn.Module):
    """Abstract next-byte model. A family sets ``arch`` and ``config_class`` and implements
    ``encode``, ``head``, ``hidden_size``, ``decoder``, ``max_seq_len`` and ``flops_per_byte``."""

    arch: ClassVar[str] = ""
    config_class: ClassVar[type[BaseConfig]] = BaseConfig
    head: nn.Module  # hidden [.., D] -> logits [.., 256]
    loss_chunk: int = 0  # positions per chunk of the head + cross-entropy in ``loss`` (0: all at once)

    def __init__(self, config: BaseConfig):
        super().__init__()
        config.validate()
        # families call this first, so a model above the size limit is refused before any
        # of its weights is allocated
        check_model_size(config.estimate_size())
        self.config = config

    # ---- required by every family -------------------------------------------------
    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """The trunk: tokens [B, T] -> hidden states [B, T, hidden_size]."""
        raise NotImplementedError

    @property
    def hidden_size(self) -> int:
        """Width of ``encode``'s output."""
        raise NotImplementedError

    def decoder(self, batch_size: int, max_len: int | None = None, fast: bool = False,
                compile: bool = False) -> "Decoder":
        """A ``Decoder`` for ``batch_size`` rows of up to ``max_len`` tokens (default: the
        context). ``fast``: static shapes, replayed as CUDA graphs on CUDA. ``compile`` (needs
        ``fast``): the steps go through ``torch.compile`` first, fusing their small kernels,
        at a one-off cost of tens of seconds; logits agree with the plain steps to rounding."""
        raise NotImplementedError

    def flops_per_byte(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward) per byte at context ``seq_len``."""
        raise NotImplementedError

    @property
    def max_seq_len(self) -> int:
        """Longest context (in tokens) the model accepts."""
        raise NotImplementedError

    def training_memory(self, batch_size: int, seq_len: int, optimizer: bool = True) -> int | None:
        """Estimated peak accelerator bytes of one training step at this batch and sequence
        length (None: the family gives no estimate). The trainer refuses, in one line, a step
        that cannot fit before it starts one."""
        return None

    def init_weights(self) -> None:
        """Re-initialise every parameter and buffer (rotary tables, index offsets) in place,
        deterministically from torch's current CPU generator. A family builds its modules
        inside ``defaults_undrawn()`` and ends its constructor with ``self.init_unless_meta()``,
        so an eager build under a seed and a build on the meta device, materialised with
        ``to_empty`` and then ``init_weights()`` under the same seed, hold the same weights."""
        raise NotImplementedError

    def shard_units(self) -> list[nn.Module]:
        """The repeated blocks (transformer / Mamba layers): the units that the parallel layer
        checkpoints, compiles and shards one by one (FSDP2 ``fully_shard``)."""
        raise NotImplementedError

    # ---- building on the meta device ------------------------------------------------
    @staticmethod
    def defaults_undrawn():
        """Context for building submodules: their default inits (``nn.Linear``'s uniform
        draws) leave torch's generator where it was, so ``init_weights`` draws from the same
        state whether the model was built eagerly or on the meta device."""
        return torch.random.fork_rng(devices=[])

    def init_unless_meta(self) -> None:
        """``init_weights()`` unless the model was built on the meta device (then the parallel
        layer materialises it and calls ``init_weights`` itself)."""
        if not any(tensor.is_meta for tensor in itertools.chain(self.parameters(), self.buffers())):
            self.init_weights()

    # ---- shared on top of the above -------------------------------------------------
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, T] -> [B, T, 256]
        return self.head(self.encode(tokens))

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of ``hidden`` [B, T, D] over the positions where ``mask`` [B, T] is true: [B, D]."""
        if mask is None:
            return hidden.mean(dim=1)
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)

    def loss(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean next-byte cross-entropy in nats over unmasked positions. With ``loss_chunk``
        set (the trainer's ``loss_chunk``), the head and the cross-entropy run over that many
        positions at a time and are recomputed in the backward pass, so the [B, T, 256] float32
        logits never exist whole."""
        if self.loss_chunk:
            return chunked_cross_entropy(self.encode(tokens), self.head, targets, mask, self.loss_chunk)
        return masked_cross_entropy(self(tokens), targets, mask)

    @torch.no_grad()
    def byte_log_probs(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Natural-log probability of each target byte, [B, T]."""
        logits = self(tokens).float()
        return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---- the huggingface_hub convention (PyTorchModelHubMixin), on local folders ----------
    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        config: BaseConfig | dict[str, Any] | None = None,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        model_card_kwargs: dict[str, Any] | None = None,
        **push_to_hub_kwargs: Any,
    ) -> str | None:
        """Save ``config.json`` + ``model.safetensors`` (omnibyte's format: any command loads
        the folder with ``--model``) and a model card ``README.md`` if there is none, like
        ``PyTorchModelHubMixin.save_pretrained``; returns None. Offline: ``push_to_hub`` is
        refused; ``repo_id`` and ``model_card_kwargs`` are accepted for compatibility."""
        modelfiles.save_pretrained(self, save_directory, config=config, push_to_hub=push_to_hub)
        return None

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        force_download: bool = False,
        resume_download: bool | None = None,
        proxies: dict | None = None,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        map_location: str | torch.device = "cpu",
        strict: bool = False,
        config: BaseConfig | dict[str, Any] | None = None,
    ) -> "ByteModel":
        """Load a folder written by ``save_pretrained`` (or any omnibyte model or run folder),
        like ``PyTorchModelHubMixin.from_pretrained``: weights onto ``map_location``, eval
        mode, ``strict=False`` by default as in the mixin. ``ByteModel.from_pretrained``
        returns the family the folder names; a family's own class refuses another family in
        one line. Local folders only: omnibyte never downloads, so the Hub's download options
        are accepted and ignored."""
        return modelfiles.from_pretrained(cls, pretrained_model_name_or_path, map_location=map_location,
                                          strict=strict, config=config)

    # ---- checkpoints written by earlier versions ------------------------------------------
    @classmethod
    def upgrade_config(cls, values: dict[str, Any]) -> dict[str, Any]:
        """A config dict of an earlier version in today's form (default: unchanged)."""
        return values

    @classmethod
    def upgrade_state_dict(cls, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weights of an earlier version in today's form: version 0.1 kept q/k/v and gate/up as
        separate projections, today they are fused."""
        return fuse_legacy_projections(weights)

    # ---- generation -------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompts: bytes | Sequence[bytes] = b"",
        max_new_bytes: int = 256,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | Sequence[int] | None = None,
        fast: bool = False,
        speculative: bool = False,
        stats: SpeculationStats | None = None,
        compile: bool = False,
    ) -> bytes | list[bytes]:
        """Sample ``max_new_bytes`` after each prompt, all rows in one batch.

        ``prompts``: ``bytes`` (returns ``bytes``) or a list of ``bytes`` of any lengths (returns
        a list). ``temperature=0`` is greedy. ``seed``: an int (row ``i`` uses ``seed + i``), one
        seed per row, or None (random). A row's sample depends only on its prompt and seed, so
        a batched sample equals the same row sampled alone.

        ``speculative``: draft bytes from the context and verify several per model call
        (``omnibyte.models.speculative``); the sample is the same bytes (up to float rounding
        of the verify call's logits). Families whose decoder lacks ``supports_speculation``
        decode plainly. ``stats`` (a ``SpeculationStats``) is filled with what speculation did.
        ``compile`` (with ``fast``): see ``decoder``."""
        single = isinstance(prompts, (bytes, bytearray, memoryview))
        rows = [bytes(prompts)] if single else [bytes(prompt) for prompt in prompts]
        if speculative:
            pieces = [bytearray() for _ in rows]
            for news in self._sample_speculative(rows, max_new_bytes, temperature, top_k, top_p, seed, fast, stats,
                                                 compile):
                for piece, new in zip(pieces, news):
                    piece += new
            outputs = [bytes(piece) for piece in pieces]
            return outputs[0] if single else outputs
        steps = list(self._sample(rows, max_new_bytes, temperature, top_k, top_p, seed, fast, compile))
        if steps:
            matrix = torch.stack(steps, dim=1).to("cpu", torch.uint8).numpy()  # one sync at the end
            outputs = [row.tobytes() for row in matrix]
        else:
            outputs = [b""] * len(rows)
        return outputs[0] if single else outputs

    @torch.no_grad()
    def stream(
        self,
        prompt: bytes = b"",
        max_new_bytes: int = 256,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        fast: bool = False,
        speculative: bool = False,
        compile: bool = False,
    ) -> Iterator[bytes]:
        """Yield the bytes of ``generate(prompt, ...)`` as they are sampled: one at a time, or
        with ``speculative`` each verified run of bytes at once."""
        if speculative:
            for news in self._sample_speculative([bytes(prompt)], max_new_bytes, temperature, top_k, top_p,
                                                 seed, fast, None, compile):
                if news[0]:
                    yield news[0]
            return
        for next_byte in self._sample([bytes(prompt)], max_new_bytes, temperature, top_k, top_p, seed, fast,
                                      compile):
            yield bytes([int(next_byte[0])])

    def _sample(
        self,
        prompts: list[bytes],
        max_new_bytes: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        seed: int | Sequence[int] | None,
        fast: bool,
        compile: bool = False,
    ) -> Iterator[torch.Tensor]:
        """Yield the sampled byte of every row [B] (on the device), step by step."""
        with self._prefilled(prompts, max_new_bytes, seed, fast, compile) as (decoder, logits, noise):
            yield from _plain_steps(decoder, logits, max_new_bytes, _sampler(temperature, top_k, top_p), noise)

    def _sample_speculative(
        self,
        prompts: list[bytes],
        max_new_bytes: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        seed: int | Sequence[int] | None,
        fast: bool,
        stats: SpeculationStats | None,
        compile: bool = False,
    ) -> Iterator[list[bytes]]:
        """Yield each round's new bytes of every row (``speculative_steps``), or, for a decoder
        without ``supports_speculation``, one byte per row per step from the plain loop."""
        sample = _sampler(temperature, top_k, top_p)
        with self._prefilled(prompts, max_new_bytes, seed, fast, compile) as (decoder, logits, noise):
            if speculation.rounds_on_device(decoder, fast, compile, temperature) and max_new_bytes > 0:
                first = sample(logits, noise(0))
                rounds = DeviceRounds(decoder, prompts, first, max_new_bytes, sample, noise.seeds, noisy=temperature > 0)
                yield from rounds.run(stats)
                return
            if decoder.supports_speculation:
                yield from speculative_steps(decoder, prompts, logits, max_new_bytes, sample, noise, stats)
                return
            for next_bytes in _plain_steps(decoder, logits, max_new_bytes, sample, noise):
                yield [bytes([byte]) for byte in next_bytes.to("cpu", torch.uint8).tolist()]

    @contextlib.contextmanager
    def _prefilled(
        self, prompts: list[bytes], max_new_bytes: int, seed: int | Sequence[int] | None, fast: bool,
        compile: bool = False,
    ) -> Iterator[tuple[Decoder, torch.Tensor, GumbelNoise]]:
        """In eval mode (restored after): a decoder holding ``[BOS] + prompt`` of every row, the
        logits after each row's prompt, and the rows' sampling noise."""
        noise, tokens, lengths, capacity = self._sampling_inputs(prompts, max_new_bytes, seed)
        was_training = self.training
        self.eval()
        try:
            decoder = self.decoder(len(prompts), capacity, fast=fast, compile=compile)
            yield decoder, decoder.prefill(tokens, lengths), noise
        finally:
            self.train(was_training)

    def _sampling_inputs(
        self, prompts: list[bytes], max_new_bytes: int, seed: int | Sequence[int] | None
    ) -> tuple[GumbelNoise, torch.Tensor, list[int], int]:
        """The rows' noise, the ``[BOS] + prompt`` tokens [B, T] with their lengths, and the
        decoder capacity a run of ``max_new_bytes`` needs; ValueError on a request that cannot run."""
        if not prompts:
            raise ValueError("generate needs at least one prompt")
        if max_new_bytes < 0:
            raise ValueError("max_new_bytes must not be negative")
        longest = max(len(prompt) for prompt in prompts)
        if longest + max_new_bytes + 1 > self.max_seq_len:
            raise ValueError(
                f"prompt ({longest} bytes) + {max_new_bytes} new bytes exceed the "
                f"model's context of {self.max_seq_len - 1} bytes"
            )
        device = self.device
        noise = GumbelNoise(torch.tensor(row_seeds(seed, len(prompts)), dtype=torch.long, device=device))
        rows = np.full((len(prompts), longest + 1), BOS, dtype=np.int64)  # BOS, prompt, padding
        for row, prompt in enumerate(prompts):
            rows[row, 1 : len(prompt) + 1] = np.frombuffer(prompt, dtype=np.uint8)
        tokens = torch.from_numpy(rows).to(device)
        return noise, tokens, [len(prompt) + 1 for prompt in prompts], longest + max_new_bytes + 1


def _sampler(temperature: float, top_k: int | None, top_p: float | None):
    """``sample(logits [N, 256], noise [N, 256]) -> bytes [N]`` with these options."""
    def sample(logits: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return sample_next(logits, temperature, top_k, top_p, noise)
    return sample


def _plain_steps(decoder: "Decoder", logits: torch.Tensor, max_new_bytes: int, sample, noise: GumbelNoise
                 ) -> Iterator[torch.Tensor]:
    """Plain decoding from a prefilled ``decoder``: every row's sampled byte [B] (on the device),
    one step at a time; the last byte is not fed back."""
    for step in range(max_new_bytes):
        next_bytes = sample(logits, noise(step))
        yield next_bytes
        if step + 1 < max_new_bytes:
            logits = decoder.step(next_bytes)


def row_seeds(seed: int | Sequence[int] | None, rows: int) -> list[int]:
    """One seed per row: ``seed + row``, the given list, or random ones."""
    if seed is None:
        seed = int(torch.seed() % 2**62)
    if isinstance(seed, int):
        return [(seed + row) % 2**63 for row in range(rows)]
    seeds = [int(value) for value in seed]
    if len(seeds) != rows:
        raise ValueError(f"{len(seeds)} seeds for {rows} prompts")
    return [value % 2**63 for value in seeds]


# ---- the decoder protocol -----------------------------------------------------------------

class Decoder:
    """Per-row incremental decoding over ``batch_size`` rows of up to ``capacity`` tokens.

    ``prefill(tokens [B, T], lengths)`` appends the first ``lengths[b]`` tokens of row ``b`` to
    it and returns the next-byte logits after each row's last token [B, 256] (undefined for a
    row given no token). ``step(tokens [B])`` appends one token to every row. ``reset(rows)``
    empties chosen rows. ``lengths`` (host) holds each row's token count; the device keeps its
    own copy, so no step reads anything back from the device. Families implement ``_prefill``,
    ``_step`` and ``_reset``; this class checks shapes and capacity once for all of them.

    Speculative decoding needs two more calls, offered where ``supports_speculation`` is true
    (families implement ``_extend`` and ``_rewind``): ``extend(tokens [B, T], lengths)``
    appends like ``prefill`` and returns the next-byte logits after EVERY appended position
    [B, T, 256] (undefined past a row's length), and ``rewind(counts)`` drops the last
    ``counts[b]`` tokens of row ``b`` (the cache forgets them; their slots are overwritten by
    the next append).

    Where ``supports_device_rounds`` is true as well, whole rounds of speculation (draft, verify,
    accept) run on the device with no host round trip between them
    (``speculative.DeviceRounds``), built from three more calls: ``verify_on_device(tokens [B,
    W], valid [B, W])`` appends the valid tokens and returns the logits after every one of them
    [B, W, 256], and ``rewind_on_device(counts [B])`` drops tokens, both on device tensors only
    and so capturable in a CUDA graph; the host's ``lengths`` are then stale until
    ``sync_lengths()``. ``add_piece(name, piece, prepare)`` and ``run_piece(name)`` compile and
    capture a caller's piece the way the decoder's own steps are (``prepare`` restores the
    caller's state before each warm-up call and the capture; the decoder restores its own).
    """

    supports_speculation: ClassVar[bool] = False
    supports_device_rounds: ClassVar[bool] = False

    def __init__(self, batch_size: int, capacity: int, device: torch.device):
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        if capacity < 1:
            raise ValueError("max_len must be positive")
        self.batch_size = batch_size
        self.capacity = capacity
        self.device = device
        self.lengths = np.zeros(batch_size, dtype=np.int64)

    # ---- the protocol ------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor, lengths: Sequence[int] | np.ndarray | None = None) -> torch.Tensor:
        counts, valid = self._appended(tokens, lengths)
        logits = self._prefill(tokens.to(self.device), valid, counts)
        self.lengths += counts
        return logits

    @torch.no_grad()
    def extend(self, tokens: torch.Tensor, lengths: Sequence[int] | np.ndarray | None = None) -> torch.Tensor:
        if not self.supports_speculation:
            raise NotImplementedError(f"{type(self).__name__} does not support extend/rewind")
        counts, valid = self._appended(tokens, lengths)
        logits = self._extend(tokens.to(self.device), valid, counts)
        self.lengths += counts
        return logits

    @torch.no_grad()
    def rewind(self, counts: Sequence[int] | np.ndarray) -> None:
        if not self.supports_speculation:
            raise NotImplementedError(f"{type(self).__name__} does not support extend/rewind")
        dropped = np.asarray(counts, np.int64)
        if dropped.shape != (self.batch_size,) or (dropped < 0).any() or (dropped > self.lengths).any():
            raise ValueError(f"rewind counts must be {self.batch_size} integers, each at most its row's length")
        if dropped.any():
            self._rewind(dropped)
            self.lengths -= dropped

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape != (self.batch_size,):
            raise ValueError(f"decoder was built for batch {self.batch_size}, got tokens of shape "
                             f"{tuple(tokens.shape)}")
        self._check_room(np.ones(self.batch_size, np.int64))
        logits = self._step(tokens.to(self.device))
        self.lengths += 1
        return logits

    @torch.no_grad()
    def reset(self, rows: Sequence[int] | None = None) -> None:
        if rows is None:
            chosen = np.ones(self.batch_size, dtype=bool)
        else:
            chosen = np.zeros(self.batch_size, dtype=bool)
            indices = np.asarray(list(rows), dtype=np.int64)
            if ((indices < 0) | (indices >= self.batch_size)).any():
                raise ValueError(f"rows must be in [0, {self.batch_size})")
            chosen[indices] = True
        self._reset(torch.from_numpy(chosen).to(self.device))
        self.lengths[chosen] = 0

    def _appended(self, tokens: torch.Tensor, lengths: Sequence[int] | np.ndarray | None
                  ) -> tuple[np.ndarray, torch.Tensor]:
        """Tokens to append per row [B] (host), checked against ``tokens`` [B, T] and the
        capacity, and which of ``tokens`` are appended [B, T] (device)."""
        if tokens.dim() != 2 or tokens.shape[0] != self.batch_size:
            raise ValueError(f"decoder was built for batch {self.batch_size}, got tokens of shape "
                             f"{tuple(tokens.shape)}")
        width = tokens.shape[1]
        counts = np.full(self.batch_size, width, np.int64) if lengths is None else np.asarray(lengths, np.int64)
        if counts.shape != (self.batch_size,) or (counts < 0).any() or (counts > width).any():
            raise ValueError(f"lengths must be {self.batch_size} integers in [0, {width}]")
        if width == 0 or counts.max() == 0:
            raise ValueError("prefill needs at least one token")
        self._check_room(counts)
        valid = torch.arange(width, device=self.device).unsqueeze(0) < torch.from_numpy(counts).to(self.device).unsqueeze(1)
        return counts, valid

    @torch.no_grad()
    def sync_lengths(self) -> None:
        """Read each row's length back from the device after device rounds (one sync)."""
        self.lengths = self._device_lengths().to("cpu").numpy().astype(np.int64)

    def verify_on_device(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not run rounds on the device")

    def rewind_on_device(self, counts: torch.Tensor) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not run rounds on the device")

    def add_piece(self, name: str, piece: Callable[[], Any], prepare: Callable[[], None]) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not run rounds on the device")

    def run_piece(self, name: str) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not run rounds on the device")

    def _device_lengths(self) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not run rounds on the device")

    def _check_room(self, counts: np.ndarray) -> None:
        if (self.lengths + counts > self.capacity).any():
            raise ValueError(f"context of {self.capacity} tokens exceeded")

    # ---- what a family implements ----------------------------------------------------------
    def _prefill(self, tokens: torch.Tensor, valid: torch.Tensor, counts: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def _step(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _reset(self, rows: torch.Tensor) -> None:
        raise NotImplementedError

    def _extend(self, tokens: torch.Tensor, valid: torch.Tensor, counts: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def _rewind(self, counts: np.ndarray) -> None:
        raise NotImplementedError


def masked_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy (nats) over positions where ``mask`` is true."""
    losses = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    )
    if mask is None:
        return losses.mean()
    weights = mask.reshape(-1).to(losses.dtype)
    return (losses * weights).sum() / weights.sum().clamp_min(1.0)


def _chunk_loss_sum(hidden: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                    head: nn.Module) -> torch.Tensor:
    logits = head(hidden).float()
    losses = F.cross_entropy(logits, targets, reduction="none")
    return (losses * weights).sum()


def chunked_cross_entropy(
    hidden: torch.Tensor,
    head: nn.Module,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    chunk: int = 8192,
) -> torch.Tensor:
    """``masked_cross_entropy(head(hidden), targets, mask)`` over ``chunk`` positions at a time;
    under autograd each chunk's logits are recomputed in the backward pass (checkpointed), so
    at most one chunk of float32 logits is alive."""
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_targets = targets.reshape(-1)
    weights = (torch.ones_like(flat_targets, dtype=torch.float32) if mask is None
               else mask.reshape(-1).to(torch.float32))
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, flat_targets.shape[0], chunk):
        part = slice(start, start + chunk)
        if torch.is_grad_enabled() and hidden.requires_grad:
            total = total + torch.utils.checkpoint.checkpoint(
                _chunk_loss_sum, flat_hidden[part], flat_targets[part], weights[part], head, use_reentrant=False)
        else:
            total = total + _chunk_loss_sum(flat_hidden[part], flat_targets[part], weights[part], head)
    return total / (weights.sum().clamp_min(1.0) if mask is not None else float(flat_targets.shape[0]))


def nats_to_bits(nats: float) -> float:
    return nats / math.log(2)

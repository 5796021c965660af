"""The one interface every omnibyte model family implements.

Token convention (shared by all families, data pipeline, tools):
  * ids 0..255 are bytes; id ``BOS`` (256) marks the start of a document.
  * ``forward(tokens)[:, t]`` are the logits of the byte that follows ``tokens[:, t]``.
  * To score a whole file ``f`` feed ``[BOS] + f[:-1]`` and read the targets ``f``:
    every byte, the first one included, gets a probability.

Incremental decoding: ``state = model.init_state(batch_size)``, then
``logits = model.step(tokens, state)`` consumes one token per row (advancing ``state``
in place) and returns the next-byte logits. ``prefill`` does the same for many tokens.
Generation, compression and streaming scoring all run through this path, so every
family that implements ``init_state``/``step`` works with every tool.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, ClassVar, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

BOS = 256
NUM_BYTES = 256
INPUT_VOCAB = 257  # bytes + BOS


@dataclasses.dataclass
class BaseConfig:
    """Config base class: plain dataclass that round-trips through JSON."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))

    def validate(self) -> None:
        """Raise ValueError on an inconsistent config."""


class ByteModel(nn.Module):
    """Abstract next-byte model. Subclasses set ``arch``/``config_class`` and implement
    ``forward``, ``init_state``, ``step`` and ``flops_per_byte``."""

    arch: ClassVar[str] = ""
    config_class: ClassVar[type[BaseConfig]] = BaseConfig

    def __init__(self, config: BaseConfig):
        super().__init__()
        config.validate()
        self.config = config

    # ---- required by every family -------------------------------------------------
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, T] -> [B, T, 256]
        raise NotImplementedError

    def init_state(self, batch_size: int, device: torch.device | None = None) -> Any:
        raise NotImplementedError

    def step(self, tokens: torch.Tensor, state: Any) -> torch.Tensor:  # [B] -> [B, 256]
        raise NotImplementedError

    def flops_per_byte(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward) per byte at context ``seq_len``."""
        raise NotImplementedError

    @property
    def max_seq_len(self) -> int:
        """Longest context (in tokens) the model accepts."""
        raise NotImplementedError

    # ---- shared on top of the above -------------------------------------------------
    def decoder(self, batch_size: int, max_len: int, fast: bool = False) -> "StateDecoder":
        """Incremental decoder (``prefill(tokens)``/``step(tokens)``) for ``batch_size`` rows and
        up to ``max_len`` tokens; families with a faster path use it when ``fast``."""
        return StateDecoder(self, batch_size)

    def prefill(self, tokens: torch.Tensor, state: Any) -> torch.Tensor:
        """Consume ``tokens`` [B, T] into ``state``; return logits after the last one."""
        logits = None
        for t in range(tokens.shape[1]):
            logits = self.step(tokens[:, t], state)
        if logits is None:
            raise ValueError("prefill needs at least one token")
        return logits

    def loss(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean next-byte cross-entropy in nats over unmasked positions."""
        logits = self(tokens)
        return masked_cross_entropy(logits, targets, mask)

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

    @torch.no_grad()
    def generate(
        self,
        prompt: bytes = b"",
        max_new_bytes: int = 256,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        fast: bool = False,
    ) -> bytes:
        """Sample ``max_new_bytes`` bytes after ``prompt`` (KV-cached / stateful)."""
        return b"".join(
            self.stream(prompt, max_new_bytes, temperature, top_k, top_p, seed, fast)
        )

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
    ) -> Iterator[bytes]:
        """Yield generated bytes one at a time; ``fast`` uses the family's fast decoder
        (CUDA graphs) where it has one."""
        from omnibyte.sampling import sample_next

        if len(prompt) + max_new_bytes + 1 > self.max_seq_len:
            raise ValueError(
                f"prompt ({len(prompt)} bytes) + {max_new_bytes} new bytes exceed the "
                f"model's context of {self.max_seq_len - 1} bytes"
            )
        was_training = self.training
        self.eval()
        device = self.device
        generator = torch.Generator(device=device)
        generator.manual_seed(seed if seed is not None else torch.seed() % 2**63)
        decoder = self.decoder(1, len(prompt) + max_new_bytes + 1, fast)
        prompt_tokens = torch.tensor([[BOS, *prompt]], dtype=torch.long, device=device)
        logits = decoder.prefill(prompt_tokens)
        try:
            for _ in range(max_new_bytes):
                next_byte = sample_next(logits, temperature, top_k, top_p, generator)
                yield bytes([int(next_byte[0])])
                logits = decoder.step(next_byte)
        finally:
            self.train(was_training)


class StateDecoder:
    """``prefill``/``step`` of a model over a state of its own ``init_state``."""

    def __init__(self, model: ByteModel, batch_size: int):
        self.model = model
        self.state = model.init_state(batch_size, model.device)

    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.prefill(tokens, self.state)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.step(tokens, self.state)


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


def nats_to_bits(nats: float) -> float:
    return nats / math.log(2)

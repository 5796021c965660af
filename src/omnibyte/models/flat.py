"""The flat byte decoder: one causal transformer over every byte."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from omnibyte.models.base import INPUT_VOCAB, NUM_BYTES, BaseConfig, ByteModel
from omnibyte.models.layers import (
    KVCache,
    StackConfig,
    TransformerStack,
    default_intermediate_size,
    init_weights,
)


@dataclasses.dataclass
class ModelConfig(BaseConfig):
    """Flat model config; the defaults are the reference spec (the ``base`` preset)."""

    vocab_size: int = NUM_BYTES
    hidden_size: int = 1024
    num_layers: int = 12
    num_query_heads: int = 32
    num_key_value_heads: int = 8
    max_sequence_length: int = 8192
    intermediate_size: int = 0  # 0: SwiGLU default for hidden_size
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    qk_norm: bool = True

    def __post_init__(self):
        if self.intermediate_size == 0:
            self.intermediate_size = default_intermediate_size(self.hidden_size)

    def stack(self) -> StackConfig:
        return StackConfig(
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_query_heads=self.num_query_heads,
            num_key_value_heads=self.num_key_value_heads,
            intermediate_size=self.intermediate_size,
            max_sequence_length=self.max_sequence_length,
            rope_theta=self.rope_theta,
            norm_eps=self.norm_eps,
            qk_norm=self.qk_norm,
        )

    def validate(self) -> None:
        if self.vocab_size != NUM_BYTES:
            raise ValueError(f"vocab_size must be {NUM_BYTES} (bytes)")
        self.stack().validate()


FLAT_PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, num_layers=2, num_query_heads=4, num_key_value_heads=2,
                 max_sequence_length=1024),
    "small": dict(hidden_size=512, num_layers=8, num_query_heads=8, num_key_value_heads=2,
                  intermediate_size=1536, max_sequence_length=8192),
    "base": dict(),
    "1b": dict(hidden_size=2048, num_layers=22, num_query_heads=32, num_key_value_heads=8,
               max_sequence_length=8192),
}


class BytePredictor(ByteModel):
    """Byte embedding -> TransformerStack -> 256-way head."""

    arch = "flat"
    config_class = ModelConfig

    def __init__(self, config: ModelConfig | None = None):
        super().__init__(config or ModelConfig())
        config = self.config
        self.embed = nn.Embedding(INPUT_VOCAB, config.hidden_size)
        self.transformer = TransformerStack(config.stack())
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        init_weights(self, num_layers=config.num_layers)

    @property
    def max_seq_len(self) -> int:
        return self.config.max_sequence_length

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        return self.head(self.transformer(self.embed(tokens), cache))

    def init_state(self, batch_size: int, device=None) -> KVCache:
        return self.transformer.new_cache(batch_size, device)

    def step(self, tokens: torch.Tensor, state: KVCache) -> torch.Tensor:
        return self(tokens.unsqueeze(1), state)[:, -1]

    def prefill(self, tokens: torch.Tensor, state: KVCache) -> torch.Tensor:
        return self(tokens, state)[:, -1]

    def decoder(self, batch_size: int, max_len: int, fast: bool = False):
        """``fast``: a ``decode.FastDecoder`` (CUDA graph of a static-shape step on CUDA)."""
        if not fast:
            return super().decoder(batch_size, max_len)
        from omnibyte.models.decode import FastDecoder

        # a cache length that is a multiple of 64 keeps the attention mask aligned for the kernels
        return FastDecoder(self, batch_size, max_len=min(-(-max_len // 64) * 64, self.max_seq_len))

    def flops_per_byte(self, seq_len: int) -> float:
        head = 6 * self.config.hidden_size * self.config.vocab_size
        return self.config.stack().flops_per_token(seq_len) + head

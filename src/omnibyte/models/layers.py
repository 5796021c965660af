"""Transformer building blocks shared by every model family.

RMSNorm, rotary embeddings, grouped-query attention with QK-norm and a KV cache,
SwiGLU, and ``TransformerStack`` (embeddings are left to the families).
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


@dataclasses.dataclass
class StackConfig:
    """Shape of one causal transformer stack."""

    hidden_size: int
    num_layers: int
    num_query_heads: int
    num_key_value_heads: int
    intermediate_size: int
    max_sequence_length: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    qk_norm: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_query_heads

    def validate(self) -> None:
        if self.hidden_size % self.num_query_heads:
            raise ValueError("hidden_size must be divisible by num_query_heads")
        if self.num_key_value_heads < 1 or self.num_query_heads % self.num_key_value_heads:
            raise ValueError("num_key_value_heads must divide num_query_heads")
        if self.head_dim % 2:
            raise ValueError("head dimension (hidden_size / num_query_heads) must be even for RoPE")
        for name in ("num_layers", "intermediate_size", "max_sequence_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")

    def num_parameters(self) -> int:
        d, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        attention = 2 * d * d + 2 * d * kv
        mlp = 3 * d * self.intermediate_size
        return self.num_layers * (attention + mlp)

    def flops_per_token(self, context: int) -> float:
        """Training FLOPs per token, PaLM's MFU convention: 6 per matmul weight plus
        12 * layers * hidden * context for attention (QK^T and AV, 2*context*d each forward,
        x3 for backward, counted without halving for causality, as PaLM and nanoGPT do)."""
        attention = 12 * self.num_layers * self.hidden_size * context
        return 6 * self.num_parameters() + attention


def default_intermediate_size(hidden_size: int, multiple_of: int = 64) -> int:
    """SwiGLU width with the parameter count of a 4x GELU MLP, rounded up."""
    width = int(8 * hidden_size / 3)
    return multiple_of * math.ceil(width / multiple_of)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables; ``apply`` rotates [B, H, T, D] at given positions."""

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def apply(self, x: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
        length = x.shape[-2]
        if isinstance(start, int):
            cos, sin = self.cos[start : start + length], self.sin[start : start + length]
        else:  # tensor start keeps the decode step free of host syncs
            positions = start + torch.arange(length, device=x.device)
            cos, sin = self.cos[positions], self.sin[positions]
        x1, x2 = x.float().chunk(2, dim=-1)
        rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        return rotated.to(x.dtype)


class KVCache:
    """Preallocated keys/values for every layer of one stack: [L, B, H_kv, T_max, D]."""

    def __init__(
        self,
        config: StackConfig,
        batch_size: int,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        max_len: int | None = None,
    ):
        shape = (
            config.num_layers,
            batch_size,
            config.num_key_value_heads,
            max_len or config.max_sequence_length,
            config.head_dim,
        )
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # tokens already cached

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    def reset(self) -> None:
        """Forget every cached token (stale entries are never read: attention stops at ``length``)."""
        self.length = 0

    def nbytes(self) -> int:
        return self.keys.numel() * self.keys.element_size() * 2


VARIABLE_SHAPE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class Attention(nn.Module):
    """Causal grouped-query attention with RoPE and per-head RMS QK-norm."""

    def __init__(self, config: StackConfig):
        super().__init__()
        self.config = config
        d, hd = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads = config.num_query_heads, config.num_key_value_heads
        self.q_proj = nn.Linear(d, self.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, self.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, self.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(self.num_heads * hd, d, bias=False)
        self.q_norm = RMSNorm(hd, config.norm_eps) if config.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(hd, config.norm_eps) if config.qk_norm else nn.Identity()

    def _heads(self, x: torch.Tensor, proj: nn.Linear, heads: int) -> torch.Tensor:
        batch, length, _ = x.shape
        return proj(x).view(batch, length, heads, self.config.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        rope: RotaryEmbedding,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        batch, length, _ = x.shape
        start = cache.length if cache is not None else 0
        q = rope.apply(self.q_norm(self._heads(x, self.q_proj, self.num_heads)), start)
        k = rope.apply(self.k_norm(self._heads(x, self.k_proj, self.num_kv_heads)), start)
        v = self._heads(x, self.v_proj, self.num_kv_heads)
        if cache is None:
            out = self._attend(q, k, v, is_causal=True)
        else:
            end = start + length
            cache.keys[layer, :, :, start:end] = k
            cache.values[layer, :, :, start:end] = v
            k_all, v_all = cache.keys[layer, :, :, :end], cache.values[layer, :, :, :end]
            # every step has a new key length: keep cuDNN attention, which builds a plan per
            # shape (milliseconds each on H100), out of the cached path
            with sdpa_kernel(VARIABLE_SHAPE_BACKENDS):
                if length == 1:  # one new query sees every cached key: no mask needed
                    out = self._attend(q, k_all, v_all, is_causal=False)
                else:
                    query_pos = torch.arange(start, end, device=x.device).unsqueeze(1)
                    mask = torch.arange(end, device=x.device).unsqueeze(0) <= query_pos
                    out = self._attend(q, k_all, v_all, mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))

    def _attend(self, q, k, v, is_causal: bool = False, mask=None) -> torch.Tensor:
        grouped = self.num_kv_heads != self.num_heads
        return F.scaled_dot_product_attention(
            q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, is_causal=is_causal, enable_gqa=grouped
        )


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: StackConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, x, rope, cache=None, layer=0):
        x = x + self.attn(self.attn_norm(x), rope, cache, layer)
        return x + self.mlp(self.mlp_norm(x))


class TransformerStack(nn.Module):
    """``num_layers`` blocks plus a final norm, over hidden states [B, T, D]."""

    def __init__(self, config: StackConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.rope = RotaryEmbedding(config.head_dim, config.max_sequence_length, config.rope_theta)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        if cache is not None and cache.length + x.shape[1] > cache.capacity:
            raise ValueError(f"context of {cache.capacity} tokens exceeded")
        for index, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training and cache is None:
                x = torch.utils.checkpoint.checkpoint(layer, x, self.rope, use_reentrant=False)
            else:
                x = layer(x, self.rope, cache, index)
        if cache is not None:
            cache.length += x.shape[1]
        return self.norm(x)

    def new_cache(self, batch_size: int, device=None, dtype=None, max_len=None) -> KVCache:
        dtype = dtype or self.norm.weight.dtype
        return KVCache(self.config, batch_size, device or self.norm.weight.device, dtype, max_len)


def init_weights(module: nn.Module, std: float = 0.02, num_layers: int = 1) -> None:
    """GPT-2 style init; output projections scaled by depth."""
    for name, param in module.named_parameters():
        if param.dim() < 2:
            continue
        scale = std / math.sqrt(2 * num_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else std
        nn.init.normal_(param, mean=0.0, std=scale)

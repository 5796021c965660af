"""Transformer building blocks shared by every model family.

RMSNorm, rotary embeddings, grouped-query attention with QK-norm and a KV cache (optionally
differential), SwiGLU, and ``TransformerStack`` (embeddings are left to the families).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from omnibyte.models import decode_attention
from omnibyte.models.validation import ConfigError, Limit, ModelSize, check_finite, check_range


# The ranges of the fields that shape a transformer stack, shared by every family's config (so
# `hidden_size` means the same thing, and is refused the same way, in all of them). The upper
# ends only stop absurd values early; the model size limit is what bounds a model.
STACK_LIMITS: dict[str, Limit] = {
    "hidden_size": Limit(1, 65536),
    "num_layers": Limit(1, 1024),
    "num_query_heads": Limit(1, 1024),
    "num_key_value_heads": Limit(1, 1024),
    "intermediate_size": Limit(1, 2**20),
    "max_sequence_length": Limit(1, 2**24),
    "rope_theta": Limit(0.0, None, low_open=True),
    "norm_eps": Limit(0.0, 1.0, low_open=True),
}
_FLOAT_FIELDS = ("rope_theta", "norm_eps")
ROPE_BUILD_BYTES = 32  # per table element at build: float64 angles, cos and sin, then float32 copies


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
    differential_attention: bool = False  # DifferentialHeads: pairs of heads, one map minus lambda x the other
    window: int = 0  # sliding-window attention: a token sees itself and the window - 1 before it (0: all)
    attention_dropout: float = 0.0  # on the attention weights, in training
    resid_dropout: float = 0.0  # on each block's attention and MLP outputs, in training

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_query_heads

    def validate(self) -> None:
        """Ranges first (each message names its field), then the rules between fields."""
        for name, limit in STACK_LIMITS.items():
            value = getattr(self, name)
            integer = name not in _FLOAT_FIELDS
            if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
                raise ConfigError(name, f"must be {'an integer' if integer else 'a number'}, got {value!r}")
            check_finite(name, value)
            check_range(name, value, limit, "an integer" if integer else "a number")
        heads, kv_heads = self.num_query_heads, self.num_key_value_heads
        if self.hidden_size % heads:
            raise ConfigError("hidden_size", f"must be a multiple of num_query_heads ({heads}), "
                                             f"got {self.hidden_size}")
        if heads % kv_heads:
            raise ConfigError("num_key_value_heads", f"must divide num_query_heads ({heads}), got {kv_heads}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 0:
            raise ConfigError("window", f"must be a non-negative integer, got {self.window!r}")
        for name in ("attention_dropout", "resid_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(name, f"must be a number in [0, 1), got {value!r}")
        if self.head_dim % 2:
            raise ConfigError("hidden_size", f"/ num_query_heads (the head dimension) must be even for "
                                             f"rotary embeddings, got {self.hidden_size} / {heads} = {self.head_dim}")
        if self.differential_attention and (heads % 2 or kv_heads % 2):
            raise ConfigError("differential_attention", f"pairs heads: num_query_heads ({heads}) and "
                                                        f"num_key_value_heads ({kv_heads}) must be even")

    def num_parameters(self) -> int:
        """Parameters of the matmuls (what training FLOPs count); norms are left out."""
        d, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        attention = 2 * d * d + 2 * d * kv
        mlp = 3 * d * self.intermediate_size
        return self.num_layers * (attention + mlp)

    def size(self) -> ModelSize:
        """Every parameter (matmuls and norms) and the memory building the stack takes,
        rotary tables included, without building it."""
        d, head_dim = self.hidden_size, self.head_dim
        norms = 2 * d + (2 * head_dim if self.qk_norm else 0)
        heads = self.num_query_heads + 2 * self.num_key_value_heads
        per_layer = norms + d * heads * head_dim + self.num_query_heads * head_dim * d + 3 * d * self.intermediate_size
        if self.differential_attention:
            per_layer += DifferentialHeads.num_parameters(head_dim, self.num_query_heads)
        parameters = self.num_layers * per_layer + d
        rope = ROPE_BUILD_BYTES * self.max_sequence_length * head_dim
        return ModelSize.of_parameters(parameters) + ModelSize(0, rope)

    def flops_per_token(self, context: int) -> float:
        """Training FLOPs per token, PaLM's MFU convention: 6 per matmul weight plus
        12 * layers * hidden * context for attention (QK^T and AV, 2*context*d each forward,
        x3 for backward, counted without halving for causality, as PaLM and nanoGPT do).
        Differential attention's two maps each weigh values twice as wide: AV costs double."""
        per_width = 18 if self.differential_attention else 12
        attention = per_width * self.num_layers * self.hidden_size * context
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
    """Rotary position embedding in the rotate-half form, over [B, T, H, D] (positions on axis 1).

    The tables hold cos and sin already repeated to the full head width, so a rotation is
    ``x * cos + rotate_half(x) * sin``: a handful of element-wise kernels, which matters when a
    decoding step is bound by how many kernels it launches."""

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        # filled by reset_parameters, so a model built on the meta device gets its tables when
        # it is materialised (``ByteModel.init_weights``)
        self.register_buffer("cos", torch.empty(max_len, head_dim), persistent=False)
        self.register_buffer("sin", torch.empty(max_len, head_dim), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """(Re)compute the cos/sin tables on the buffers' device (nothing to do on meta)."""
        if self.cos.is_meta:
            return
        head_dim, device = self.head_dim, self.cos.device
        inv_freq = 1.0 / self.theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        positions = torch.arange(self.cos.shape[0], dtype=torch.float64)
        angles = torch.outer(positions, inv_freq).repeat(1, 2)
        self.cos.copy_(angles.cos().float().to(device))
        self.sin.copy_(angles.sin().float().to(device))

    def tables(self, length: int, positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for positions 0..length-1 ([T, 1, D]) or for per-row ``positions`` [B, T]
        ([B, T, 1, D], gathered on the device: no host sync while decoding)."""
        if positions is None:
            return self.cos[:length].unsqueeze(1), self.sin[:length].unsqueeze(1)
        positions = positions.clamp_max(self.cos.shape[0] - 1)  # padding may point past the table
        return self.cos[positions].unsqueeze(2), self.sin[positions].unsqueeze(2)

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), in float32."""
        x = x.float()
        x1, x2 = x.chunk(2, dim=-1)
        return torch.addcmul(x * cos, torch.cat((-x2, x1), dim=-1), sin)

    def apply(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Rotate [B, T, H, D] at positions 0..T-1, or at ``positions`` [B, T] (per row)."""
        return self.rotate(x, *self.tables(x.shape[1], positions)).to(x.dtype)


class KVCache:
    """Preallocated keys/values of every layer of one stack, with a length per row.

    ``keys``/``values`` are [L, B, H_kv, capacity + 1, D]: each head's positions are dense, the
    layout the attention kernels read without copying. The extra last slot is a write-only sink
    for positions that do not exist (the padding of a ragged prefill, rows that sit out a step),
    so every write has a static shape and never touches a real slot.
    ``lengths`` [B] (on the device) counts the tokens each row holds; nothing on the host is read
    while decoding, so a step can be captured as a CUDA graph.
    """

    def __init__(
        self,
        config: StackConfig,
        batch_size: int,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        max_len: int | None = None,
    ):
        capacity = max_len or config.max_sequence_length
        kv_heads = config.num_key_value_heads
        shape = (config.num_layers, batch_size, kv_heads, capacity + 1, config.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.capacity = capacity
        self.key_positions = torch.arange(capacity, device=device)
        # where (row, head) starts in a layer flattened to [B * H_kv * (capacity + 1), D]: [B, 1, H_kv]
        self.head_offsets = torch.arange(batch_size * kv_heads, device=device).view(batch_size, 1, kv_heads) \
            * (capacity + 1)

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    def reset(self, rows: torch.Tensor | None = None) -> None:
        """Empty the rows where the bool mask ``rows`` [B] is true (all rows when None); stale
        entries are never read, because attention stops at each row's length."""
        if rows is None:
            self.lengths.zero_()
        else:
            self.lengths.masked_fill_(rows, 0)

    def rewind(self, counts: torch.Tensor) -> None:
        """Drop the last ``counts[b]`` tokens [B] of each row (speculative decoding's rejected
        drafts): like ``reset``, only the lengths move; the stale slots are never read and the
        next write overwrites them."""
        self.lengths.sub_(counts)

    def prepare(self, valid: torch.Tensor, visible: int | None = None, window: int = 0,
                dense: bool = False) -> "CacheWrite":
        """Where ``valid`` [B, T] new tokens go and what each of them may attend to (with
        ``window``, only the last ``window`` positions up to its own); advances ``lengths`` by
        the valid tokens of every row. Valid tokens of a row must come first.

        ``dense``: the caller knows (on the host) that this is one token for every row and that
        every row then holds exactly ``visible`` tokens, so every query sees every visible slot
        and the write carries no mask (None): attention then skips the mask, which on the CPU
        is most of a one-query step's cost and changes no result (adding zeros)."""
        if valid.shape[1] == 1:  # a decoding step: no running count needed
            positions, added = self.lengths.unsqueeze(1), valid[:, 0].long()
        else:
            positions = self.lengths.unsqueeze(1) + (torch.cumsum(valid.long(), dim=1) - 1).clamp_min(0)
            added = valid.sum(dim=1)
        slots = torch.where(valid, positions, self.capacity)  # invalid -> the sink slot
        visible = self.capacity if visible is None else min(visible, self.capacity)
        keys = self.key_positions[:visible].view(1, 1, -1)
        allowed = keys <= positions.unsqueeze(-1)  # [B, T, visible]
        if window:
            allowed &= keys > positions.unsqueeze(-1) - window
        if dense and valid.shape[1] == 1 and visible is not None and not 0 < window < visible:
            mask = None
        else:
            mask = torch.where(allowed, 0.0, float("-inf")).to(self.keys.dtype).unsqueeze(1)
        write = CacheWrite(self, self.head_offsets + slots.unsqueeze(2), positions.clamp_max(self.capacity - 1),
                           mask, visible)
        self.lengths.add_(added)
        return write

    def nbytes(self) -> int:
        return self.keys.numel() * self.keys.element_size() * 2


@dataclasses.dataclass
class CacheWrite:
    """One cached call's plan, shared by every layer: each new token's row in a cache layer
    flattened to [B * H_kv * (capacity + 1), D], per head ([B, T, H_kv]), its RoPE position
    [B, T], the additive attention mask [B, 1, T, visible] (None: every query sees every
    visible slot, ``KVCache.prepare(dense=True)``)."""

    cache: KVCache
    slots: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor | None
    visible: int
    rotation: tuple[torch.Tensor, torch.Tensor] | None = None  # RoPE tables, gathered once per call

    def store(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this call's keys/values [B, T, H_kv, D] (one scatter each, strided sources
        welcome); return the layer's visible cache [B, H_kv, visible, D]."""
        cache_keys, cache_values = self.cache.keys[layer], self.cache.values[layer]
        for cache, new in ((cache_keys, keys), (cache_values, values)):
            cache.view(-1, cache.shape[-1])[self.slots] = new.to(cache.dtype)
        return cache_keys[:, :, : self.visible], cache_values[:, :, : self.visible]


# cuDNN attention builds a plan per shape (milliseconds each on H100): it is kept out of cached
# calls whose shapes change from call to call (eager steps, prefills), and left to the static
# step of a fast decoder, which has one shape for its whole life and where it is about three
# times faster than the memory-efficient kernel (21 against 65 us a layer, `small` on an H200)
VARIABLE_SHAPE_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _cached_attention_backends(static: bool):
    """PyTorch's own choice for a static step, no cuDNN otherwise."""
    return contextlib.nullcontext() if static else sdpa_kernel(VARIABLE_SHAPE_BACKENDS)


class DifferentialHeads(nn.Module):
    """Differential attention (Ye et al., "Differential Transformer", 2024) over the heads of an
    ``Attention`` layer: the same projections, parameters and KV cache as ordinary attention.

    Consecutive query heads form pairs ``(2j, 2j+1)``, key heads ``(2g, 2g+1)`` likewise, and
    the two value heads of a key pair are read as one value of twice the width. Pair ``j``
    computes two softmax maps, ``A1`` from query head 2j and key head 2g, ``A2`` from heads
    2j+1 and 2g+1 (``g`` its group under grouped-query attention), and returns
    ``RMSNorm((A1 - lambda * A2) V) * (1 - lambda_init)``, RMS-normalised per pair with a
    learned weight. ``lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init`` is
    re-parameterised by four learned vectors (initialised N(0, 0.1)), with
    ``lambda_init = 0.8 - 0.6 exp(-0.3 layer)`` as in the paper."""

    def __init__(self, head_dim: int, layer_index: int = 0, eps: float = 1e-6):
        super().__init__()
        self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * layer_index)
        self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2 = (
            nn.Parameter(torch.empty(head_dim)) for _ in range(4))
        self.norm = RMSNorm(2 * head_dim, eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The lambda vectors from torch's CPU generator (``init_weights`` calls this after the
        matrices, so a meta build initialises them as an eager build does)."""
        for vector in (self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2):
            if not vector.is_meta:
                normal_from_cpu_(vector, std=0.1)

    @staticmethod
    def num_parameters(head_dim: int, num_heads: int) -> int:
        return 4 * head_dim + 2 * head_dim  # the lambda vectors and the pair norm (shared by the pairs)

    def weight(self) -> torch.Tensor:
        """lambda, a float32 scalar."""
        first = torch.exp(torch.dot(self.lambda_q1.float(), self.lambda_k1.float()))
        second = torch.exp(torch.dot(self.lambda_q2.float(), self.lambda_k2.float()))
        return first - second + self.lambda_init

    def forward(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, attend) -> torch.Tensor:
        """q [B, T, H, D], keys/values [B, H_kv, S, D], ``attend(q, k, v)`` the layer's attention
        -> [B, H / 2, T, 2 D]."""
        pair_values = torch.cat((values[:, 0::2], values[:, 1::2]), dim=-1)
        first = attend(q[:, :, 0::2], keys[:, 0::2], pair_values)
        second = attend(q[:, :, 1::2], keys[:, 1::2], pair_values)
        out = first - self.weight().to(first.dtype) * second
        return self.norm(out) * (1.0 - self.lambda_init)


class Attention(nn.Module):
    """Causal grouped-query attention with RoPE and per-head RMS QK-norm.

    q, k and v come from one fused projection, and the q and k heads are normalised and rotated
    together as one tensor. Without a cache it is plain causal attention (training, scoring);
    with a ``CacheWrite`` the new keys/values are stored at each row's own positions and the
    queries attend over the cache under the write's mask (or, for a few new tokens without a
    window, through ``decode_attention``'s split-K kernel, which reads only the filled slots).
    Both paths, eager or replayed as a CUDA graph, run this one method. With
    ``differential_attention`` the heads are combined by ``DifferentialHeads`` (same
    projections and cache; ``layer_index`` sets its lambda_init)."""

    def __init__(self, config: StackConfig, layer_index: int = 0):
        super().__init__()
        self.config = config
        d, hd = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads = config.num_query_heads, config.num_key_value_heads
        self.qkv_proj = nn.Linear(d, (self.num_heads + 2 * self.num_kv_heads) * hd, bias=False)
        self.o_proj = nn.Linear(self.num_heads * hd, d, bias=False)
        self.q_norm = RMSNorm(hd, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(hd, config.norm_eps) if config.qk_norm else None
        if config.differential_attention:  # only then: an ordinary layer's parameters stay as they were
            self.differential = DifferentialHeads(hd, layer_index, config.norm_eps)
        else:
            self.differential = None

    def _normalized_rotated_qk(self, qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """q and k heads [B, T, H + H_kv, D], QK-normed (each with its own weight) and rotated,
        in the projection's dtype."""
        dtype = qk.dtype
        if self.q_norm is not None:
            weight = torch.cat((self.q_norm.weight.expand(self.num_heads, -1),
                                self.k_norm.weight.expand(self.num_kv_heads, -1)))
            qk = F.rms_norm(qk, (qk.shape[-1],), None, self.config.norm_eps) * weight
        return RotaryEmbedding.rotate(qk, cos, sin).to(dtype)

    def forward(
        self,
        x: torch.Tensor,
        rope: RotaryEmbedding,
        write: CacheWrite | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        batch, length, _ = x.shape
        heads, kv_heads, head_dim = self.num_heads, self.num_kv_heads, self.config.head_dim
        qkv = self.qkv_proj(x).view(batch, length, heads + 2 * kv_heads, head_dim)
        cos, sin = rope.tables(length) if write is None else write.rotation
        qk = self._normalized_rotated_qk(qkv[:, :, : heads + kv_heads], cos, sin)
        q, k, v = qk[:, :, :heads], qk[:, :, heads:], qkv[:, :, heads + kv_heads :]
        if write is None:
            keys, values = k.transpose(1, 2), v.transpose(1, 2)
        else:
            keys, values = write.store(layer, k, v)

        def attend(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
            return self._attend_heads(queries, keys, values, write)

        if self.differential is None:
            out = attend(q, keys, values)
        else:
            out = self.differential(q, keys, values, attend)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))

    def _attend_heads(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                      write: CacheWrite | None) -> torch.Tensor:
        """Queries [B, T, h, D] over keys/values [B, h_kv, S, D(v)] (all of them, causally,
        without a cache; the cache's visible slots under the write's mask with one) -> [B, h, T, Dv]."""
        batch, length, heads, head_dim = q.shape
        kv_heads = keys.shape[1]
        if write is None:
            window = self.config.window
            mask = sliding_window_mask(length, window, q.device) if 0 < window < length else None
            return self._attend(q.transpose(1, 2), keys, values, is_causal=mask is None, mask=mask,
                                grouped=heads != kv_heads)
        if self._decode_kernel_applies(q, keys, values, write):
            return decode_attention.decode_attention(q, keys, values, write.positions)
        static = length == 1 and write.visible == write.cache.capacity
        with _cached_attention_backends(static):
            if length == 1:
                # one query per row: fold the query heads of a kv group into the length
                # axis, so grouped keys/values are attended without being repeated
                folded = q.reshape(batch, kv_heads, heads // kv_heads, head_dim)
                out = self._attend(folded, keys, values, mask=write.mask, grouped=False)
                return out.reshape(batch, heads, 1, values.shape[-1])
            return self._attend(q.transpose(1, 2), keys, values, mask=write.mask, grouped=heads != kv_heads)

    def _decode_kernel_applies(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                               write: CacheWrite) -> bool:
        """A cached call that ``decode_attention`` computes exactly: each query sees every slot up
        to its position (no sliding window within the visible slots), plain heads, no dropout
        and no gradient (the kernel has no backward)."""
        window = self.config.window
        return (
            decode_attention.backend() == "triton"
            and (window == 0 or window >= write.visible)
            and self.differential is None
            and not self.training
            and not (torch.is_grad_enabled() and q.requires_grad)
            and decode_attention.usable(q, keys, values)
        )

    def _attend(self, q, k, v, is_causal: bool = False, mask=None, grouped: bool | None = None) -> torch.Tensor:
        grouped = self.num_kv_heads != self.num_heads if grouped is None else grouped
        dropout = self.config.attention_dropout if self.training else 0.0
        return F.scaled_dot_product_attention(
            q, k.to(q.dtype), v.to(q.dtype), attn_mask=None if mask is None else mask.to(q.dtype),
            dropout_p=dropout, is_causal=is_causal, enable_gqa=grouped,
        )


@functools.lru_cache(maxsize=4)  # every layer of a stack, and every step of a run, asks for the same one
def sliding_window_mask(length: int, window: int, device=None) -> torch.Tensor:
    """Additive causal mask [T, T] where query ``i`` sees keys ``i - window + 1 .. i``."""
    offsets = torch.arange(length, device=device).view(-1, 1) - torch.arange(length, device=device).view(1, -1)
    return torch.where((offsets >= 0) & (offsets < window), 0.0, float("-inf"))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), with gate and up as one fused projection."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: StackConfig, layer_index: int = 0):
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.attn = Attention(config, layer_index)
        self.mlp_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)
        self.resid_dropout = nn.Dropout(config.resid_dropout)

    def forward(self, x, rope, write: CacheWrite | None = None, layer: int = 0):
        x = x + self.resid_dropout(self.attn(self.attn_norm(x), rope, write, layer))
        return x + self.resid_dropout(self.mlp(self.mlp_norm(x)))


class TransformerStack(nn.Module):
    """``num_layers`` blocks plus a final norm, over hidden states [B, T, D].

    ``forward(x)`` is the causal full-sequence pass. ``forward(x, cache, valid)`` continues each
    row from its cached tokens: ``valid`` [B, T] (default: all) marks the real new tokens of each
    row (first ones first), the rest are computed but neither stored nor attended to. ``visible``
    bounds the attended cache slots (the eager decoder passes the longest row; a captured graph
    attends over the whole cache, so its shapes never change); ``dense``: see ``KVCache.prepare``."""

    def __init__(self, config: StackConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.rope = RotaryEmbedding(config.head_dim, config.max_sequence_length, config.rope_theta)
        self.layers = nn.ModuleList(TransformerBlock(config, index) for index in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.gradient_checkpointing = False

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        valid: torch.Tensor | None = None,
        visible: int | None = None,
        dense: bool = False,
    ) -> torch.Tensor:
        write = None
        if cache is not None:
            if valid is None:
                valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            write = cache.prepare(valid, visible, self.config.window, dense)
            write.rotation = self.rope.tables(x.shape[1], write.positions)
        for index, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training and cache is None:
                x = torch.utils.checkpoint.checkpoint(layer, x, self.rope, use_reentrant=False)
            else:
                x = layer(x, self.rope, write, index)
        return self.norm(x)

    def new_cache(self, batch_size: int, device=None, dtype=None, max_len=None) -> KVCache:
        dtype = dtype or self.norm.weight.dtype
        return KVCache(self.config, batch_size, device or self.norm.weight.device, dtype, max_len)

    def reset_parameters(self) -> None:
        """Every weight and buffer from torch's CPU generator: GPT-2 init of the matrices, unit
        norms, the rotary tables (``ByteModel.init_weights`` of the families calls this)."""
        init_weights(self, num_layers=self.config.num_layers)
        reset_norms(self)
        self.rope.reset_parameters()


def init_weights(module: nn.Module, std: float = 0.02, num_layers: int = 1) -> None:
    """GPT-2 style init; output projections scaled by depth. The draws come from torch's CPU
    generator whatever the device, so a model materialised on a GPU gets the weights a CPU
    build under the same seed gets."""
    for name, param in module.named_parameters():
        if param.dim() < 2:
            continue
        scale = std / math.sqrt(2 * num_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else std
        normal_from_cpu_(param, std=scale)
    for sub in module.modules():  # then the differential-attention lambdas, in module order
        if isinstance(sub, DifferentialHeads):
            sub.reset_parameters()


@torch.no_grad()
def normal_from_cpu_(tensor: torch.Tensor, std: float) -> None:
    """Fill ``tensor`` with N(0, std) drawn on the CPU (in place on a CPU tensor: the same draws
    as ``nn.init.normal_``)."""
    if tensor.device.type == "cpu":
        nn.init.normal_(tensor, mean=0.0, std=std)
    else:
        tensor.copy_(torch.empty(tensor.shape, dtype=tensor.dtype).normal_(0.0, std))


@torch.no_grad()
def reset_norms(module: nn.Module) -> None:
    """Every RMSNorm weight in ``module`` back to ones."""
    for sub in module.modules():
        if isinstance(sub, RMSNorm):
            sub.weight.fill_(1.0)


def fuse_legacy_projections(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights saved with separate q/k/v and gate/up projections (omnibyte 0.1), fused into
    ``qkv_proj`` and ``gate_up_proj`` as the blocks hold them now; other weights pass through."""
    fused = dict(weights)
    for name in [n for n in weights if n.endswith("attn.q_proj.weight")]:
        prefix = name[: -len("q_proj.weight")]
        parts = [fused.pop(prefix + f"{kind}_proj.weight", None) for kind in "qkv"]
        if all(part is not None for part in parts):
            fused[prefix + "qkv_proj.weight"] = torch.cat(parts)
    for name in [n for n in weights if n.endswith("mlp.gate_proj.weight")]:
        prefix = name[: -len("gate_proj.weight")]
        parts = [fused.pop(prefix + f"{kind}_proj.weight", None) for kind in ("gate", "up")]
        if all(part is not None for part in parts):
            fused[prefix + "gate_up_proj.weight"] = torch.cat(parts)
    return fused


class CrossAttention(nn.Module):
    """Queries attending to keys chosen for each of them, in two patterns (no causal mask, no
    rotary positions; pre-norm on both sides and per-head RMS QK-norm):

    * ``gathered``: each query reads its own ``W`` keys, picked by index from a key set (bytes
      reading the latent outputs of the patches before theirs; patches reading memory slots);
    * ``segments``: each key belongs to exactly one query (a patch pooling its own bytes): a
      softmax per segment, computed with scatters, linear in the number of keys.

    ``keys(memory)`` projects a key set once; a decoder keeps the projections."""

    def __init__(self, query_size: int, key_size: int, num_heads: int, norm_eps: float = 1e-6):
        super().__init__()
        if query_size % num_heads:
            raise ConfigError("cross_attention_heads", f"must divide the width ({query_size}), got {num_heads}")
        self.num_heads, self.head_dim = num_heads, query_size // num_heads
        self.query_norm = RMSNorm(query_size, norm_eps)
        self.key_norm = RMSNorm(key_size, norm_eps)
        self.q_proj = nn.Linear(query_size, query_size, bias=False)
        self.kv_proj = nn.Linear(key_size, 2 * query_size, bias=False)
        self.o_proj = nn.Linear(query_size, query_size, bias=False)
        self.q_norm = RMSNorm(self.head_dim, norm_eps)
        self.k_norm = RMSNorm(self.head_dim, norm_eps)

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> scaled, normalised queries [B, T, H, hd]."""
        q = self.q_proj(self.query_norm(x)).unflatten(-1, (self.num_heads, self.head_dim))
        return self.q_norm(q) / math.sqrt(self.head_dim)

    def keys(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, N, Dk] -> keys and values [B, N, H, hd]."""
        k, v = self.kv_proj(self.key_norm(memory)).unflatten(-1, (2 * self.num_heads, self.head_dim)).chunk(2, dim=-2)
        return self.k_norm(k), v

    def _out(self, heads: torch.Tensor) -> torch.Tensor:
        return self.o_proj(heads.flatten(-2).to(self.o_proj.weight.dtype))

    def gathered(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, index: torch.Tensor,
                 valid: torch.Tensor) -> torch.Tensor:
        """x [B, T, D] reads keys/values [B, N, H, hd] at ``index`` [B, T, W] where ``valid``
        [B, T, W] (at least one per query) -> [B, T, D]."""
        batch, length, width = index.shape
        flat = index.clamp(0, keys.shape[1] - 1).reshape(batch, length * width, 1, 1)
        flat = flat.expand(-1, -1, self.num_heads, self.head_dim)
        picked_keys = keys.gather(1, flat).view(batch, length, width, self.num_heads, self.head_dim)
        picked_values = values.gather(1, flat).view(batch, length, width, self.num_heads, self.head_dim)
        return self.attend_picked(x, picked_keys, picked_values, valid)

    def attend_picked(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                      valid: torch.Tensor) -> torch.Tensor:
        """x [B, T, D] reads its own keys/values [B, T, W, H, hd] where ``valid`` [B, T, W]."""
        q = self.queries(x)
        scores = torch.einsum("bthd,btwhd->bthw", q.float(), keys.float())
        scores = scores.masked_fill(~valid.unsqueeze(2), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return self._out(torch.einsum("bthw,btwhd->bthd", weights, values.float()))

    def segments(self, queries: torch.Tensor, memory: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
        """Query ``s`` of ``queries`` [B, S, D] reads the keys of ``memory`` [B, T, Dk] whose
        ``segment`` [B, T] is ``s`` (a segment id >= S drops the key) -> [B, S, D]; a query
        with no key reads zeros."""
        batch, count, _ = queries.shape
        q = self.queries(queries).float()
        k, v = self.keys(memory)
        segment = segment.clamp_max(count)  # S: the dropped keys' segment
        q = torch.cat((q, q.new_zeros(batch, 1, *q.shape[2:])), dim=1)
        per_key = segment.view(batch, -1, 1, 1).expand(-1, -1, self.num_heads, self.head_dim)
        scores = (q.gather(1, per_key) * k.float()).sum(-1)  # [B, T, H]
        per_score = per_key[..., 0]
        # the running max per segment only keeps exp() in range; it cancels out of the softmax
        peak = scores.new_full((batch, count + 1, self.num_heads), float("-inf"))
        peak = peak.scatter_reduce(1, per_score, scores.detach(), "amax").gather(1, per_score)
        weights = torch.exp(scores - peak)
        total = scores.new_zeros(batch, count + 1, self.num_heads).scatter_add(1, per_score, weights)
        summed = scores.new_zeros(batch, count + 1, self.num_heads, self.head_dim)
        summed = summed.scatter_add(1, per_key, weights.unsqueeze(-1) * v.float())
        heads = summed[:, :count] / total[:, :count].clamp_min(torch.finfo(summed.dtype).tiny).unsqueeze(-1)
        return self._out(heads)

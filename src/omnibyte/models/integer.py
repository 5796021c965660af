"""Exact integer numerics for the flat family: next-byte frequencies that are bit-identical on
every CPU and every GPU.

``IntegerFlatModel.from_float(model)`` quantizes a ``BytePredictor`` once, on the CPU in
float64 (the same weights always give the same integers): int8 weights with one fixed-point
scale per output channel, int64 fixed-point activations, and every nonlinearity through
integer arithmetic or integer tables. Its decoder (the usual ``prefill``/``step``/``reset``
protocol) returns integer frequencies for the range coder, not logits.

Why it is exact on any device:

* every elementwise operation is an integer operation on int64 tensors (add, multiply,
  floor division, arithmetic shifts, clamps, table gathers, integer sums): the same result
  on any hardware and in any reduction order;
* matrix products (the only thing CUDA has no int64 kernel for) multiply integer-valued
  tensors. They run as float64 products (``matmul="float64"``, what CUDA runs) or as int64
  products (``matmul="int64"``, CPU only, the reference); on the CPU the linear layers run as
  int8 x int8 products with int32 sums (``matmul="int8"``, the CPU default: each 16-bit
  mantissa split into two int8 halves, ``int8_linear``), exact as long as no sum leaves int32,
  which the bounds below guarantee and a check of this machine's int8 kernel confirms
  (``int8_products_exact``). Every input of a product is bounded
  (below), so every partial sum, in ANY summation order, is an integer of magnitude below
  2**53, which float64 represents exactly: the float64 result is the exact integer result.
  The bounds are checked when the model is built (``_check_exact``).

  - a linear layer: inputs narrowed to |m| <= 2**15 per row (``narrow``), weights |q| <= 127,
    so |partial sum| <= 2**15 * 127 * K (K the input width) < 2**53 for K < 2**31; the
    requantization multiplies the sum by a multiplier < 2**15 in int64: < 2**63 for K < 2**26;
  - attention scores: queries and keys in a static 15-bit format (their bound after QK-norm
    is known from the norm weights), so |q.k| <= 2**30 * head_dim < 2**53;
  - attention-weighted values: weights <= 2**16 (exp table), values in a static format of
    ``value_bits`` bits (their bound is known from the weights: Cauchy-Schwarz over the
    normalised input), over at most ``max_sequence_length`` positions:
    2**16 * 2**value_bits * positions < 2**53, which sets ``value_bits``.

* the tables (exp, sigmoid, RoPE cos/sin) are computed once per build on the CPU with
  Python's ``math`` (the C library, correctly rounded in practice) and rounded to integers;
  they are buffers of the model, so they are part of its fingerprint: a machine whose rebuild
  differed would be refused as "wrong model", never decode wrong data.

Limits: the flat family with QK-norm and ordinary attention (every flat preset); a model that
is not is refused with one line. See docs/compression.md, *Integer numerics*.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn

from omnibyte.errors import OmnibyteError
from omnibyte.models.base import NUM_BYTES, Decoder
from omnibyte.models.flat import CACHE_ALIGNMENT, BytePredictor
from omnibyte.models.graphs import GraphSteps, cache_slots
from omnibyte.models.layers import Attention, KVCache, RMSNorm, StackConfig, SwiGLU, TransformerBlock

FORMAT = "omnibyte-integer-1"  # bump when any arithmetic below changes: old fingerprints then differ
ACT_BITS = 16  # fraction bits of every wide activation (int64): residual stream, norms, linears
MANTISSA_BITS = 15  # matmul inputs are narrowed to |m| <= 2**15
WEIGHT_MAX = 127  # int8 weights
MULTIPLIER_BITS = 15  # requantization multipliers in [2**14, 2**15]
GAIN_BITS = 16  # fraction bits of the RMSNorm gains (weight * sqrt(width))
ROPE_BITS = 24  # fraction bits of the RoPE cos/sin tables
EXP_IN_BITS = 12  # the exp table's input resolution: 1/4096 nat
EXP_RANGE = 32  # nats: exp(-d) for d >= 32 is taken as 0
EXP_TABLE_BITS = 30  # fraction bits of both exp tables
ATTENTION_WEIGHT_BITS = 16  # attention weights: exp(0) = 2**16
OUTPUT_WEIGHT_BITS = 30  # next-byte weights before they become frequencies: exp(0) = 2**30
SIGMOID_IN_BITS = 8  # the sigmoid table's step: 1/256
SIGMOID_RANGE = 16  # sigmoid(x) for |x| >= 16 is taken as 0 or 1
SIGMOID_BITS = 24
RESIDUAL_LIMIT = 1 << 47  # residual stream saturates at +-2**31 (real): never reached in practice
GATE_LIMIT = 1 << 31  # SwiGLU inputs saturate at +-2**15 (real), so their product stays in int64
EXACT = 1 << 53  # float64 holds every integer below this exactly
INT64_LIMIT = 1 << 63
PRECISION = 24  # the range coder's frequency total is 2**24
MATMULS = ("float64", "int64", "int8")
INT32_LIMIT = 1 << 31


# ---- integer primitives (the same result on every device) ------------------------------

def shift_round(x: torch.Tensor, shift: int | torch.Tensor) -> torch.Tensor:
    """round(x * 2**-shift), halves up, for int64 ``x`` and an integer shift of either sign
    (a tensor broadcasts): arithmetic shifts only."""
    if isinstance(shift, int):
        if shift <= 0:
            return x << -shift
        return (x + (1 << (shift - 1))) >> shift
    x = torch.bitwise_left_shift(x, (-shift).clamp_min(0))
    right = shift.clamp_min(0)
    half = torch.bitwise_right_shift(torch.bitwise_left_shift(torch.ones_like(right), right), 1)
    return torch.bitwise_right_shift(x + half, right)


def round_right(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``shift_round`` for a tensor of shifts known to be >= 0 (a narrowed row's, a norm's): the
    same integers in 4 operations instead of 9 (every operation is a kernel launch of a step)."""
    half = torch.bitwise_right_shift(torch.bitwise_left_shift(_one(x.device), shift), 1)
    return torch.bitwise_right_shift(x + half, shift)


@functools.lru_cache(maxsize=8)
def _one(device: torch.device) -> torch.Tensor:
    return torch.ones((), dtype=torch.int64, device=device)


@functools.lru_cache(maxsize=8)
def _powers_of_two(device: torch.device) -> torch.Tensor:
    return torch.bitwise_left_shift(torch.ones(63, dtype=torch.int64), torch.arange(63)).to(device)


def bit_length(x: torch.Tensor) -> torch.Tensor:
    """Bits of every non-negative int64 (0 for 0), by comparison with the powers of two."""
    return (x.unsqueeze(-1) >= _powers_of_two(x.device)).sum(-1)


def narrow(x: torch.Tensor, bits: int = MANTISSA_BITS) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row (last axis) as ``m * 2**s``: |m| <= 2**bits, ``s`` >= 0 per row ([..., 1])."""
    shift = (bit_length(x.abs().amax(-1, keepdim=True)) - bits).clamp_min(0)
    return round_right(x, shift), shift


def int8_linear(mantissa: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``mantissa @ weight`` exactly, in int64, for int64 ``mantissa`` [..., K] with |m| <= 2**15
    and int8 ``weight`` [K, N], through int8 products with int32 sums (``torch._int_mm``,
    CPU): m = 256 * high + low with low in [-128, 127] and high in [-128, 128]; a high of 128
    (m >= 32,640) is coded as 127 plus an ``over`` row of ones, multiplied only when present.
    Every sum is at most 128 * 127 * K in magnitude: exact in int32 for K < 2**17."""
    flat = mantissa.reshape(-1, mantissa.shape[-1])
    high = (flat + 128) >> 8
    low = flat - (high << 8)
    over = high > 127
    rows = flat.shape[0]
    halves = torch.cat((high.clamp_max(127), low)).to(torch.int8)
    sums = torch._int_mm(halves, weight).to(torch.int64)
    total = (sums[:rows] << 8) + sums[rows:]
    if bool(over.any()):  # rare: a mantissa of 32,640 or more
        total += torch._int_mm(over.to(torch.int8), weight).to(torch.int64) << 8
    return total.view(*mantissa.shape[:-1], weight.shape[1])


@functools.lru_cache(maxsize=None)
def int8_products_exact() -> bool:
    """Whether this machine's int8 product kernel (``torch._int_mm`` on the CPU) gives exact
    int32 sums on the extreme inputs ``int8_linear`` can feed it. Some kernels (int8 ones
    without VNNI that add pairs in saturating int16) are not exact there; integer numerics
    then use float64 products, which give the same integers."""
    if not hasattr(torch, "_int_mm"):
        return False
    generator = torch.Generator().manual_seed(0)
    width = 1040
    extremes = torch.tensor([127, -128, 127, 127, -128, -128, 0, 1], dtype=torch.int64)
    patterns = [extremes.repeat_interleave(width // 8).roll(shift) for shift in range(0, width, 130)]
    activations = torch.stack(patterns + [torch.full((width,), value) for value in (127, -128)]
                              + [torch.randint(-128, 128, (width,), generator=generator) for _ in range(6)])
    weights = torch.stack([torch.full((width,), value) for value in (127, -127, 1)]
                          + [torch.randint(-127, 128, (width,), generator=generator) for _ in range(13)], dim=1)
    expected = activations @ weights  # int64, the reference
    try:
        for size in (width, 320, 64, 17):
            got = torch._int_mm(activations[:, :size].to(torch.int8).contiguous(),
                                weights[:size].to(torch.int8).contiguous())
            if not torch.equal(got.to(torch.int64), activations[:, :size] @ weights[:size]):
                return False
        return torch.equal(torch._int_mm(activations.to(torch.int8), weights.to(torch.int8)).to(torch.int64),
                           expected)
    except (RuntimeError, NotImplementedError):
        return False


def default_matmul(device: str | torch.device | None) -> str:
    """int8 products on a CPU whose int8 kernel is exact, float64 products elsewhere."""
    device_type = torch.device(device).type if device is not None else "cpu"
    return "int8" if device_type == "cpu" and int8_products_exact() else "float64"


def isqrt(n: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(n)) for int64 ``n`` in [2**59, 2**62), exactly: the float64 square root is
    within 1 of it (n rounds to float64 with a relative error of 2**-53 and sqrt is correctly
    rounded, so the root, near 2**30, is off by about 2**-23), then one integer correction each
    way makes it exact. Which side the float lands on may differ between machines; the result
    cannot. (The squares stay below (2**31 + 1)**2 < 2**63.)"""
    root = n.to(torch.float64).sqrt().to(torch.int64)
    root = root - (root * root > n).long()
    return root + ((root + 1) * (root + 1) <= n).long()


def fixed_point(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive float64 ``values`` (CPU) as ``multiplier * 2**-shift`` with the multiplier in
    [2**14, 2**15]: exact float64 operations only (frexp, a power-of-two scaling, rounding)."""
    mantissa, exponent = torch.frexp(values.to(torch.float64))
    multiplier = torch.round(mantissa * (1 << MULTIPLIER_BITS)).to(torch.int64)
    return multiplier, MULTIPLIER_BITS - exponent.to(torch.int64)


def _check_exact(what: str, bound: int, limit: int = EXACT) -> None:
    """Refuse a model whose integer products could leave the exact range (a one-line error)."""
    if bound >= limit:
        raise OmnibyteError(f"this model is too wide for integer numerics ({what}: {bound:.3g} >= {limit:.3g})")


# ---- tables (built once per model on the CPU, then buffers of the model) ---------------------

def _rounded(values: list[float], bits: int) -> torch.Tensor:
    return torch.tensor([round(value * (1 << bits)) for value in values], dtype=torch.int64)


class IntegerArithmetic(nn.Module):
    """The shared tables (exp, sigmoid, RoPE) and the matmul kind of one integer model."""

    def __init__(self, head_dim: int, max_len: int, theta: float, matmul: str = "float64"):
        super().__init__()
        self.matmul_kind = matmul
        step = 1.0 / (1 << EXP_IN_BITS)
        high = [math.exp(-index * 256 * step) for index in range(EXP_RANGE * (1 << EXP_IN_BITS) // 256)]
        self.register_buffer("exp_high", _rounded(high, EXP_TABLE_BITS))
        self.register_buffer("exp_low", _rounded([math.exp(-index * step) for index in range(256)], EXP_TABLE_BITS))
        # exp of every table index at each output width in use, from the two tables above (the
        # same integers in one look-up instead of two, a product and a rounding: the attention
        # weights are the largest tensors an integer pass makes); derived, so not in the
        # fingerprint. One 0 past the end stands for every index beyond the table (exp rounds to 0
        # there), so a look-up is one clamp and one ``take``.
        index = torch.arange(self.exp_high.shape[0] * 256)
        products = self.exp_high[index >> 8] * self.exp_low[index & 255]
        for bits in (ATTENTION_WEIGHT_BITS, OUTPUT_WEIGHT_BITS):
            table = torch.cat((shift_round(products, 2 * EXP_TABLE_BITS - bits), torch.zeros(1, dtype=torch.int64)))
            self.register_buffer(f"exp_{bits}", table, persistent=False)
        points = range(-SIGMOID_RANGE << SIGMOID_IN_BITS, (SIGMOID_RANGE << SIGMOID_IN_BITS) + 1)
        sigmoid = [1.0 / (1.0 + math.exp(-point / (1 << SIGMOID_IN_BITS))) for point in points]
        self.register_buffer("sigmoid", _rounded(sigmoid, SIGMOID_BITS))
        half = head_dim // 2
        inverse = [theta ** (-2.0 * index / head_dim) for index in range(half)]
        angles = [position * frequency for position in range(max_len) for frequency in inverse]
        shape = (max_len, half)
        self.register_buffer("cos", _rounded([math.cos(a) for a in angles], ROPE_BITS).view(shape).repeat(1, 2))
        self.register_buffer("sin", _rounded([math.sin(a) for a in angles], ROPE_BITS).view(shape).repeat(1, 2))

    def product(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a @ b of integer-valued tensors whose partial sums stay below 2**53 (the callers'
        bounds): exact in float64 in any order, or in int64 (CPU). (With ``int8`` products,
        only the linear layers change: ``IntegerLinear``.)"""
        if self.matmul_kind == "int64":
            return torch.matmul(a.to(torch.int64), b.to(torch.int64))
        return torch.matmul(a.to(torch.float64), b.to(torch.float64)).to(torch.int64)

    def exp(self, distance: torch.Tensor, bits: int) -> torch.Tensor:
        """round(exp(-d) * 2**bits) for d = ``distance`` * 2**-ACT_BITS >= 0 (int64), ``bits`` one
        of the two widths with a table: the rounded product of the two exp tables (of the high
        and the low bits of d at 1/4096 nat), looked up at once; exactly 2**bits at 0."""
        table = getattr(self, f"exp_{bits}")  # ATTENTION_WEIGHT_BITS or OUTPUT_WEIGHT_BITS; its last entry 0
        return torch.take(table, shift_round(distance, ACT_BITS - EXP_IN_BITS).clamp_max(table.shape[0] - 1))

    def silu(self, x: torch.Tensor) -> torch.Tensor:
        """x * sigmoid(x) in the activation format: the sigmoid table linearly interpolated."""
        offset = SIGMOID_RANGE << SIGMOID_IN_BITS
        scaled = x >> (ACT_BITS - SIGMOID_IN_BITS)  # floor(x * 256)
        fraction = x & ((1 << (ACT_BITS - SIGMOID_IN_BITS)) - 1)
        index = (scaled + offset).clamp(0, 2 * offset - 1)
        low, high = self.sigmoid[index], self.sigmoid[index + 1]
        sigmoid = low + shift_round((high - low) * fraction, ACT_BITS - SIGMOID_IN_BITS)
        sigmoid = torch.where(scaled >= offset, 1 << SIGMOID_BITS, torch.where(scaled < -offset, 0, sigmoid))
        return shift_round(x * sigmoid, SIGMOID_BITS)

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """RoPE (rotate-half) of x [B, T, H, D] at ``positions`` [B, T]."""
        positions = positions.clamp_max(self.cos.shape[0] - 1)
        cos, sin = self.cos[positions].unsqueeze(2), self.sin[positions].unsqueeze(2)
        first, second = x.chunk(2, dim=-1)
        return shift_round(x * cos + torch.cat((-second, first), dim=-1) * sin, ROPE_BITS)


# ---- layers: the flat block's structure, in integers -----------------------------------------

def _cpu64(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", torch.float64)


class IntegerLinear(nn.Module):
    """x @ W.T with int8 weights and one fixed-point scale per output channel."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = _cpu64(linear.weight)
        scale = weight.abs().amax(1) / WEIGHT_MAX
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        quantized = torch.round(weight / scale[:, None])
        multiplier, shift = fixed_point(scale)
        width = weight.shape[1]
        sum_bound = (1 << MANTISSA_BITS) * WEIGHT_MAX * width
        _check_exact(f"a {width}-wide product", sum_bound)
        _check_exact("a requantized product", sum_bound * (1 << MULTIPLIER_BITS), INT64_LIMIT)
        self.register_buffer("weight_t", quantized.t().contiguous())  # [in, out], integer-valued
        # the same integers for int8 products; not in the state dict (nor the fingerprint)
        self.register_buffer("weight_int8", quantized.t().to(torch.int8).contiguous(), persistent=False)
        self.int8_ok = 128 * WEIGHT_MAX * width < INT32_LIMIT
        self.register_buffer("multiplier", multiplier)
        self.register_buffer("shift", shift)
        self.dequantized = quantized * scale[:, None]  # CPU float64, for the value bound

    def forward(self, x: torch.Tensor, arithmetic: IntegerArithmetic) -> torch.Tensor:
        mantissa, shift = narrow(x)
        if arithmetic.matmul_kind == "int8" and self.int8_ok and x.device.type == "cpu":
            total = int8_linear(mantissa, self.weight_int8)
        else:
            total = arithmetic.product(mantissa, self.weight_t)
        return shift_round(total * self.multiplier, self.shift - shift)


class IntegerRMSNorm(nn.Module):
    """x / sqrt(mean(x**2) + eps) * weight over the last axis, with an integer square root.

    Narrowed to m * 2**s (|m| <= 2**15), x / rms(x) = m * sqrt(D) / sqrt(T) with
    T = sum(m**2) + D * eps * 2**(2 (ACT_BITS - s)); 2**62 / isqrt(T * 4**j) gives 1/sqrt(T) to
    31 bits, and the gain ``round(weight * sqrt(D) * 2**16)`` carries the weight."""

    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        weight = _cpu64(weight)
        width = weight.shape[-1]
        gain = torch.round(weight * math.sqrt(width) * (1 << GAIN_BITS)).to(torch.int64)
        _check_exact("an RMSNorm gain", int(gain.abs().max()) << 30, INT64_LIMIT)
        _check_exact("an RMSNorm sum of squares", width << (2 * MANTISSA_BITS), 1 << 59)
        self.register_buffer("gain", gain)
        self.eps_term = round(width * eps * (1 << (2 * ACT_BITS)))  # D * eps in squared activation units
        self.register_buffer("constants", torch.tensor([self.eps_term]))  # in the fingerprint
        self.max_weight = float(weight.abs().max())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mantissa, shift = narrow(x)
        total = (mantissa * mantissa).sum(-1, keepdim=True)
        total = (total + round_right(torch.full_like(total, self.eps_term), 2 * shift)).clamp_min(1)
        half_shift = (62 - bit_length(total)) >> 1  # total * 4**half_shift has 61 or 62 bits
        inverse = torch.div(torch.full_like(total, 1 << 62), isqrt(total << (2 * half_shift)), rounding_mode="floor")
        normalised = round_right(mantissa * inverse, 32 - half_shift)  # m / sqrt(T) * 2**30
        return shift_round(normalised * self.gain, 30 + GAIN_BITS - ACT_BITS)


def _static_bits(bound: float, bits: int) -> int:
    """Fraction bits of a static format holding |values| <= bound in ``bits`` bits."""
    return bits - max(0, math.ceil(math.log2(max(bound, 2.0**-20))))


class IntegerAttention(nn.Module):
    """Causal grouped-query attention with QK-norm and RoPE (``layers.Attention``), cached.

    Queries and keys leave the norm and the rotation bounded by sqrt(head_dim) * max|norm
    weight|, values by sqrt(width) * max_c ||norm weight * W_v[c]||_2 (Cauchy-Schwarz over the
    normalised input, whose norm is at most sqrt(width)): both are kept in static formats set
    from these bounds (a clamp keeps the format even if rounding overshoots), so the cache holds
    fixed-format integers and the products' bounds in the module docstring hold."""

    def __init__(self, attention: Attention, input_norm: RMSNorm, config: StackConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = config.num_query_heads, config.num_key_value_heads, config.head_dim
        self.qkv_proj = IntegerLinear(attention.qkv_proj)
        self.o_proj = IntegerLinear(attention.o_proj)
        norm_weight = torch.cat((attention.q_norm.weight.expand(self.heads, -1),
                                 attention.k_norm.weight.expand(self.kv_heads, -1)))
        self.qk_norm = IntegerRMSNorm(norm_weight, config.norm_eps)
        qk_bound = math.sqrt(self.head_dim) * self.qk_norm.max_weight * 1.01 + 2.0**-10
        self.qk_bits = _static_bits(qk_bound, MANTISSA_BITS)
        score_bound = (1 << (2 * MANTISSA_BITS)) * self.head_dim
        _check_exact("an attention score", score_bound)
        _check_exact("a requantized attention score", score_bound << MULTIPLIER_BITS, INT64_LIMIT)
        multiplier, shift = fixed_point(torch.tensor([2.0 ** (ACT_BITS - 2 * self.qk_bits) / math.sqrt(self.head_dim)]))
        self.score_multiplier, self.score_shift = int(multiplier), int(shift)
        self.value_bits = value_bits(config.max_sequence_length)
        # at most max_sequence_length weights are non-zero in a row (masked ones are exactly 0)
        _check_exact("attention weights x values", (1 << (ATTENTION_WEIGHT_BITS + self.value_bits))
                     * config.max_sequence_length)
        value_rows = self.qkv_proj.dequantized[(self.heads + self.kv_heads) * self.head_dim:]
        gained = value_rows * _cpu64(input_norm.weight)[None, :]
        value_bound = math.sqrt(config.hidden_size) * float(gained.norm(dim=1).max()) * 1.01 + 2.0**-10
        self.value_format = _static_bits(value_bound, self.value_bits)
        del self.qkv_proj.dequantized, self.o_proj.dequantized
        # the formats come from float64 reductions over the weights: in the fingerprint, so two
        # builds that disagreed (a reduction order could in principle move a bound across a power
        # of two) are told apart as different models
        self.register_buffer("constants", torch.tensor([self.qk_bits, self.value_bits, self.value_format,
                                                        self.score_multiplier, self.score_shift]))

    def _to_format(self, x: torch.Tensor, fraction_bits: int, bits: int) -> torch.Tensor:
        limit = 1 << bits
        return shift_round(x, ACT_BITS - fraction_bits).clamp(-limit, limit)

    def forward(self, x: torch.Tensor, arithmetic: IntegerArithmetic, write, layer: int) -> torch.Tensor:
        batch, length, _ = x.shape
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        qkv = self.qkv_proj(x, arithmetic).view(batch, length, heads + 2 * kv_heads, head_dim)
        qk = arithmetic.rotate(self.qk_norm(qkv[:, :, : heads + kv_heads]), write.positions)
        qk = self._to_format(qk, self.qk_bits, MANTISSA_BITS)
        values = self._to_format(qkv[:, :, heads + kv_heads :], self.value_format, self.value_bits)
        keys, values = write.store(layer, qk[:, :, heads:], values)  # [B, H_kv, S, D], float64
        group = heads // kv_heads
        # the query heads of a kv group folded into the length axis: plain batched products
        queries = qk[:, :, :heads].view(batch, length, kv_heads, group, head_dim).permute(0, 2, 3, 1, 4)
        scores = arithmetic.product(queries.reshape(batch, kv_heads, group * length, head_dim), keys.transpose(-1, -2))
        scores = shift_round(scores.view(batch, kv_heads, group, length, -1) * self.score_multiplier, self.score_shift)
        allowed = None if write.mask is None else (write.mask == 0).unsqueeze(1)  # [B, 1, 1, T, S]
        if allowed is not None:  # None: every visible slot is allowed (a dense step)
            scores = torch.where(allowed, scores, torch.iinfo(torch.int64).min // 2)
        weights = arithmetic.exp(scores.amax(-1, keepdim=True) - scores, ATTENTION_WEIGHT_BITS)
        if allowed is not None:
            weights = torch.where(allowed, weights, 0)
        numerator = arithmetic.product(weights.view(batch, kv_heads, group * length, -1), values)
        numerator = numerator.view(batch, kv_heads, group, length, head_dim)
        denominator = weights.sum(-1, keepdim=True)  # >= 2**16: the largest weight is exp(0)
        out = torch.div(2 * numerator + denominator, 2 * denominator, rounding_mode="floor")  # rounded
        out = shift_round(out, self.value_format - ACT_BITS)
        out = out.reshape(batch, heads, length, head_dim).transpose(1, 2).reshape(batch, length, heads * head_dim)
        return self.o_proj(out, arithmetic)


class IntegerSwiGLU(nn.Module):
    """down(silu(gate) * up), with the inputs of the product saturated to keep it in int64."""

    def __init__(self, mlp: SwiGLU):
        super().__init__()
        self.gate_up_proj = IntegerLinear(mlp.gate_up_proj)
        self.down_proj = IntegerLinear(mlp.down_proj)
        del self.gate_up_proj.dequantized, self.down_proj.dequantized

    def forward(self, x: torch.Tensor, arithmetic: IntegerArithmetic) -> torch.Tensor:
        gate, up = self.gate_up_proj(x, arithmetic).clamp(-GATE_LIMIT, GATE_LIMIT).chunk(2, dim=-1)
        return self.down_proj(shift_round(arithmetic.silu(gate) * up, ACT_BITS), arithmetic)


class IntegerBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)) (``layers.TransformerBlock``)."""

    def __init__(self, block: TransformerBlock, config: StackConfig):
        super().__init__()
        self.attn_norm = IntegerRMSNorm(block.attn_norm.weight, config.norm_eps)
        self.attn = IntegerAttention(block.attn, block.attn_norm, config)
        self.mlp_norm = IntegerRMSNorm(block.mlp_norm.weight, config.norm_eps)
        self.mlp = IntegerSwiGLU(block.mlp)

    def forward(self, x: torch.Tensor, arithmetic: IntegerArithmetic, write, layer: int) -> torch.Tensor:
        x = (x + self.attn(self.attn_norm(x), arithmetic, write, layer)).clamp(-RESIDUAL_LIMIT, RESIDUAL_LIMIT)
        return (x + self.mlp(self.mlp_norm(x), arithmetic)).clamp(-RESIDUAL_LIMIT, RESIDUAL_LIMIT)


def frequencies(logits: torch.Tensor, arithmetic: IntegerArithmetic, precision: int = PRECISION) -> torch.Tensor:
    """Integer logits [.., 256] -> integer-valued float32 weights summing to exactly
    2**precision - 256 per row (constriction adds 1 to each, as ``quantized_frequencies``):
    w = floor(e * total / sum(e)) with e = exp(logit - max) from the table (<= 2**30, so
    e * total < 2**54), the remainder to the most likely byte (the first of equals)."""
    total = (1 << precision) - NUM_BYTES
    top = logits.amax(-1, keepdim=True)
    weights = arithmetic.exp(top - logits, OUTPUT_WEIGHT_BITS)
    counts = torch.div(weights * total, weights.sum(-1, keepdim=True), rounding_mode="floor")
    remainder = total - counts.sum(-1, keepdim=True)
    counts = counts.scatter_add(-1, logits.argmax(-1, keepdim=True), remainder)
    return counts.to(torch.float32)


# ---- the model and its decoder ----------------------------------------------------------------

MIN_VALUE_BITS = 12


def value_bits(context: int) -> int:
    """Bits of a cached value: 2**16 (the largest attention weight) x 2**bits x ``context``
    positions stays below 2**53."""
    return 52 - ATTENTION_WEIGHT_BITS - math.ceil(math.log2(context + 1))


def check_integer_support(model) -> None:
    """One-line refusal of a model integer numerics cannot run."""
    model = getattr(model, "_orig_mod", model)
    if not isinstance(model, BytePredictor):
        arch = getattr(model, "arch", type(model).__name__)
        raise OmnibyteError(f"integer numerics supports the flat family only; this model is {arch!r} "
                            f"(use --numerics float)")
    if not model.config.qk_norm or model.config.differential_attention:
        raise OmnibyteError("integer numerics needs a flat model with qk_norm and without differential "
                            "attention (use --numerics float)")
    if value_bits(model.config.max_sequence_length) < MIN_VALUE_BITS:
        raise OmnibyteError(f"integer numerics needs a context below 2**24 positions; this model has "
                            f"{model.config.max_sequence_length:,} (use --numerics float)")


class IntegerFlatModel(nn.Module):
    """A quantized ``BytePredictor`` (``from_float``); ``decoder`` returns integer frequencies."""

    returns_frequencies = True

    def __init__(self, model: BytePredictor, matmul: str = "float64"):
        super().__init__()
        check_integer_support(model)
        model = getattr(model, "_orig_mod", model)
        if matmul not in MATMULS:
            raise ValueError(f"matmul must be one of {MATMULS}")
        self.config = model.config
        self.stack_config = model.config.stack()
        stack = model.transformer
        self.arithmetic = IntegerArithmetic(self.stack_config.head_dim, self.stack_config.max_sequence_length,
                                            self.stack_config.rope_theta, matmul)
        self.register_buffer("embed", torch.round(_cpu64(model.embed.weight) * (1 << ACT_BITS)).to(torch.int64))
        self.layers = nn.ModuleList(IntegerBlock(block, self.stack_config) for block in stack.layers)
        self.norm = IntegerRMSNorm(stack.norm.weight, self.stack_config.norm_eps)
        self.head = IntegerLinear(model.head)
        del self.head.dequantized

    @classmethod
    @torch.no_grad()
    def from_float(cls, model: BytePredictor, device: str | torch.device | None = None,
                   matmul: str | None = None) -> "IntegerFlatModel":
        """Quantize on the CPU (float64), then move to ``device`` (default: the model's);
        ``matmul`` None: ``default_matmul`` of that device (every kind gives the same integers)."""
        target = device if device is not None else model.device
        integer = cls(model, matmul or default_matmul(target))
        return integer.to(target)

    @property
    def matmul(self) -> str:
        return self.arithmetic.matmul_kind

    @matmul.setter
    def matmul(self, kind: str) -> None:
        if kind not in MATMULS:
            raise ValueError(f"matmul must be one of {MATMULS}")
        self.arithmetic.matmul_kind = kind

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @property
    def max_seq_len(self) -> int:
        return self.config.max_sequence_length

    def fingerprint(self) -> bytes:
        """SHA-256 over the format, the config and every integer tensor (tables included)."""
        document = {"format": FORMAT, "arch": "flat", "config": self.config.to_dict()}
        hasher = hashlib.sha256(json.dumps(document, sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            tensor = tensor.detach().to("cpu", torch.int64).contiguous().reshape(-1)
            hasher.update(f"\n{name} {tensor.numel()}\n".encode())
            hasher.update(tensor.numpy().astype("<i8").tobytes())
        return hasher.digest()

    def hidden(self, tokens: torch.Tensor, cache: KVCache, valid: torch.Tensor, visible: int | None,
               dense: bool = False) -> torch.Tensor:
        """Final-norm hidden states [B, T, D] of ``tokens`` appended to ``cache`` (``dense``:
        ``KVCache.prepare``)."""
        write = cache.prepare(valid, visible, dense=dense)
        x = self.embed[tokens]
        for index, layer in enumerate(self.layers):
            x = layer(x, self.arithmetic, write, index)
        return self.norm(x)

    def frequencies(self, hidden: torch.Tensor) -> torch.Tensor:
        return frequencies(self.head(hidden, self.arithmetic), self.arithmetic)

    def decoder(self, batch_size: int, max_len: int | None = None, fast: bool = False,
                compile: bool = False) -> "IntegerDecoder":
        if compile:  # a compiler may fuse or reorder the products; these must stay exact
            raise ValueError("integer numerics do not compile: their arithmetic must stay exact")
        return IntegerDecoder(self, batch_size, max_len, fast)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Frequencies after every position [B, T, 256] of whole sequences, in one pass."""
        decoder = self.decoder(tokens.shape[0], tokens.shape[1])
        return decoder.all_positions(tokens)


PIECE = 256  # tokens per pass of a prefill: bounds the [B, H, T, S] int64 scores


class IntegerDecoder(Decoder):
    """KV-cached decoding of an ``IntegerFlatModel`` (the cache holds integer-valued float64).
    ``prefill`` and ``step`` return integer frequencies [B, 256] (float32 integer values summing
    to 2**24 - 256), not logits. ``fast`` steps attend over the whole (aligned) cache and, on
    CUDA, replay a CUDA graph (as ``FlatDecoder``); masked positions weigh exactly 0, so both
    paths give the same integers and a stream need not record which one ran."""

    supports_speculation = True  # extend/rewind: the encoder scores whole chunks in one pass

    def __init__(self, model: IntegerFlatModel, batch_size: int, max_len: int | None = None, fast: bool = False):
        capacity = model.max_seq_len if max_len is None else min(max_len, model.max_seq_len)
        super().__init__(batch_size, capacity, model.device)
        self.model, self.fast = model, fast
        slots = cache_slots(capacity, fast, False, CACHE_ALIGNMENT)
        self.cache = KVCache(model.stack_config, batch_size, self.device, torch.float64, slots)
        self.tokens = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.one_each = torch.ones(batch_size, 1, dtype=torch.bool, device=self.device)
        self.visible: int | None = None
        self.dense = False  # an eager step with every row of the same length: no mask
        self.steps = GraphSteps({"step": self._static_step}, fast and self.device.type == "cuda")
        self.steps.capture(prepare=self.cache.reset)
        self.cache.reset()

    def _static_step(self) -> torch.Tensor:
        hidden = self.model.hidden(self.tokens[:, None], self.cache, self.one_each, self.visible, self.dense)
        return self.model.frequencies(hidden[:, -1])

    def _pieces(self, tokens: torch.Tensor, valid: torch.Tensor, counts: np.ndarray) -> Iterator[torch.Tensor]:
        written = np.zeros_like(counts)
        for start in range(0, int(counts.max()), PIECE):
            written += np.clip(counts - start, 0, PIECE)
            visible = None if self.fast else int((self.lengths + written).max())
            yield self.model.hidden(tokens[:, start : start + PIECE], self.cache, valid[:, start : start + PIECE], visible)

    def _prefill(self, tokens: torch.Tensor, valid: torch.Tensor, counts: np.ndarray) -> torch.Tensor:
        hidden = torch.cat(list(self._pieces(tokens, valid, counts)), dim=1)
        last = torch.from_numpy(np.maximum(counts - 1, 0)).to(self.device)
        return self.model.frequencies(hidden[torch.arange(self.batch_size, device=self.device), last])

    def _extend(self, tokens: torch.Tensor, valid: torch.Tensor, counts: np.ndarray) -> torch.Tensor:
        return torch.cat([self.model.frequencies(hidden) for hidden in self._pieces(tokens, valid, counts)], dim=1)

    def all_positions(self, tokens: torch.Tensor) -> torch.Tensor:
        counts, valid = self._appended(tokens, None)
        out = self._extend(tokens.to(self.device), valid, counts)
        self.lengths += counts
        return out

    def _step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.visible = None if self.fast else int(self.lengths.max()) + 1
        self.dense = self.visible is not None and int(self.lengths.min()) + 1 == self.visible
        return self.steps.run("step")

    def _rewind(self, counts: np.ndarray) -> None:
        self.cache.rewind(torch.from_numpy(counts).to(self.device))

    def _reset(self, rows: torch.Tensor) -> None:
        self.cache.reset(rows)


def integer_model(model, device: str | torch.device | None = None, matmul: str | None = None) -> IntegerFlatModel:
    """``IntegerFlatModel.from_float`` (the one-line refusals of ``check_integer_support``)."""
    return IntegerFlatModel.from_float(model, device, matmul)

"""Split-K ("flash-decoding") attention for cached calls of a few new tokens per row.

A fast decoder attends over its whole preallocated cache (a static shape, for CUDA graphs);
SDPA then reads every slot under an additive mask, and at batch 1 its kernels have only a
couple of thread blocks to do it with (about 21 us a layer for the ``small`` preset's 1,088
slots on an H200). ``decode_attention`` reads each row's filled slots only, their count read
from ``positions`` on the device (no host sync: it can be captured in a CUDA graph), and
spreads them over many programs: a first Triton kernel runs an online softmax over each
program's share of key blocks, a second one merges the shares.

It needs Triton (shipped with PyTorch's CUDA builds); Triton is imported only when the kernel
runs, so the package imports and works without it. ``usable`` says whether a call can take
it; ``Attention._attend_heads`` (models/layers.py) routes cached calls to it when it can and
when ``backend()`` is ``"triton"`` (the default; ``OMNIBYTE_DECODE_ATTENTION=sdpa`` or
``set_backend("sdpa")`` keeps PyTorch's SDPA, e.g. to compare the two). A decoder's CUDA graph
keeps the backend it was captured with.

The op is registered with ``torch.library.custom_op`` so ``torch.compile`` keeps it as one node.
Under the Triton interpreter (``TRITON_INTERPRET=1`` when a call is made) it runs on CPU
tensors, which is how the tests check it.
"""
from __future__ import annotations

import importlib.util
import math
import os
import warnings

import torch

BACKENDS = ("triton", "sdpa")
BLOCK_N = 64  # keys per block of the inner loop
MAX_SPLITS = 64  # more only lengthens the combine for one row's keys
TARGET_PROGRAMS = 264  # two per SM of an H200 (132 SMs): enough to keep every SM busy
MAX_TOKENS = 16  # new tokens per row (a decoding step, a speculative verify)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)

_backend = os.environ.get("OMNIBYTE_DECODE_ATTENTION", "triton")
if _backend not in BACKENDS:
    warnings.warn(f"OMNIBYTE_DECODE_ATTENTION={_backend!r} is not one of {', '.join(BACKENDS)}; using triton",
                  RuntimeWarning, stacklevel=1)
    _backend = "triton"


def set_backend(name: str) -> None:
    """``"triton"``: cached calls take ``decode_attention`` where ``usable``; ``"sdpa"``: never."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"decode attention backend must be one of {', '.join(BACKENDS)}, not {name!r}")
    _backend = name


def backend() -> str:
    return _backend


# looked up once (without importing Triton): torch.compile traces through ``usable``
TRITON_FOUND = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    return TRITON_FOUND


def interpreting() -> bool:
    """Triton's interpreter is on (CPU tensors run the kernels in Python; for the tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def usable(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor | None = None) -> bool:
    """The kernel can run this call: Triton importable, CUDA tensors (or the interpreter on), a
    power-of-two head size in [16, 256], at most ``MAX_TOKENS`` new tokens, a float dtype, and
    whole groups of query heads per key-value head."""
    values = keys if values is None else values
    head_dim = q.shape[-1]
    return (
        q.dim() == 4 and keys.dim() == 4 and values.shape == keys.shape
        and q.shape[1] <= MAX_TOKENS
        and 16 <= head_dim <= 256 and head_dim & (head_dim - 1) == 0
        and keys.shape[-1] == head_dim and keys.shape[0] == q.shape[0]
        and q.shape[2] % keys.shape[1] == 0
        and q.dtype in DTYPES and keys.dtype in DTYPES and values.dtype in DTYPES
        and (q.is_cuda or interpreting())
        and triton_available()
    )


def default_splits(seq_len: int, batch: int, kv_heads: int) -> int:
    """Splits of each (row, kv head)'s keys, from static sizes only (one shape per decoder):
    enough programs to fill the GPU, never more splits than key blocks."""
    programs = batch * kv_heads
    wanted = -(-TARGET_PROGRAMS // programs)
    return max(1, min(wanted, MAX_SPLITS, -(-seq_len // BLOCK_N)))


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor,
                     scale: float | None = None, splits: int | None = None) -> torch.Tensor:
    """q [B, T, H, D] (rotated queries of T new tokens per row), keys/values [B, H_kv, S, D]
    (one layer's visible cache; H a multiple of H_kv, grouped without repeating), positions
    [B, T] long (each new token's slot): query (b, t) attends to slots 0..positions[b, t]
    -> [B, H, T, D] in q's dtype. ``scale`` defaults to 1/sqrt(D); ``splits`` to
    ``default_splits``. The caller checks ``usable`` first."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    splits = default_splits(keys.shape[2], q.shape[0], keys.shape[1]) if splits is None else int(splits)
    if torch.compiler.is_compiling():  # one opaque node of the compiled graph
        return torch.ops.omnibyte.decode_attention(q, keys, values, positions, scale, splits)
    # called directly otherwise: a custom op's first call imports torch._dynamo, seconds of a
    # short `omnibyte generate` run's start-up
    return _run_kernels(q, keys, values, positions, scale, splits)


@torch.library.custom_op("omnibyte::decode_attention", mutates_args=())
def _decode_attention_op(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor,
                         scale: float, splits: int) -> torch.Tensor:
    return _run_kernels(q, keys, values, positions, scale, splits)


def _run_kernels(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor,
                 scale: float, splits: int) -> torch.Tensor:
    from omnibyte.models._decode_attention_kernels import kernels

    batch, tokens, heads, head_dim = q.shape
    kv_heads, seq_len = keys.shape[1], keys.shape[2]
    group = heads // kv_heads
    rows = max(16, _next_power_of_two(group * tokens))  # tl.dot wants at least 16 rows
    if not (q.is_cuda or interpreting()):
        raise RuntimeError("decode_attention runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1")
    split_kernel, combine_kernel = kernels(interpreting())
    # partial results of every (row, kv head, split, query row); only the ones a split takes
    # part in are written, and only those are read
    maxima = torch.empty(batch * kv_heads * splits * rows, device=q.device, dtype=torch.float32)
    sums = torch.empty_like(maxima)
    partial = torch.empty(batch * kv_heads * splits * rows * head_dim, device=q.device, dtype=torch.float32)
    out = torch.empty(batch, heads, tokens, head_dim, device=q.device, dtype=q.dtype)
    shared = dict(GROUP=group, T=tokens, T_PAD=_next_power_of_two(tokens), ROWS=rows, D=head_dim,
                  BLOCK_N=BLOCK_N)
    split_kernel[(batch * kv_heads, splits)](
        q, keys, values, positions, maxima, sums, partial,
        *q.stride(), *keys.stride(), *values.stride(), *positions.stride(),
        kv_heads, seq_len, scale * math.log2(math.e), splits,
        IEEE=q.dtype == torch.float32, **shared,
        num_warps=4 if rows * head_dim <= 32 * 128 else 8,  # the accumulator lives in registers
    )
    combine_kernel[(batch * kv_heads, group * tokens)](
        positions, maxima, sums, partial, out, *out.stride(), *positions.stride(),
        kv_heads, seq_len, splits, SPLITS_PAD=_next_power_of_two(splits), **shared,
    )
    return out


@_decode_attention_op.register_fake
def _(q, keys, values, positions, scale, splits):
    batch, tokens, heads, head_dim = q.shape
    return q.new_empty(batch, heads, tokens, head_dim)


def decode_attention_reference(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, positions: torch.Tensor,
                               scale: float | None = None) -> torch.Tensor:
    """What ``decode_attention`` computes, as masked softmax attention in float32 -> [B, H, T, D]
    in q's dtype."""
    heads, kv_heads = q.shape[2], keys.shape[1]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    queries = q.float().transpose(1, 2)  # [B, H, T, D]
    keys = keys.float().repeat_interleave(heads // kv_heads, dim=1)
    values = values.float().repeat_interleave(heads // kv_heads, dim=1)
    scores = queries @ keys.transpose(-1, -2) * scale  # [B, H, T, S]
    slots = torch.arange(keys.shape[2], device=q.device)
    allowed = slots.view(1, 1, 1, -1) <= positions.view(positions.shape[0], 1, -1, 1)
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return (weights @ values).to(q.dtype)

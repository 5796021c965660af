"""The Triton kernels of ``decode_attention`` (imported only when they run: needs Triton).

The functions here are plain Python; ``kernels(interpret)`` decorates them, with ``triton.jit``
for the GPU or as Triton interpreter functions (CPU tensors, for the tests), so one process can
hold both. Scores are kept in base 2 (the scale carries log2(e)) so the softmax uses exp2.

Both kernels split a row's filled keys the same way, from the row's longest position read on
the device: ``blocks = cdiv(last + 1, BLOCK_N)`` key blocks, ``cdiv(blocks, splits)`` per
split. Query row ``r`` (head ``g`` of the kv group, token ``t``: ``r = t * GROUP + g``) takes
part in split ``s`` iff the split's first key is at or before the row's own position, so the
combine kernel knows which partial results were written without reading anything else.
"""
from __future__ import annotations

import functools

import triton
import triton.language as tl


@triton.jit  # the interpreter runs a jitted helper as plain Python too
def _row_split(P, b, stride_pb, stride_pt, seq_len, splits,
               T: tl.constexpr, T_PAD: tl.constexpr, BLOCK_N: tl.constexpr):
    """Row ``b``'s last filled slot (its new tokens' largest position) and the keys each split of
    it takes: both kernels split the same way from these."""
    tokens = tl.arange(0, T_PAD)
    token_positions = tl.load(P + b * stride_pb + tokens * stride_pt, mask=tokens < T, other=0)
    last = tl.max(tl.minimum(tl.maximum(token_positions, 0), seq_len - 1), axis=0)
    per_split = tl.cdiv(tl.cdiv(last + 1, BLOCK_N), splits) * BLOCK_N
    return last, per_split


def _split_kernel(
    Q, K, V, P, M_out, L_out, Acc_out,
    stride_qb, stride_qt, stride_qh, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_pb, stride_pt,
    kv_heads, seq_len, qk_scale, splits,
    GROUP: tl.constexpr, T: tl.constexpr, T_PAD: tl.constexpr, ROWS: tl.constexpr,
    D: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):
    """One (row b, kv head) x one split: online softmax of its query rows over the split's keys;
    writes the partial max (base 2), sum and unnormalised output of every row."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = (pid // kv_heads).to(tl.int64)
    head = (pid % kv_heads).to(tl.int64)
    last, per_split = _row_split(P, b, stride_pb, stride_pt, seq_len, splits, T, T_PAD, BLOCK_N)
    start = split * per_split
    end = tl.minimum(start + per_split, last + 1)  # start >= end: nothing to do, the loop is empty

    rows = tl.arange(0, ROWS)
    real = rows < GROUP * T
    token, group_head = rows // GROUP, rows % GROUP
    positions = tl.load(P + b * stride_pb + token * stride_pt, mask=real, other=-1)
    positions = tl.where(real, tl.minimum(tl.maximum(positions, 0), seq_len - 1), -1)
    dims = tl.arange(0, D)
    q_offsets = b * stride_qb + token[:, None] * stride_qt \
        + (head * GROUP + group_head[:, None]) * stride_qh + dims[None, :] * stride_qd
    q = tl.load(Q + q_offsets, mask=real[:, None], other=0.0)
    k_base = K + b * stride_kb + head * stride_kh
    v_base = V + b * stride_vb + head * stride_vh

    m_i = tl.full([ROWS], float("-inf"), tl.float32)
    l_i = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, D], tl.float32)
    # a while loop, not range(start, end): Triton 3.6's interpreter cannot take loop bounds
    # computed from loaded values as a range under NumPy 2
    block_start = start
    while block_start < end:
        keys_at = block_start + tl.arange(0, BLOCK_N)
        in_range = keys_at < end
        k = tl.load(k_base + keys_at[:, None] * stride_ks + dims[None, :] * stride_kd,
                    mask=in_range[:, None], other=0.0).to(q.dtype)
        if IEEE:
            scores = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            scores = tl.dot(q, tl.trans(k))
        scores = scores * qk_scale
        allowed = keys_at[None, :] <= positions[:, None]
        scores = tl.where(allowed, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing allowed yet
        alpha = tl.math.exp2(m_i - m_safe)
        p = tl.math.exp2(scores - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + keys_at[:, None] * stride_vs + dims[None, :] * stride_vd,
                    mask=in_range[:, None], other=0.0).to(q.dtype)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v)
        m_i = m_new
        block_start += BLOCK_N

    written = real & (start <= positions)
    slot = (pid.to(tl.int64) * splits + split) * ROWS + rows
    tl.store(M_out + slot, m_i, mask=written)
    tl.store(L_out + slot, l_i, mask=written)
    tl.store(Acc_out + slot[:, None] * D + dims[None, :], acc, mask=written[:, None])


def _combine_kernel(
    P, M_in, L_in, Acc_in, Out,
    stride_ob, stride_oh, stride_ot, stride_od,
    stride_pb, stride_pt,
    kv_heads, seq_len, splits,
    GROUP: tl.constexpr, T: tl.constexpr, T_PAD: tl.constexpr, ROWS: tl.constexpr,
    D: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS_PAD: tl.constexpr,
):
    """One query row of one (row b, kv head): merges the splits it took part in."""
    pid = tl.program_id(0)
    row = tl.program_id(1)
    b = (pid // kv_heads).to(tl.int64)
    head = (pid % kv_heads).to(tl.int64)
    last, per_split = _row_split(P, b, stride_pb, stride_pt, seq_len, splits, T, T_PAD, BLOCK_N)

    token, group_head = row // GROUP, row % GROUP
    position = tl.load(P + b * stride_pb + token * stride_pt)
    position = tl.minimum(tl.maximum(position, 0), seq_len - 1)
    split = tl.arange(0, SPLITS_PAD)
    written = (split < splits) & (split * per_split <= position)  # split 0 always is
    slot = (pid.to(tl.int64) * splits + split) * ROWS + row
    m = tl.load(M_in + slot, mask=written, other=float("-inf"))
    l = tl.load(L_in + slot, mask=written, other=0.0)
    dims = tl.arange(0, D)
    acc = tl.load(Acc_in + slot[:, None] * D + dims[None, :], mask=written[:, None], other=0.0)
    weights = tl.where(written, tl.math.exp2(m - tl.max(m, axis=0)), 0.0)
    out = tl.sum(weights[:, None] * acc, axis=0) / tl.sum(weights * l, axis=0)
    out_offsets = b * stride_ob + (head * GROUP + group_head) * stride_oh + token * stride_ot + dims * stride_od
    tl.store(Out + out_offsets, out.to(Out.dtype.element_ty))


@functools.lru_cache(maxsize=2)
def kernels(interpret: bool):
    """(split kernel, combine kernel), compiled for the GPU or run by Triton's interpreter."""
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction
        return InterpretedFunction(_split_kernel), InterpretedFunction(_combine_kernel)
    return triton.jit(_split_kernel), triton.jit(_combine_kernel)

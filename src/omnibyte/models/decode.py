"""Fast incremental decoding: one static-shape step, replayed as a CUDA graph.

The eager ``model.step`` slices the cache to the current length, so every step has new
shapes and pays Python and kernel-launch overhead for each of its few hundred small ops.
``FastDecoder`` instead runs a step whose shapes never change:

* the token and the position live in preallocated device tensors (inputs are ``copy_``-ed in);
* the new key/value is written into the preallocated cache with ``index_copy_`` at that position;
* every query attends over the *whole* cache with a mask ``key_position <= position``
  (grouped-query heads are folded into the query-length axis, so K/V are never repeated);
* q/k/v and gate/up projections run as one matmul each over stacked copies of the weights
  (re-stacked at every ``prefill``, so a decoder stays right after the model is trained further).

On CUDA that step is captured once into a ``torch.cuda.CUDAGraph`` and each decode step is one
``replay()``; on CPU (or with ``graph=False``) the same static step runs eagerly, which is
how the tests check it. Prefill uses the model's ordinary forward over the same cache.

The pieces are shared with the hierarchical decoder (``multiscale_decode``): ``static_step``
(one token through a transformer or recurrent stack), ``fused_projection_weights`` /
``refresh_fused_weights`` and ``capture_graph``.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from omnibyte.models.layers import Attention, KVCache, TransformerStack


def fused_projection_weights(stack: TransformerStack) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the q|k|v and gate|up weights stacked: one matmul each instead of three and two."""
    weights = []
    for block in stack.layers:
        attn, mlp = block.attn, block.mlp
        weights.append((torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
                        torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])))
    return weights


@torch.no_grad()
def refresh_fused_weights(
    stack: TransformerStack, fused_weights: list[tuple[torch.Tensor, torch.Tensor]]
) -> None:
    """Re-stack ``fused_weights`` in place from the stack's current weights (a captured graph
    holds their addresses, so they are overwritten, never replaced)."""
    for (qkv, gate_up), (new_qkv, new_gate_up) in zip(fused_weights, fused_projection_weights(stack)):
        qkv.copy_(new_qkv)
        gate_up.copy_(new_gate_up)


def static_attention(
    attn: Attention,
    x: torch.Tensor,
    rope,
    qkv_weight: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    position: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """One-token attention [B, 1, D] at tensor ``position`` over a full cache layer [B, H_kv, T, Dh]."""
    batch, heads, kv_heads = x.shape[0], attn.num_heads, attn.num_kv_heads
    # one token: [B, 1, heads * Dh] is already laid out as [B, heads, 1, Dh]
    qkv = F.linear(x, qkv_weight).view(batch, heads + 2 * kv_heads, 1, attn.config.head_dim)
    q, k, v = qkv.split([heads, kv_heads, kv_heads], dim=1)
    q, k = rope.apply(torch.cat([attn.q_norm(q), attn.k_norm(k)], dim=1), position).split([heads, kv_heads], 1)
    index = position.view(1)
    keys.index_copy_(2, index, k.to(keys.dtype))
    values.index_copy_(2, index, v.to(values.dtype))
    # query head h uses kv head h // group (as enable_gqa does): fold the group into the length axis
    q = q.reshape(batch, kv_heads, heads // kv_heads, q.shape[-1])
    out = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask)
    return attn.o_proj(out.reshape(batch, 1, -1))


def static_stack_step(
    stack: TransformerStack,
    x: torch.Tensor,
    cache: KVCache,
    position: torch.Tensor,
    fused_weights: list[tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """``stack(x, cache)`` for one token [B, 1, D] with shapes independent of ``position``."""
    key_positions = torch.arange(cache.capacity, device=x.device)
    # additive mask, built once per step rather than converted from bool in every layer
    mask = torch.zeros(1, 1, 1, cache.capacity, dtype=x.dtype, device=x.device)
    mask.masked_fill_(key_positions > position, float("-inf"))
    for index, (block, (qkv_weight, gate_up_weight)) in enumerate(zip(stack.layers, fused_weights)):
        h = block.attn_norm(x)
        x = x + static_attention(block.attn, h, stack.rope, qkv_weight, cache.keys[index],
                                 cache.values[index], position, mask)
        gate, up = F.linear(block.mlp_norm(x), gate_up_weight).chunk(2, dim=-1)
        x = x + block.mlp.down_proj(F.silu(gate) * up)
    return stack.norm(x)


def static_step(
    stack: nn.Module,
    x: torch.Tensor,
    cache: Any,
    position: torch.Tensor,
    fused_weights: list[tuple[torch.Tensor, torch.Tensor]] | None,
) -> torch.Tensor:
    """One token [B, 1, D] through a transformer stack (``static_stack_step``) or a recurrent
    one (Mamba: its cached step already has static shapes and no host syncs)."""
    if isinstance(stack, TransformerStack):
        return static_stack_step(stack, x, cache, position, fused_weights)
    return stack(x, cache)


def _graph_autocast():
    """Inside autocast, capture with its weight-cast cache off (as ``make_graphed_callables``
    requires): cached casts would be freed when the caller's autocast region ends while the graph
    still reads them, so the graph does its own casts."""
    if torch.is_autocast_enabled("cuda"):
        return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)
    return contextlib.nullcontext()


@torch.no_grad()
def capture_graph(
    step: Callable[[], Any], prepare: Callable[[], None] | None = None, warmup: int = 3
) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Warm ``step`` up on a side stream, then capture one call of it: (graph, its output).

    ``prepare`` runs before every warm-up call and before the capture, so that the warm-up
    (which really executes and advances the decoder's positions) never indexes past a cache.
    ``step`` must only read and write tensors that outlive the graph, by their addresses."""
    with _graph_autocast():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # cuBLAS handles, lazy init, compilation
            for _ in range(warmup):
                if prepare is not None:
                    prepare()
                step()
        torch.cuda.current_stream().wait_stream(side)
        if prepare is not None:
            prepare()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = step()
        torch.cuda.current_stream().synchronize()
    return graph, output


class FastDecoder:
    """Batched incremental decoder over a ``BytePredictor`` with a static cache.

    ``prefill(tokens [B, T]) -> logits [B, 256]`` then ``step(tokens [B]) -> logits [B, 256]``,
    like ``model.prefill``/``model.step`` with their state held inside. The cache holds
    ``max_len`` tokens (default: the model's context); its dtype follows the model's weights
    (cast the model with ``model.to(torch.bfloat16)`` for bf16 decoding). ``graph`` (default:
    on CUDA) captures the step as a CUDA graph; ``compile`` runs it through ``torch.compile``
    first (fuses the small element-wise ops; costs compile time). Weights are read live, but a
    captured graph holds their addresses: do not replace the parameter tensors afterwards
    (``model.to(...)``); in-place updates (training, ``load_state_dict``) are picked up.
    """

    def __init__(
        self,
        model,
        batch_size: int,
        max_len: int | None = None,
        graph: bool | None = None,
        compile: bool = False,
    ):
        self.model = model
        self.batch_size = batch_size
        device = model.device
        self.cache = model.transformer.new_cache(batch_size, device, max_len=max_len)
        self.tokens = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.position = torch.zeros((), dtype=torch.long, device=device)
        with torch.no_grad():
            self.fused_weights = fused_projection_weights(model.transformer)
        self.use_graph = device.type == "cuda" if graph is None else graph
        if self.use_graph and device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self._step_fn = torch.compile(self._static_step, dynamic=False) if compile else self._static_step
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_logits: torch.Tensor | None = None
        if self.use_graph:
            self._capture()

    @property
    def length(self) -> int:
        """Tokens consumed so far."""
        return self.cache.length

    @property
    def capacity(self) -> int:
        return self.cache.capacity

    def reset(self) -> None:
        """Forget the context (the cache contents beyond the position are never read)."""
        self.cache.length = 0
        self.position.zero_()

    @torch.no_grad()
    def _static_step(self) -> torch.Tensor:
        model = self.model
        x = model.embed(self.tokens).unsqueeze(1)
        hidden = static_stack_step(model.transformer, x, self.cache, self.position, self.fused_weights)
        logits = model.head(hidden)
        self.position.add_(1)
        return logits[:, -1]

    @torch.no_grad()
    def _capture(self) -> None:
        self._graph, self._graph_logits = capture_graph(self._step_fn, prepare=self.reset)
        self.reset()  # warm-up wrote garbage at position 0: every step overwrites its slot first

    def refresh_weights(self) -> None:
        """Re-stack the fused projection weights in place (after the model's weights changed)."""
        refresh_fused_weights(self.model.transformer, self.fused_weights)

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Consume ``tokens`` [B, T] with the model's own forward; logits after the last one."""
        if tokens.shape[0] != self.batch_size:
            raise ValueError(f"decoder was built for batch {self.batch_size}, got {tokens.shape[0]}")
        self.refresh_weights()
        logits = self.model(tokens, self.cache)[:, -1]  # checks capacity, advances cache.length
        self.position.fill_(self.cache.length)
        return logits

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Consume one token per row [B]; return next-byte logits [B, 256]."""
        if self.cache.length >= self.capacity:
            raise ValueError(f"context of {self.capacity} tokens exceeded")
        self.tokens.copy_(tokens)
        if self._graph is not None:
            self._graph.replay()
            logits = self._graph_logits.clone()  # the graph overwrites its output on every replay
        else:
            logits = self._step_fn()
        self.cache.length += 1
        return logits

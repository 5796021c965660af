"""Fast incremental decoding for the multiscale and patch models: static-shape stage steps,
each replayed as a CUDA graph.

The eager ``MultiscaleCore.step`` runs each stage through its stack with growing cache slices
and Python-side bookkeeping, so a byte pays hundreds of kernel launches. ``MultiscaleDecoder``
splits the same computation into a few static-shape pieces:

* ``byte``: one step of the byte stage (embedding + parent context, stack, head), which also
  records the token in the current coarsest unit;
* ``advance[i]``, for every stage ``i`` above the bytes: feed stage ``i`` its just-completed unit
  (its embedding plus, below the top, the parent context at its position), then restart the
  stages below it from the new output (their contexts, first steps and positions);
* ``begin``: the state of ``init_state`` (stage 0 fed its start vector, the stages below started).

All state lives in preallocated tensors (caches, contexts, the coarsest unit's tokens), and the
position inside each stage is a device tensor, so every piece has fixed shapes and no host sync.
Which pieces run depends only on the number of tokens consumed, which the host knows: a step
runs ``byte`` and then, when a unit completes, the ``advance`` of the coarsest stage whose unit
completed, as the eager step does. On CUDA each piece is captured once as a ``CUDAGraph`` (so a
byte costs one replay, plus one replay per completed unit); on CPU, or when the capture fails
(a warning says why, ``graph_error`` keeps it), the same pieces run eagerly.

Transformer stages use the flat decoder's masked full-cache attention step
(``decode.static_step``); Mamba stages step their recurrent state, which already has static
shapes, so models with Mamba stages are captured too.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

import torch

from omnibyte.models.decode import capture_graph, fused_projection_weights, refresh_fused_weights, static_step
from omnibyte.models.layers import TransformerStack
from omnibyte.models.multiscale import PAD

# transformer caches are padded to a multiple of this many positions (the padding is masked):
# aligned masks let SDPA's fused kernels take them without copying
CACHE_ALIGNMENT = 16


class GraphCaptureWarning(RuntimeWarning):
    """CUDA graph capture failed; the decoder runs its static steps eagerly."""


class MultiscaleDecoder:
    """Batched incremental decoder over a ``MultiscaleModel`` (or ``PatchModel``).

    ``prefill(tokens [B, T]) -> logits [B, 256]``, ``step(tokens [B]) -> logits [B, 256]`` and
    ``reset()``, like ``decode.FastDecoder``, for up to ``max_len`` tokens (default: the model's
    context; it bounds the top stage's cache). Caches and contexts take the dtype of the model's
    weights. ``graph`` (default: on CUDA) captures the pieces as CUDA graphs; weights are read live
    (``prefill`` re-stacks the fused projections), but do not replace the parameter tensors of a
    captured decoder (``model.to(...)``)."""

    def __init__(self, model, batch_size: int, max_len: int | None = None, graph: bool | None = None):
        core = model.core
        self.model, self.core, self.batch_size = model, core, batch_size
        self.capacity = core.context if max_len is None else min(max_len, core.context)
        if self.capacity < 1:
            raise ValueError("max_len must be positive")
        device, dtype = core.head.weight.device, core.head.weight.dtype
        self.last = core.num_stages - 1
        # stage 0 reads its start vector and then one input per completed unit
        sizes = [min(core.patch_sizes[0], self.capacity // core.unit_sizes[0] + 1), *core.patch_sizes[1:]]
        self.caches = [self._new_cache(stack, size, device, dtype) for stack, size in zip(core.stacks, sizes)]
        with torch.no_grad():
            self.fused_weights = [fused_projection_weights(stack) if isinstance(stack, TransformerStack)
                                  else None for stack in core.stacks]
        # position inside each stage's cache = inputs fed to it since its parent's unit began
        self.positions = [torch.zeros((), dtype=torch.long, device=device) for _ in core.stacks]
        self.consumed = torch.zeros((), dtype=torch.long, device=device)  # tokens, on the device
        # parent context of the current unit of every stage below the top: [B, P_i, D_i]
        self.contexts = [None] + [torch.zeros(batch_size, core.patch_sizes[i], core.widths[i],
                                              dtype=dtype, device=device) for i in range(1, core.num_stages)]
        self.unit_tokens = torch.full((batch_size, core.unit_sizes[0]), PAD, dtype=torch.long, device=device)
        self.unit_offsets = [torch.arange(size, device=device) for size in core.unit_sizes]
        self.tokens = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.length = 0  # tokens consumed, on the host: it decides which pieces run
        self.pieces: dict[Any, Callable[[], Any]] = {"begin": self._begin, "byte": self._byte_step}
        self.pieces.update({level: functools.partial(self._advance, level) for level in range(self.last)})
        self.use_graph = device.type == "cuda" if graph is None else graph
        if self.use_graph and device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.graphs: dict[Any, torch.cuda.CUDAGraph] = {}
        self.graph_error: str | None = None
        self._graph_logits: torch.Tensor | None = None
        if self.use_graph:
            self._capture()
        self.reset()

    def _new_cache(self, stack, size: int, device, dtype):
        if isinstance(stack, TransformerStack):
            size = -(-size // CACHE_ALIGNMENT) * CACHE_ALIGNMENT
        return stack.new_cache(self.batch_size, device=device, dtype=dtype, max_len=size)

    # ---- the static pieces ----------------------------------------------------------
    def _stage_step(self, level: int, x: torch.Tensor) -> torch.Tensor:
        """Feed [B, 1, D] to stage ``level`` at its position; its output [B, D]."""
        hidden = static_step(self.core.stacks[level], x, self.caches[level], self.positions[level],
                             self.fused_weights[level])
        self.positions[level].add_(1)
        return hidden[:, -1]

    def _context_at(self, level: int) -> torch.Tensor:
        """The parent context of stage ``level`` at its current position: [B, 1, D]."""
        return self.contexts[level].index_select(1, self.positions[level].view(1))

    def _descend(self, level: int, output: torch.Tensor) -> None:
        """Stage ``level`` produced ``output`` [B, D] for a new unit: restart the stages below."""
        core = self.core
        for child in range(level + 1, core.num_stages):
            context = self.contexts[child]
            context.copy_(core.parent_projs[child - 1](output).view(context.shape))
            self.positions[child].zero_()
            self.caches[child].reset()  # zeroes a recurrent state; a KV cache is masked by position
            if child == self.last:
                return
            first = core.start[child].to(context.dtype).view(1, 1, -1) + context[:, :1]
            output = self._stage_step(child, first)

    def _begin(self) -> None:
        """The state of ``init_state``: stage 0 has read its start vector."""
        self.consumed.zero_()
        self.positions[0].zero_()
        self.caches[0].reset()
        self.unit_tokens.fill_(PAD)
        self._descend(0, self._stage_step(0, self.core._start(0, self.batch_size)))

    def _byte_step(self) -> torch.Tensor:
        core = self.core
        x = core.byte_embed(self.tokens).unsqueeze(1) + self._context_at(self.last)
        logits = core.head(self._stage_step(self.last, x))
        slot = (self.consumed % core.unit_sizes[0]).view(1)
        self.unit_tokens.index_copy_(1, slot, self.tokens.unsqueeze(1))
        self.consumed.add_(1)
        return logits

    def _advance(self, level: int) -> None:
        """A unit of stage ``level`` just completed: feed it (the host runs this only then)."""
        core, unit = self.core, self.core.unit_sizes[level]
        # the unit's first token; a multiple of ``unit``, so in range whatever ``consumed`` holds
        start = (self.consumed // unit - 1) * unit % core.unit_sizes[0]
        tokens = self.unit_tokens.index_select(1, start + self.unit_offsets[level])
        embedded = core.embed_units(level, tokens).unsqueeze(1)
        if level > 0:
            embedded = embedded + self._context_at(level)
        self._descend(level, self._stage_step(level, embedded))

    # ---- running them ---------------------------------------------------------------
    def _rewind(self) -> None:
        """Positions to 0, so that warm-up runs of any piece stay inside every cache."""
        for position in self.positions:
            position.zero_()
        self.consumed.zero_()

    @torch.no_grad()
    def _capture(self) -> None:
        try:
            for name, piece in self.pieces.items():
                self.graphs[name], output = capture_graph(piece, prepare=self._rewind)
                if name == "byte":
                    self._graph_logits = output
        except Exception as error:  # noqa: BLE001 - any capture failure: decode eagerly instead
            self.graphs, self._graph_logits, self.use_graph = {}, None, False
            self.graph_error = f"{type(error).__name__}: {error}"
            warnings.warn(f"CUDA graph capture failed, decoding eagerly ({self.graph_error})",
                          GraphCaptureWarning, stacklevel=3)

    @torch.no_grad()
    def _run(self, name) -> Any:
        graph = self.graphs.get(name)
        if graph is None:
            return self.pieces[name]()
        graph.replay()
        # the graph overwrites its output on every replay
        return self._graph_logits.clone() if name == "byte" else None

    @torch.no_grad()
    def reset(self) -> None:
        """Forget the context (stale cache entries beyond each position are never read)."""
        self._run("begin")
        self.length = 0

    def refresh_weights(self) -> None:
        """Re-stack the fused projection weights in place (after the model's weights changed)."""
        for stack, fused in zip(self.core.stacks, self.fused_weights):
            if fused is not None:
                refresh_fused_weights(stack, fused)

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Consume ``tokens`` [B, T] (one step each); logits after the last one. Fused weights
        (and, at the start, the begin state) follow in-place weight updates made since ``reset``."""
        if tokens.dim() != 2 or tokens.shape[0] != self.batch_size:
            raise ValueError(f"decoder was built for batch {self.batch_size}, got tokens of shape "
                             f"{tuple(tokens.shape)}")
        if tokens.shape[1] == 0:
            raise ValueError("prefill needs at least one token")
        self.refresh_weights()
        if self.length == 0:  # the begin state too: the weights may have changed since reset
            self.reset()
        for t in range(tokens.shape[1]):
            logits = self.step(tokens[:, t])
        return logits

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Consume one token per row [B]; return next-byte logits [B, 256]."""
        if tokens.shape != (self.batch_size,):
            raise ValueError(f"decoder was built for batch {self.batch_size}, got tokens of shape "
                             f"{tuple(tokens.shape)}")
        if self.length >= self.capacity:
            raise ValueError(f"context of {self.capacity} tokens exceeded")
        self.tokens.copy_(tokens)
        logits = self._run("byte")
        self.length += 1
        if self.length < self.capacity:
            for level in range(self.last):  # the coarsest completed unit restarts everything below
                if self.length % self.core.unit_sizes[level] == 0:
                    self._run(level)
                    break
        return logits

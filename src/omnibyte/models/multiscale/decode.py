"""Per-row incremental decoding of the multiscale (and bGPT patch) models.

A byte runs the byte stage; when it completes a unit of stage ``i`` (every ``U_i`` bytes), stage
``i`` reads that unit and restarts the stages below it. Every row has its own token count, so
rows may complete units at different steps. The work is split into a few static pieces:

* ``byte``: one step of the byte stage for the active rows (embedding + parent context, stack,
  head), recording the token in the row's current coarsest unit;
* ``advance[i]``, for every stage ``i`` above the bytes: for the rows whose coarsest completed
  unit is of stage ``i``, feed that unit to stage ``i`` (plus, below the top, the parent context
  at its position), then restart the stages below from the new output;
* ``begin``: restart the chosen rows (stage 0 reads its start vector, the stages below start).

Every piece runs for all rows and applies its update only to the rows of its mask (others write
to their caches' sink slot and keep their state), so shapes never change. All state lives in
preallocated device tensors; which pieces run is decided on the host from its copy of each
row's length, and a piece runs only when some row needs it, so aligned rows cost exactly one
byte step plus one advance per completed unit. On CUDA with ``fast``, each piece is captured
once as a CUDA graph (``models.graphs``); otherwise the same pieces run eagerly. Transformer
and Mamba stages run the same stack code as training.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from omnibyte.models.base import BOS, Decoder
from omnibyte.models.graphs import GraphSteps, cache_slots, decoding_mode
from omnibyte.models.layers import TransformerStack

PAD = BOS  # input id that fills the last unit of a sequence
# transformer caches of a fast decoder are padded to a multiple of this many positions (the
# padding is masked): aligned masks let SDPA's fused kernels take them without copying
CACHE_ALIGNMENT = 16


class MultiscaleDecoder(Decoder):
    """``Decoder`` over a ``MultiscaleModel`` for up to ``max_len`` tokens per row (default: the
    model's context; it bounds the top stage's cache). Caches and contexts take the dtype of the
    model's weights. A captured graph reads the weights by address: in-place updates are seen,
    replacing the parameter tensors (``model.to(...)``) is not."""

    def __init__(self, model, batch_size: int, max_len: int | None = None, fast: bool = False,
                 graph: bool | None = None, compile: bool = False):
        core = model.core
        capacity = core.context if max_len is None else min(max_len, core.context)
        super().__init__(batch_size, capacity, core.head.weight.device)
        self.model, self.core, self.fast, self.compile = model, core, fast, compile
        device, dtype = self.device, core.head.weight.dtype
        self.last = core.num_stages - 1
        # stage 0 reads its start vector and then one input per completed unit
        sizes = [min(core.patch_sizes[0], capacity // core.unit_sizes[0] + 1), *core.patch_sizes[1:]]
        self.caches = [self._new_cache(stack, size, dtype) for stack, size in zip(core.stacks, sizes)]
        rows = functools.partial(torch.zeros, batch_size, dtype=torch.long, device=device)
        # inputs fed to each stage since its parent's unit began, and tokens consumed, per row
        self.positions = [rows() for _ in core.stacks]
        self.consumed = rows()
        # parent context of the current unit of every stage below the top: [B, P_i, D_i]
        self.contexts = [None] + [torch.zeros(batch_size, core.patch_sizes[i], core.widths[i],
                                              dtype=dtype, device=device) for i in range(1, core.num_stages)]
        self.unit_tokens = torch.full((batch_size, core.unit_sizes[0]), PAD, dtype=torch.long, device=device)
        self.unit_offsets = [torch.arange(size, device=device) for size in core.unit_sizes]
        self.tokens = rows()
        self.active = torch.ones(batch_size, dtype=torch.bool, device=device)  # rows taking this token
        self.restart = torch.ones(batch_size, dtype=torch.bool, device=device)  # rows ``begin`` resets
        self.all_active = True
        pieces: dict[Any, Any] = {"begin": self._begin, "byte": self._byte}
        pieces.update({level: functools.partial(self._advance, level) for level in range(self.last)})
        use_graph = decoding_mode(device, fast, graph, compile)
        self.steps = GraphSteps(pieces, use_graph, compile)
        self.steps.capture(prepare=self._rewind)
        self.restart.fill_(True)
        self.steps.run("begin")

    def _new_cache(self, stack, size: int, dtype):
        if isinstance(stack, TransformerStack):
            size = cache_slots(size, self.fast, self.compile, CACHE_ALIGNMENT)
        return stack.new_cache(self.batch_size, device=self.device, dtype=dtype, max_len=size)

    # ---- the static pieces ----------------------------------------------------------
    def _stage_step(self, level: int, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Feed [B, 1, D] to stage ``level`` for the rows of mask ``rows``; its output [B, D]."""
        hidden = self.core.stacks[level](x, self.caches[level], rows.unsqueeze(1))
        self.positions[level].add_(rows.long())
        return hidden[:, -1]

    def _context_at(self, level: int) -> torch.Tensor:
        """The parent context of stage ``level`` at each row's position: [B, 1, D]."""
        context = self.contexts[level]
        index = self.positions[level].clamp_max(context.shape[1] - 1)
        return context.gather(1, index.view(-1, 1, 1).expand(-1, 1, context.shape[2]))

    def _descend(self, level: int, output: torch.Tensor, rows: torch.Tensor) -> None:
        """Stage ``level`` produced ``output`` [B, D] for a new unit of the rows of ``rows``:
        restart the stages below it there."""
        core = self.core
        for child in range(level + 1, core.num_stages):
            context = self.contexts[child]
            fresh = core.parent_projs[child - 1](output).view(context.shape).to(context.dtype)
            context.copy_(torch.where(rows.view(-1, 1, 1), fresh, context))
            self.positions[child].masked_fill_(rows, 0)
            self.caches[child].reset(rows)
            if child == self.last:
                return
            first = core.start[child].to(context.dtype).view(1, 1, -1) + context[:, :1]
            output = self._stage_step(child, first, rows)

    def _begin(self) -> None:
        rows = self.restart
        self.consumed.masked_fill_(rows, 0)
        self.positions[0].masked_fill_(rows, 0)
        self.caches[0].reset(rows)
        self.unit_tokens.masked_fill_(rows.unsqueeze(1), PAD)
        start = self.core._start(0, self.batch_size)
        self._descend(0, self._stage_step(0, start, rows), rows)

    def _byte(self) -> torch.Tensor:
        core, rows = self.core, self.active
        x = core.byte_embed(self.tokens).unsqueeze(1) + self._context_at(self.last)
        logits = core.head(self._stage_step(self.last, x, rows))
        slot = (self.consumed % core.unit_sizes[0]).unsqueeze(1)
        recorded = torch.where(rows, self.tokens, self.unit_tokens.gather(1, slot).squeeze(1))
        self.unit_tokens.scatter_(1, slot, recorded.unsqueeze(1))
        self.consumed.add_(rows.long())
        return logits

    def _advance(self, level: int) -> None:
        """Rows whose coarsest just-completed unit is of stage ``level`` feed it to that stage."""
        core, unit = self.core, self.core.unit_sizes[level]
        consumed = self.consumed
        rows = self.active & (consumed % unit == 0) & (consumed > 0) & (consumed < self.capacity)
        if level > 0:  # a completed coarser unit restarts this stage instead
            rows &= consumed % core.unit_sizes[level - 1] != 0
        # the unit's first token; a multiple of ``unit``, so in range whatever ``consumed`` holds
        start = (consumed // unit - 1) * unit % core.unit_sizes[0]
        tokens = self.unit_tokens.gather(1, start.unsqueeze(1) + self.unit_offsets[level])
        embedded = core.embed_units(level, tokens).unsqueeze(1)
        if level > 0:
            embedded = embedded + self._context_at(level)
        self._descend(level, self._stage_step(level, embedded, rows), rows)

    def _rewind(self) -> None:
        """Every row at its start, so that warm-up runs of any piece stay inside every cache."""
        for position, cache in zip(self.positions, self.caches):
            position.zero_()
            cache.reset()
        self.consumed.zero_()
        self.active.fill_(True)

    # ---- the protocol -----------------------------------------------------------------
    def _set_active(self, active: torch.Tensor | None) -> None:
        if active is None:
            if not self.all_active:
                self.active.fill_(True)
                self.all_active = True
        else:
            self.active.copy_(active)
            self.all_active = False

    def _advance_completed(self, consumed: np.ndarray, active: np.ndarray) -> None:
        """Run the advance of every stage that some active row completed a unit of."""
        core = self.core
        ready = active & (consumed > 0) & (consumed < self.capacity)
        for level in range(self.last):
            completed = ready & (consumed % core.unit_sizes[level] == 0)
            if level > 0:
                completed &= consumed % core.unit_sizes[level - 1] != 0
            if completed.any():
                self.steps.run(level)

    def _one_token(self, tokens: torch.Tensor, active: torch.Tensor | None, active_host: np.ndarray,
                   consumed: np.ndarray) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self._set_active(active)
        logits = self.steps.run("byte")
        self._advance_completed(consumed + active_host, active_host)
        return logits

    def _step(self, tokens: torch.Tensor) -> torch.Tensor:
        everyone = np.ones(self.batch_size, dtype=bool)
        return self._one_token(tokens, None, everyone, self.lengths)

    def _prefill(self, tokens: torch.Tensor, valid: torch.Tensor, counts: np.ndarray) -> torch.Tensor:
        consumed = self.lengths.copy()
        logits = None
        for t in range(int(counts.max())):
            active_host = counts > t
            active = None if active_host.all() else valid[:, t]
            step_logits = self._one_token(tokens[:, t], active, active_host, consumed)
            consumed = consumed + active_host
            if logits is None:
                logits = step_logits
            else:  # keep each row's logits after its own last token
                last_here = torch.from_numpy(counts - 1 == t).to(self.device).unsqueeze(1)
                logits = torch.where(last_here, step_logits, logits)
        self._set_active(None)
        return logits

    def _reset(self, rows: torch.Tensor) -> None:
        self.restart.copy_(rows)
        self.steps.run("begin")

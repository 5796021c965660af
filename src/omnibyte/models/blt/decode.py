"""Cached, batched, per-row decoding of the Byte Latent Transformer.

Every row keeps its own state: the entropy model's decoder (entropy schemes), a patch tracker
(``PatchTracker``: whether the incoming token starts a patch), the local encoder's KV cache,
the encoder outputs of the row's open patch, the latent Transformer's KV cache (advanced only
when the row closes a patch), the keys/values of the row's latent outputs (what its bytes
read), the memory's running sums, the local decoder's KV cache and the last n-gram tokens.

A token is taken in two static pieces, each running for all rows with a row mask (rows outside
it write to their caches' sink slot and keep their state), as ``multiscale/decode.py`` does:

* ``close``: the rows whose incoming token starts a patch and whose open patch holds bytes
  pool it (the encoder's patch cross-attention), run one latent step, and store the latent
  output's keys/values; it runs only when some row closes a patch (the host reads the mask:
  where patches end depends on the data);
* ``byte``: embed the token, one encoder step, record it in the open patch, read the latent
  outputs of the patches before it, one decoder step, the head.

On CUDA with ``fast`` both pieces are captured once as CUDA graphs (``models.graphs``) and
attend over whole caches (static shapes); the tracker and the entropy decoder (itself a fast
flat decoder) run between them. Without CUDA the same pieces run eagerly.
"""
from __future__ import annotations

import numpy as np
import torch

from omnibyte.models.base import BOS, Decoder
from omnibyte.models.blt.patching import PatchTracker
from omnibyte.models.graphs import GraphSteps, cache_slots, decoding_mode
from omnibyte.models.blt.ngrams import NGRAM_PAD

CACHE_ALIGNMENT = 64  # fast caches are padded to a multiple of this (aligned masks for SDPA)


class BLTDecoder(Decoder):
    """``Decoder`` over a ``BLTModel``; caches take the dtype of the model's weights."""

    def __init__(self, model, batch_size: int, max_len: int | None = None, fast: bool = False,
                 graph: bool | None = None, compile: bool = False):
        context = model.max_seq_len
        capacity = context if max_len is None else min(max_len, context)
        super().__init__(batch_size, capacity, model.device)
        self.model, self.fast = model, fast
        config, device = model.config, self.device
        dtype = model.head.weight.dtype
        slots = cache_slots(capacity, fast, compile, CACHE_ALIGNMENT)
        self.encoder_cache = model.encoder.new_cache(batch_size, device, dtype, slots)
        self.decoder_cache = model.local_decoder.new_cache(batch_size, device, dtype, slots)
        self.latent_cache = model.latent.new_cache(batch_size, device, dtype, slots)  # <= one patch per token
        self.patch_room = min(config.patching.max_patch_size, capacity)
        self.patch_bytes = torch.zeros(batch_size, self.patch_room, config.local.hidden_size, device=device, dtype=dtype)
        self.patch_slots = torch.arange(self.patch_room, device=device)
        rows = lambda: torch.zeros(batch_size, dtype=torch.long, device=device)  # noqa: E731
        self.patch_fill, self.closed = rows(), rows()  # bytes in the open patch, patches closed
        attention = model.byte_attention
        key_shape = (batch_size, capacity + 1, attention.num_heads, attention.head_dim)
        self.latent_keys = torch.zeros(key_shape, device=device, dtype=dtype)  # [start, L_0, L_1, ...]
        self.latent_values = torch.zeros(key_shape, device=device, dtype=dtype)
        start_keys, start_values = model.start_keys()
        self.latent_keys[:, 0], self.latent_values[:, 0] = start_keys[0, 0], start_values[0, 0]
        self.back = torch.arange(config.local.decoder_patches, device=device)
        if model.memory is not None:
            width, count = config.latent.hidden_size, config.latent.memory_slots
            self.memory_inputs = torch.zeros(batch_size, capacity, width, device=device, dtype=dtype)
            self.memory_written = torch.zeros(batch_size, count, width, device=device)
            self.memory_weights = torch.zeros(batch_size, count, device=device)
        self.history = torch.full((batch_size, max(config.ngram_sizes) - 1), NGRAM_PAD, dtype=torch.long,
                                  device=device)
        self.tokens, self.previous = rows(), torch.full((batch_size,), BOS, dtype=torch.long, device=device)
        self.active = torch.ones(batch_size, dtype=torch.bool, device=device)
        self.closing = torch.zeros(batch_size, dtype=torch.bool, device=device)
        self.tracker = PatchTracker(config.patching, batch_size, device)
        self.entropy = (model.entropy_model.decoder(batch_size, capacity, fast=fast, compile=compile)
                        if model.entropy_model is not None else None)
        self.patches = np.zeros(batch_size, dtype=np.int64)  # host copy of ``closed``
        self.byte_visible: int | None = None  # eager: cache slots the byte stacks attend to
        self.latent_visible: int | None = None
        use_graph = decoding_mode(device, fast, graph, compile)
        self.steps = GraphSteps({"close": self._close, "byte": self._byte}, use_graph, compile)
        self.steps.capture(prepare=self._rewind)
        self._rewind()

    # ---- the static pieces ----------------------------------------------------------
    def _close(self) -> None:
        """The rows of ``closing`` close their open patch: pool it, one latent step, keep the
        latent output's keys/values (at index ``closed + 1``)."""
        model, rows = self.model, self.closing
        outside = (self.patch_slots.unsqueeze(0) >= self.patch_fill.unsqueeze(1)).long()  # id 1: left out
        inputs = model.patch_inputs(self.patch_bytes, outside, 1)  # [B, 1, D_latent]
        if model.memory is not None:
            inputs = self._remember(inputs, rows)
        latent = model.latent(inputs, self.latent_cache, rows.unsqueeze(1), self.latent_visible)
        keys, values = model.latent_keys(latent)  # [B, 1, H, hd]
        slot = (self.closed + 1).clamp_max(self.latent_keys.shape[1] - 1)
        for store, new in ((self.latent_keys, keys), (self.latent_values, values)):
            index = slot.view(-1, 1, 1, 1).expand(-1, 1, *store.shape[2:])
            kept = store.gather(1, index)
            store.scatter_(1, index, torch.where(rows.view(-1, 1, 1, 1), new.to(store.dtype), kept))
        self.closed.add_(rows.long())
        self.patch_fill.masked_fill_(rows, 0)

    def _remember(self, inputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Memory of the closing rows: keep this patch's input, add the patch ``lag`` back to
        the running sums (as the training prefix sum does), read the slots."""
        memory = self.model.memory
        patch = self.closed.clamp_max(self.memory_inputs.shape[1] - 1)
        index = patch.view(-1, 1, 1).expand(-1, 1, inputs.shape[-1])
        kept = self.memory_inputs.gather(1, index)
        self.memory_inputs.scatter_(1, index, torch.where(rows.view(-1, 1, 1), inputs.to(kept.dtype), kept))
        back = self.closed - memory.lag
        ready = rows & (back >= 0)
        old = self.memory_inputs.gather(1, back.clamp_min(0).view(-1, 1, 1).expand(-1, 1, inputs.shape[-1]))
        written, weights = memory.contributions(old)  # [B, 1, M, D], [B, 1, M]
        self.memory_written.add_(torch.where(ready.view(-1, 1, 1), written[:, 0], 0.0))
        self.memory_weights.add_(torch.where(ready.view(-1, 1), weights[:, 0], 0.0))
        slots = memory.slots(self.memory_written, self.memory_weights)
        return memory.read_into(inputs, slots.unsqueeze(1))

    def _byte(self) -> torch.Tensor:
        model, rows = self.model, self.active
        tokens = self.tokens.unsqueeze(1)
        x = model.embed_bytes(tokens, self.history)
        hidden = model.encoder(x, self.encoder_cache, rows.unsqueeze(1), self.byte_visible)  # [B, 1, D]
        slot = self.patch_fill.clamp_max(self.patch_room - 1).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
        kept = self.patch_bytes.gather(1, slot)
        self.patch_bytes.scatter_(1, slot, torch.where(rows.view(-1, 1, 1), hidden.to(kept.dtype), kept))
        self.patch_fill.add_(rows.long())
        shifted = torch.cat((self.history[:, 1:], tokens), dim=1)
        self.history.copy_(torch.where(rows.unsqueeze(1), shifted, self.history))
        self.previous.copy_(torch.where(rows, self.tokens, self.previous))
        index = self.closed.view(-1, 1, 1) - self.back
        x = hidden + model.byte_attention.gathered(hidden, self.latent_keys, self.latent_values, index, index >= 0)
        out = model.local_decoder(x, self.decoder_cache, rows.unsqueeze(1), self.byte_visible)
        return model.head(out[:, -1])

    def _rewind(self) -> None:
        """Every row at its start (before captures and at construction)."""
        everyone = torch.ones(self.batch_size, dtype=torch.bool, device=self.device)
        self._clear(everyone)
        self.active.fill_(True)
        self.closing.fill_(False)

    def _clear(self, rows: torch.Tensor) -> None:
        for cache in (self.encoder_cache, self.decoder_cache, self.latent_cache):
            cache.reset(rows)
        self.patch_fill.masked_fill_(rows, 0)
        self.closed.masked_fill_(rows, 0)
        self.history.masked_fill_(rows.unsqueeze(1), NGRAM_PAD)
        self.previous.masked_fill_(rows, BOS)
        if self.model.memory is not None:
            self.memory_written.masked_fill_(rows.view(-1, 1, 1), 0.0)
            self.memory_weights.masked_fill_(rows.view(-1, 1), 0.0)

    # ---- one token for the active rows ----------------------------------------------
    def _one_token(self, tokens: torch.Tensor, active: torch.Tensor, active_host: np.ndarray,
                   entropies: torch.Tensor | None, longest: int) -> torch.Tensor:
        starts = self.tracker.starts(self.previous, entropies, active, tokens)
        self.last_starts = starts  # whether each row's token started a patch (False: inactive rows)
        closing = starts & (self.patch_fill > 0)
        closing_host = closing.cpu().numpy()  # where patches end depends on the data: one read per token
        if not self.fast:
            self.byte_visible = longest
        if closing_host.any():
            self.patches += closing_host
            self.latent_visible = None if self.fast else int(self.patches.max())
            self.closing.copy_(closing)
            self.steps.run("close")
        self.tokens.copy_(tokens)
        self.active.copy_(active)
        return self.steps.run("byte")

    def _step(self, tokens: torch.Tensor) -> torch.Tensor:
        entropies = None
        if self.entropy is not None:
            entropies = self.entropy.next.clone()  # of the incoming token, known before it
            self.entropy.step(tokens)
        everyone = torch.ones(self.batch_size, dtype=torch.bool, device=self.device)
        return self._one_token(tokens, everyone, np.ones(self.batch_size, bool), entropies,
                               int(self.lengths.max()) + 1)

    def _prefill(self, tokens: torch.Tensor, valid: torch.Tensor, counts: np.ndarray) -> torch.Tensor:
        entropies = self.entropy.prefill(tokens, counts) if self.entropy is not None else None
        logits = None
        for t in range(int(counts.max())):
            active_host = counts > t
            longest = int((self.lengths + np.minimum(counts, t + 1)).max())
            column = None if entropies is None else entropies[:, t]
            step_logits = self._one_token(tokens[:, t], valid[:, t], active_host, column, longest)
            if logits is None:
                logits = step_logits
            else:  # keep each row's logits after its own last token
                last_here = torch.from_numpy(counts - 1 == t).to(self.device).unsqueeze(1)
                logits = torch.where(last_here, step_logits, logits)
        return logits

    def _reset(self, rows: torch.Tensor) -> None:
        self._clear(rows)
        self.tracker.reset(rows)
        chosen = rows.cpu().numpy()
        self.patches[chosen] = 0
        if self.entropy is not None:
            self.entropy.reset(np.flatnonzero(chosen).tolist())

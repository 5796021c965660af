"""The multiscale byte model (MEGABYTE / MBLM): N stages from coarse patches down to bytes.

Stage ``i`` has a patch length ``P_i``; the context is ``P_0 * P_1 * ... * P_{N-1}`` bytes.
An element of stage ``i`` is a *unit* of ``U_i = P_{i+1} * ... * P_{N-1}`` tokens (bytes at the
last stage, ``U_{N-1} = 1``). Stage 0 runs over the units of the whole sequence; stage ``i > 0``
runs over the ``P_i`` sub-units of one stage-``i-1`` unit (its *parent*), with the parent's
output projected into ``P_i`` positions and added to its inputs.

Causality with the shared token convention (``tokens[t]`` is byte ``t-1``, logits at ``t`` may
use ``tokens[<= t]``): every stage above the bytes sees its units shifted by one (a learned
start vector, then units ``0..P-2``), so a parent's output depends only on tokens before the
parent; the byte stage sees its own tokens unshifted. Sequences are padded with id 256 (BOS
doubles as pad) to whole coarsest units and the padded logits are dropped.

A unit's embedding is a linear map of its sub-units: the stage just above bytes sums
per-position byte embeddings (= a linear map of the ``P x 257`` one-hot patch), higher
stages project the concatenated embeddings of their sub-units.

Incremental decoding (``decode.MultiscaleDecoder``) advances a stage only when one of its units
completes, so a byte costs one step of the byte stage plus, every ``U_i`` bytes, one step of
stage ``i``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from omnibyte.models.base import BOS, INPUT_VOCAB, NUM_BYTES, BaseConfig, ByteModel
from omnibyte.models.multiscale.decode import PAD, MultiscaleDecoder
from omnibyte.models.layers import (
    STACK_LIMITS,
    StackConfig,
    TransformerStack,
    default_intermediate_size,
    init_weights,
    normal_from_cpu_,
)
from omnibyte.models.validation import ConfigError, Limit, ModelSize, field_path

BLOCK_TYPES = ("transformer", "mamba")
MAX_CONTEXT = 2**30  # bytes: the product of the patch sizes
# No kernel call of the family sees a tensor of 2**31 elements or more: several CUDA kernels
# index in 32 bits (the 33,554,432-byte long-context step died with an illegal memory access; at
# that length the top stage's sub-unit embeddings, 4M x 1024 = 2**32 elements, went through
# ``embedding_bag`` in one call).
# Work along the sequence runs in pieces under this bound instead, and at most
# ``KERNEL_ROW_LIMIT`` patches a piece (an attention kernel's grid holds at most 65,535 rows of
# blocks). Module attributes, so a test can shrink them to exercise the pieces on the CPU.
KERNEL_ELEMENT_LIMIT = 2**31 - 1
KERNEL_ROW_LIMIT = 32768
# training_memory's constants (fitted to H200 peaks; see its docstring)
WORKSPACE_BYTES = 2 * 2**30  # cuBLAS/cuDNN workspaces, the allocator's slack, the CUDA context
TOKEN_BYTES_PER_BYTE = 48
OUTPUT_COPIES = 3.5


@dataclasses.dataclass
class StageConfig(BaseConfig):
    """One stage: its patch length and the shape of its stack (a Mamba stage uses only
    ``hidden_size`` and ``num_layers``)."""

    LIMITS: ClassVar[dict[str, Limit]] = {
        "patch_size": STACK_LIMITS["max_sequence_length"],  # a stage attends over its patch
        **{name: STACK_LIMITS[name] for name in ("hidden_size", "num_layers", "num_query_heads",
                                                 "num_key_value_heads")},
        "intermediate_size": Limit(0, STACK_LIMITS["intermediate_size"].high),  # 0: the default
    }
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"block": BLOCK_TYPES}
    OMIT_WHEN_DEFAULT: ClassVar[tuple[str, ...]] = ("differential_attention",)

    patch_size: int
    hidden_size: int
    num_layers: int
    num_query_heads: int = 4
    num_key_value_heads: int = 4
    intermediate_size: int = 0  # 0: SwiGLU default for hidden_size
    block: str = "transformer"  # or "mamba"
    differential_attention: bool = False  # layers.DifferentialHeads (transformer stages)

    def fill_defaults(self) -> None:
        if self.intermediate_size == 0:
            self.intermediate_size = default_intermediate_size(self.hidden_size)

    def activation_width(self) -> int:
        """Elements per position of the widest tensor a layer of the stage makes (the byte
        head's logits included)."""
        if self.block == "mamba":  # in_proj (4 D) and the scan's states (2 D x 16)
            return 32 * self.hidden_size
        head_dim = self.hidden_size // self.num_query_heads
        return max(self.hidden_size, 2 * self.intermediate_size, NUM_BYTES,
                   (self.num_query_heads + 2 * self.num_key_value_heads) * head_dim)

    def stack(self, rope_theta: float, norm_eps: float, qk_norm: bool) -> StackConfig:
        return StackConfig(self.hidden_size, self.num_layers, self.num_query_heads,
                           self.num_key_value_heads, self.intermediate_size, self.patch_size,
                           rope_theta, norm_eps, qk_norm, self.differential_attention)


@dataclasses.dataclass
class MultiscaleConfig(BaseConfig):
    """Stages from coarsest to finest; the last stage's patch is the bytes of its unit."""

    LIMITS: ClassVar[dict[str, Limit]] = {
        "rope_theta": STACK_LIMITS["rope_theta"],
        "norm_eps": STACK_LIMITS["norm_eps"],
        "checkpoint_tokens": Limit(0, MAX_CONTEXT),
        "byte_decoder_patch_fraction": Limit(0.0, 1.0, low_open=True),
    }

    stages: list[StageConfig] = dataclasses.field(default_factory=lambda: [  # megabyte-8k
        StageConfig(1024, 768, 12, 12, 12), StageConfig(8, 384, 3, 6, 6)])
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    qk_norm: bool = True
    # training memory: inner stages run in gradient-checkpointed chunks of at most this many
    # of their positions (0: off), and stage 0 checkpoints each of its layers
    checkpoint_tokens: int = 0
    checkpoint_layers: bool = False
    # bGPT's options (the ``patch`` presets): in training, run the byte stage on a random
    # fraction of the byte patches only and score just those bytes (memory); frame files with a
    # first patch holding their extension
    byte_decoder_patch_fraction: float = 1.0
    extension_header: bool = False

    @property
    def context(self) -> int:
        return math.prod(stage.patch_size for stage in self.stages)

    def unit_sizes(self) -> list[int]:
        """Tokens per element of each stage."""
        return [math.prod(s.patch_size for s in self.stages[i + 1:]) for i in range(len(self.stages))]

    def validate(self) -> None:
        super().validate()  # types and ranges of every field, the stages' included
        if len(self.stages) < 2:
            raise ConfigError("stages", f"must hold at least 2 stages (coarsest first, bytes last), "
                                        f"got {len(self.stages)}")
        for index, stage in enumerate(self.stages):
            if stage.block == "transformer":
                with field_path(f"stages[{index}]"):
                    stage.stack(self.rope_theta, self.norm_eps, self.qk_norm).validate()
        if self.context > MAX_CONTEXT:
            raise ConfigError("stages", f"give a context of {self.context:,} bytes (the product of their "
                                        f"patch sizes), above the most omnibyte allows ({MAX_CONTEXT:,})")
        top = self.stages[0]
        if top.patch_size * top.activation_width() > KERNEL_ELEMENT_LIMIT:
            # stage 0 attends over its whole sequence, so it cannot run in pieces along it
            raise ConfigError("stages[0].patch_size", f"is {top.patch_size:,}: a sequence of that many "
                              f"positions of width {top.activation_width():,} passes the "
                              f"{KERNEL_ELEMENT_LIMIT + 1:,} elements a GPU kernel may index; "
                              f"give stage 0 fewer, longer units")

    def estimate_size(self) -> ModelSize:
        """The stages' stacks plus the embeddings, start vectors, parent projections and head
        that ``MultiscaleCore`` builds around them."""
        from omnibyte.models.mamba import mamba_num_parameters  # optional family member, imported on use

        stages, last = self.stages, len(self.stages) - 1
        widths, patches = [s.hidden_size for s in stages], [s.patch_size for s in stages]
        size = ModelSize(0, 0)
        for stage in stages:
            if stage.block == "mamba":
                size += ModelSize.of_parameters(mamba_num_parameters(stage.hidden_size, stage.num_layers))
            else:
                size += stage.stack(self.rope_theta, self.norm_eps, self.qk_norm).size()
        parameters = (INPUT_VOCAB + NUM_BYTES) * widths[last]  # byte embedding and head
        for i in range(last):
            below = INPUT_VOCAB if i == last - 1 else widths[i + 1]  # a unit's sub-unit width
            parameters += patches[i + 1] * below * widths[i] + widths[i]  # unit embedding, start
            parameters += widths[i] * patches[i + 1] * widths[i + 1]  # parent projection
        return size + ModelSize.of_parameters(parameters)


def _stage(patch_size, hidden_size, num_layers, heads, kv_heads, block="transformer") -> dict:
    return dict(patch_size=patch_size, hidden_size=hidden_size, num_layers=num_layers,
                num_query_heads=heads, num_key_value_heads=kv_heads, block=block)


MULTISCALE_PRESETS: dict[str, dict] = {
    "tiny": dict(stages=[_stage(256, 64, 2, 4, 2), _stage(4, 32, 1, 2, 1)]),
    "tiny-3": dict(stages=[_stage(32, 64, 2, 4, 2), _stage(4, 48, 1, 4, 2), _stage(4, 32, 1, 2, 1)]),
    "tiny-mamba": dict(stages=[_stage(64, 64, 2, 4, 2, "mamba"), _stage(4, 32, 1, 2, 1)]),
    # ~30M parameters over 8 KB in three stages (256 x 8 x 4): the quality comparison's contender
    "small": dict(stages=[_stage(256, 512, 8, 8, 8), _stage(8, 384, 2, 6, 6), _stage(4, 256, 2, 4, 4)]),
    # the benchmark's matched configuration (MEGABYTE-pytorch / mblm): 8 KB context
    "megabyte-8k": dict(stages=[_stage(1024, 768, 12, 12, 12), _stage(8, 384, 3, 6, 6)]),
    # 16,777,216 bytes: mblm's 3-stage shape (1024 wide, 9/8/8 layers, patches x/32/8). The top
    # stage is a transformer: 65,536 positions are cheap for SDPA flash attention, while a Mamba
    # top would need the optional mamba-ssm kernels to be fast. Inner stages run in checkpointed
    # chunks of 16,384 positions and loss() never holds all logits, so what stays alive is
    # about the stage outputs (the byte stage's parents: 2M x 1024) plus one chunk's activations.
    "long-context": dict(stages=[_stage(65536, 1024, 9, 16, 16), _stage(32, 1024, 8, 16, 16),
                                 _stage(8, 1024, 8, 16, 16)],
                         checkpoint_tokens=16384, checkpoint_layers=True),
}


def build_stack(stage: StageConfig, config: MultiscaleConfig) -> nn.Module:
    """The sequence model of one stage: ``forward(x, cache)``, ``new_cache(...)``."""
    if stage.block == "mamba":
        from omnibyte.models.mamba import MambaStack  # optional family member, imported on use

        return MambaStack(hidden_size=stage.hidden_size, num_layers=stage.num_layers)
    return TransformerStack(stage.stack(config.rope_theta, config.norm_eps, config.qk_norm))


class PatchEmbedding(nn.Module):
    """Linear map of a one-hot ``P x 257`` patch, as a sum of per-position byte embeddings."""

    def __init__(self, patch_size: int, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(patch_size * INPUT_VOCAB, hidden_size))
        self.register_buffer("offsets", torch.empty(patch_size, dtype=torch.long), persistent=False)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        normal_from_cpu_(self.weight, std=0.02)
        self.offsets.copy_(torch.arange(self.offsets.shape[0], device=self.offsets.device) * INPUT_VOCAB)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:  # [..., P] -> [..., D]
        rows = (patches + self.offsets).reshape(-1, patches.shape[-1])
        summed = F.embedding_bag(rows, self.weight, mode="sum")  # never materializes [.., P, D]
        return summed.view(*patches.shape[:-1], self.weight.shape[1])


BYTE_EMBED_STD = 1.0


class MultiscaleCore(nn.Module):
    """Weights and computation of an N-stage model (used by the multiscale and patch families)."""

    def __init__(self, config: MultiscaleConfig):
        super().__init__()
        config.validate()
        self.config = config
        stages = config.stages
        self.num_stages = len(stages)
        self.patch_sizes = [stage.patch_size for stage in stages]
        self.widths = [stage.hidden_size for stage in stages]
        self.unit_sizes = config.unit_sizes()
        self.context = config.context
        last = self.num_stages - 1
        self.stacks = nn.ModuleList(build_stack(stage, config) for stage in stages)
        if config.checkpoint_layers and hasattr(self.stacks[0], "gradient_checkpointing"):
            self.stacks[0].gradient_checkpointing = True
        self.byte_embed = nn.Embedding(INPUT_VOCAB, self.widths[last])
        # unit embeddings of stages 0..N-2: bytes one-hot just above the byte stage, else linear
        self.unit_embeds = nn.ModuleList(
            PatchEmbedding(self.patch_sizes[last], self.widths[i]) if i == last - 1
            else nn.Linear(self.patch_sizes[i + 1] * self.widths[i + 1], self.widths[i], bias=False)
            for i in range(last))
        self.start = nn.ParameterList(nn.Parameter(torch.empty(self.widths[i])) for i in range(last))
        # stage i-1 output -> P_i input vectors of stage i
        self.parent_projs = nn.ModuleList(
            nn.Linear(self.widths[i - 1], self.patch_sizes[i] * self.widths[i], bias=False)
            for i in range(1, self.num_stages))
        self.head = nn.Linear(self.widths[last], NUM_BYTES, bias=False)

    def reset_parameters(self) -> None:
        """Every weight and buffer, in a fixed order, from torch's CPU generator."""
        for stack in self.stacks:
            stack.reset_parameters()
        for start in self.start:
            normal_from_cpu_(start, std=0.02)
        for embed in self.unit_embeds:
            if isinstance(embed, PatchEmbedding):
                embed.reset_parameters()
        for module in (self.byte_embed, self.unit_embeds, self.parent_projs, self.head):
            init_weights(module)
        # The byte stage adds its byte embeddings to the parent's projected context (about
        # 0.02 * sqrt(D_parent) per element). At GPT-2's 0.02 the bytes are drowned out and the
        # model sits at the unigram entropy for hundreds of steps; at N(0, 1) (torchtitan's
        # embedding init) it learns from the first steps (bench/RESULTS.md, "multiscale init").
        normal_from_cpu_(self.byte_embed.weight, std=BYTE_EMBED_STD)

    def shard_units(self) -> list[nn.Module]:
        """Every layer of every stage's stack."""
        return [layer for stack in self.stacks for layer in stack.layers]

    # ---- embeddings ---------------------------------------------------------------
    def embed_units(self, level: int, tokens: torch.Tensor) -> torch.Tensor:
        """Embeddings of stage-``level`` units: tokens [..., U_level] -> [..., D_level]."""
        if level == self.num_stages - 2:
            return self.unit_embeds[level](tokens)
        sub_units = tokens.unflatten(-1, (self.patch_sizes[level + 1], self.unit_sizes[level + 1]))
        return self.unit_embeds[level](self.embed_units(level + 1, sub_units).flatten(-2))

    def _start(self, level: int, rows: int) -> torch.Tensor:
        return self.start[level].view(1, 1, -1).expand(rows, 1, -1)

    # ---- full-sequence computation --------------------------------------------------
    def _run_top(self, units: torch.Tensor) -> torch.Tensor:
        """Stage 0 over [B, n, U_0] tokens -> outputs [B, n, D_0]; output k sees units < k."""
        batch, count = units.shape[0], units.shape[1] - 1
        previous = units[:, :-1].reshape(batch * count, units.shape[2])
        # the embedding's intermediates (sub-unit embeddings) are as long as the sequence: in
        # pieces under the kernel bound, checkpointed when training in chunks
        rows = pieces_within_limit(self._top_embedding_width(), KERNEL_ELEMENT_LIMIT)
        pieces = [checkpoint(self._embed_top, piece, use_reentrant=False) if self._chunking()
                  else self._embed_top(piece) for piece in previous.split(rows)]
        embedded = torch.cat(pieces).view(batch, count, self.widths[0])
        x = torch.cat([self._start(0, batch).to(embedded.dtype), embedded], dim=1)
        # whole sequences (attention spans them), as many at once as the kernel bound allows
        rows = pieces_within_limit(units.shape[1] * self.config.stages[0].activation_width(), KERNEL_ELEMENT_LIMIT)
        return torch.cat([self.stacks[0](piece) for piece in x.split(rows)])

    def _embed_top(self, units: torch.Tensor) -> torch.Tensor:
        return self.embed_units(0, units)

    def _top_embedding_width(self) -> int:
        """Elements per stage-0 unit of the largest tensor its embedding makes: the ``U_0``
        byte indices, or a level's sub-unit embeddings (``U_0 / U_l`` of width ``D_l``)."""
        levels = range(self.num_stages - 1)
        return max(self.unit_sizes[0], *(self.unit_sizes[0] // self.unit_sizes[level] * self.widths[level]
                                         for level in levels))

    def _run_inner(self, level: int, parents: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Stage ``level`` > 0 inside each parent: parents [n, D_{level-1}] and their tokens
        [n, U_{level-1}] -> outputs [n, P_level, D_level]."""
        rows, size, width = parents.shape[0], self.patch_sizes[level], self.widths[level]
        context = self.parent_projs[level - 1](parents).view(rows, size, width)
        if level == self.num_stages - 1:
            x = self.byte_embed(tokens) + context
        else:
            units = tokens.view(rows, size, self.unit_sizes[level])[:, :-1]
            embedded = self.embed_units(level, units)
            x = torch.cat([self._start(level, rows).to(embedded.dtype), embedded], dim=1) + context
        return self.stacks[level](x)

    def _chunking(self) -> bool:
        return self.config.checkpoint_tokens > 0 and self.training and torch.is_grad_enabled()

    def _map_parents(self, level: int, function, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """``function`` over row-pieces of ``tensors``: pieces of ``checkpoint_tokens``
        positions, checkpointed, when training in chunks; in every case pieces small enough
        that no kernel passes the element and row bounds."""
        rows = min(pieces_within_limit(self._parent_width(level), KERNEL_ELEMENT_LIMIT), KERNEL_ROW_LIMIT)
        if not self._chunking():
            return [function(*piece) for piece in zip(*(tensor.split(rows) for tensor in tensors))]
        rows = min(rows, max(1, self.config.checkpoint_tokens // self.patch_sizes[level]))
        pieces = zip(*(tensor.split(rows) for tensor in tensors))
        return [checkpoint(function, *piece, use_reentrant=False) for piece in pieces]

    def _parent_width(self, level: int) -> int:
        """Elements per parent of the largest tensor stage ``level`` makes inside it: its
        ``P_level`` positions times the widest activation, or the attention scores (which a
        fallback attention kernel makes whole)."""
        stage = self.config.stages[level]
        return max(stage.patch_size * stage.activation_width(), stage.num_query_heads * stage.patch_size**2)

    def pad(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pad [B, T] with PAD to whole coarsest units."""
        if tokens.shape[1] > self.context:
            raise ValueError(f"sequence of {tokens.shape[1]} tokens exceeds the context of {self.context}")
        if tokens.shape[1] == 0:
            raise ValueError("empty sequence")
        missing = -tokens.shape[1] % self.unit_sizes[0]
        return F.pad(tokens, (0, missing), value=PAD) if missing else tokens

    def parent_outputs(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run stages 0..N-2 over padded [B, L]: outputs of stage N-2 per byte patch
        [B * L / P_last, D_{N-2}] and the matching token rows [B * L / P_last, P_last]."""
        batch = tokens.shape[0]
        units = tokens.view(batch, -1, self.unit_sizes[0])
        outputs = self._run_top(units).flatten(0, 1)
        rows = units.flatten(0, 1)
        for level in range(1, self.num_stages - 1):
            function = functools.partial(self._run_inner, level)
            outputs = torch.cat(self._map_parents(level, function, outputs, rows)).flatten(0, 1)
            rows = rows.reshape(-1, self.unit_sizes[level])
        return outputs, rows

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final byte-stage states for padded [B, L] -> [B, L, D_last]."""
        parents, rows = self.parent_outputs(tokens)
        function = functools.partial(self._run_inner, self.num_stages - 1)
        states = torch.cat(self._map_parents(self.num_stages - 1, function, parents, rows))
        return states.reshape(tokens.shape[0], tokens.shape[1], -1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        return self.head(self.hidden(self.pad(tokens))[:, :length])

    def _patch_loss(self, parents, rows, targets, weights) -> torch.Tensor:
        """Summed weighted cross-entropy of the byte patches of ``parents``."""
        logits = self.head(self._run_inner(self.num_stages - 1, parents, rows))
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32, keep fp64
        losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        return (losses * weights.flatten()).sum()

    def loss(self, tokens, targets, mask=None, patch_fraction: float = 1.0) -> torch.Tensor:
        """Mean cross-entropy without holding all logits: byte patches (and the head) run in
        checkpointed chunks when chunking is on. ``patch_fraction`` < 1 scores a random subset
        of byte patches (bGPT's memory saver for training)."""
        length = tokens.shape[1]
        padded = self.pad(tokens)
        parents, rows = self.parent_outputs(padded)
        weights = torch.ones_like(targets, dtype=torch.float32) if mask is None else mask.float()
        missing = padded.shape[1] - length
        size = self.patch_sizes[-1]
        targets = F.pad(targets, (0, missing)).reshape(-1, size)
        weights = F.pad(weights, (0, missing)).reshape(-1, size)
        if patch_fraction < 1.0:
            count = max(1, round(patch_fraction * rows.shape[0]))
            chosen = torch.randperm(rows.shape[0], device=rows.device)[:count]
            parents, rows, targets, weights = parents[chosen], rows[chosen], targets[chosen], weights[chosen]
        total = sum(self._map_parents(self.num_stages - 1, self._patch_loss, parents, rows, targets, weights))
        return total / weights.sum().clamp_min(1.0)

    # ---- accounting -----------------------------------------------------------------
    def training_memory(self, batch_size: int, seq_len: int, optimizer: bool = True) -> int:
        """Estimated peak bytes of one training step (forward + backward under bf16 autocast,
        float32 weights and gradients, AdamW's two states when ``optimizer``), for the
        one-line refusal of a context that cannot fit. The constants were fitted to the peaks
        measured on the H200 (bench/bench_long_context.py; docs/long-context.md): the estimate
        stays 0-3 GiB above every measured peak from 2M to 16M bytes."""
        length = batch_size * (seq_len + (-seq_len % self.unit_sizes[0]))
        parameters = sum(parameter.numel() for parameter in self.parameters())
        total = parameters * (16 if optimizer else 8) + WORKSPACE_BYTES
        # per byte: ids, targets, weights and their padded copies; each level's outputs, kept
        # for the level below with their gradient and a concatenation's second copy
        per_byte = TOKEN_BYTES_PER_BYTE + sum(
            OUTPUT_COPIES * 2 * self.widths[level] / self.unit_sizes[level] for level in range(self.num_stages - 1))
        top = self._layer_activation_bytes(0) / self.unit_sizes[0]
        if isinstance(self.stacks[0], TransformerStack) and self.stacks[0].gradient_checkpointing:
            # each layer's input kept (bf16), one layer's activations recomputed at a time
            per_byte += (self.config.stages[0].num_layers * 2 * self.widths[0]) / self.unit_sizes[0] + top
        else:
            per_byte += self.config.stages[0].num_layers * top
        inner = []  # the inner stages' activations: all at once, or one checkpointed piece
        for level in range(1, self.num_stages):
            stage = self.config.stages[level]
            positions = length // self.unit_sizes[level - 1] * stage.patch_size
            if self.config.checkpoint_tokens:
                positions = min(positions, max(self.config.checkpoint_tokens, stage.patch_size))
            inner.append(positions * stage.num_layers * self._layer_activation_bytes(level))
        return int(total + per_byte * length + (sum(inner) if not self.config.checkpoint_tokens else max(inner)))

    def _layer_activation_bytes(self, level: int) -> int:
        """Bytes a layer of stage ``level`` keeps per position for its backward pass (bf16
        activations of the attention and SwiGLU parts, the float32 residual stream)."""
        stage = self.config.stages[level]
        if stage.block == "mamba":
            return 96 * stage.hidden_size
        return 26 * stage.hidden_size + 9 * stage.intermediate_size

    def flops_per_byte(self, seq_len: int) -> float:
        """Training FLOPs per byte: each stage's per-position FLOPs over its unit size,
        plus unit embeddings, parent projections and the head."""
        total = 6.0 * self.widths[-1] * NUM_BYTES
        for level, stack in enumerate(self.stacks):
            unit = self.unit_sizes[level]
            context = math.ceil(min(seq_len, self.context) / unit) if level == 0 else self.patch_sizes[level]
            if isinstance(stack, TransformerStack):
                total += stack.config.flops_per_token(context) / unit
            else:
                total += stack.flops_per_token(context) / unit
        for module, unit in zip(self.unit_embeds, self.unit_sizes):
            if isinstance(module, nn.Linear):
                total += 6.0 * module.weight.numel() / unit
        for projection, unit in zip(self.parent_projs, self.unit_sizes):
            total += 6.0 * projection.weight.numel() / unit
        return total


def pieces_within_limit(elements_per_row: int, limit: int) -> int:
    """Rows per piece so that a piece of rows of ``elements_per_row`` stays within ``limit``."""
    return max(1, limit // max(1, elements_per_row))


class MultiscaleModel(ByteModel):
    """N-stage MEGABYTE/MBLM model behind the shared interface."""

    arch = "multiscale"
    config_class = MultiscaleConfig

    def __init__(self, config: MultiscaleConfig | None = None):
        super().__init__(config or self.config_class())
        with self.defaults_undrawn():
            self.core = MultiscaleCore(self.config)
        self.init_unless_meta()

    def init_weights(self) -> None:
        self.core.reset_parameters()

    def shard_units(self) -> list[nn.Module]:
        return self.core.shard_units()

    @property
    def max_seq_len(self) -> int:
        return self.core.context

    @property
    def hidden_size(self) -> int:
        return self.core.widths[-1]

    @property
    def head(self) -> nn.Linear:
        return self.core.head

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Byte-stage states [B, T, D_last] (sequences are padded to whole units and cut back)."""
        return self.core.hidden(self.core.pad(tokens))[:, : tokens.shape[1]]

    def loss(self, tokens, targets, mask=None) -> torch.Tensor:
        fraction = self.config.byte_decoder_patch_fraction if self.training else 1.0
        return self.core.loss(tokens, targets, mask, patch_fraction=fraction)

    def decoder(self, batch_size: int, max_len: int | None = None, fast: bool = False,
                compile: bool = False) -> MultiscaleDecoder:
        return MultiscaleDecoder(self, batch_size, max_len, fast, compile=compile)

    def flops_per_byte(self, seq_len: int) -> float:
        return self.core.flops_per_byte(seq_len)

    def training_memory(self, batch_size: int, seq_len: int, optimizer: bool = True) -> int:
        return self.core.training_memory(batch_size, seq_len, optimizer)

    # ---- bGPT's file framing ------------------------------------------------------------
    def header_tokens(self, extension: str) -> list[int]:
        """bGPT's header patch: BOS, the extension's bytes, padding to one byte patch."""
        size = self.core.patch_sizes[-1]
        name = extension.lstrip(".").encode("utf-8")[: size - 1]
        return [BOS, *name] + [PAD] * (size - 1 - len(name))

    def frame(self, data: bytes, extension: str = "") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens, targets, mask) [1, T] for a whole file, with the header patch when enabled."""
        if not data:
            raise ValueError("frame needs at least one byte")
        prefix = self.header_tokens(extension) if self.config.extension_header else [BOS]
        tokens = torch.tensor([prefix + list(data[:-1])])
        targets = torch.tensor([[0] * (len(prefix) - 1) + list(data)])
        mask = torch.zeros_like(targets, dtype=torch.bool)
        mask[:, len(prefix) - 1:] = True
        return tokens, targets, mask

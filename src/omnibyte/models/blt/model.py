"""The Byte Latent Transformer (``--arch blt``): bytes grouped into dynamic patches.

Tokens follow the shared convention (``forward(tokens)[:, t]`` predicts the byte after
``tokens[:, t]``). A patcher (``patching.py``) marks where patches start, from the tokens and,
for the entropy schemes, the next-byte entropies of a small frozen entropy model; patch ``p``
covers positions ``[s_p, s_{p+1})``. Then:

1. **Embeddings**: a byte embedding plus hash n-gram embeddings: for every ``n`` in
   ``ngram_sizes`` a rolling polynomial hash of the ``n`` tokens ending at ``t`` picks one of
   ``ngram_vocab_size`` rows of that ``n``'s table; the rows are summed into the embedding.
2. **Local encoder**: byte Transformer layers with sliding-window causal attention
   (``local.window``), then each patch's query (the mean of its bytes) cross-attends to the
   bytes of its own patch (a softmax per patch, ``CrossAttention.segments``): one vector per
   patch, projected to the latent width.
3. **Latent Transformer** over the patches of each row (padded to the longest row), causal
   across patches, optionally windowed (``latent.window``) and reading a gated memory of the
   patches before its window (``latent.memory_slots``, ``PatchMemory``).
4. **Local decoder**: each byte of patch ``p`` cross-attends to the latent outputs of the
   ``local.decoder_patches`` patches before its own (``p-1, p-2, ...``; a learned start vector
   stands before patch 0), never to its own patch's, which has seen bytes after it; then
   byte Transformer layers (windowed) and the 256-way head.

No position sees a later token: a patch's latent output depends on bytes up to its end, and is
read only by bytes of later patches; a start at ``t`` depends on tokens up to ``t`` and on the
entropy of ``tokens[t]`` given the tokens before it.

The entropy model: the config's ``entropy_model`` names a trained next-byte run folder (flat
family). At build its config is copied into ``entropy_config`` and its weights are loaded; they
are frozen and saved with the model, so a saved BLT folder stands alone.

Cached generation lives in ``decode.py`` (``BLTDecoder``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn

from omnibyte.models.base import INPUT_VOCAB, NUM_BYTES, BaseConfig, ByteModel
from omnibyte.models.blt.decode import BLTDecoder
from omnibyte.models.blt.entropy import EntropyModel, load_entropy_model
from omnibyte.models.blt.ngrams import ngram_ids
from omnibyte.models.blt.patching import PatchingConfig, needs_entropy, patch_starts
from omnibyte.models.flat import BytePredictor, ModelConfig
from omnibyte.models.layers import (
    STACK_LIMITS,
    CrossAttention,
    StackConfig,
    TransformerStack,
    default_intermediate_size,
    init_weights,
    normal_from_cpu_,
)
from omnibyte.models.validation import ConfigError, Limit, ModelSize, field_path

# expected bytes per patch of the schemes whose patches depend on the data, for the FLOP
# estimate only: English words with their space; BLT's reported entropy patches
ASSUMED_PATCH_SIZE = {"space": 6.0, "entropy": 4.5, "monotonic": 4.5}
_WIDTH_LIMITS = {name: STACK_LIMITS[name] for name in ("hidden_size", "num_query_heads", "num_key_value_heads")}
_OPTIONAL_INTERMEDIATE = Limit(0, STACK_LIMITS["intermediate_size"].high)  # 0: the SwiGLU default


@dataclasses.dataclass
class LocalConfig(BaseConfig):
    """The byte-level encoder and decoder (one width, each with its own layers)."""

    LIMITS: ClassVar[dict[str, Limit]] = {
        **_WIDTH_LIMITS,
        "intermediate_size": _OPTIONAL_INTERMEDIATE,
        "encoder_layers": STACK_LIMITS["num_layers"],
        "decoder_layers": STACK_LIMITS["num_layers"],
        "window": Limit(0, STACK_LIMITS["max_sequence_length"].high),
        "cross_attention_heads": Limit(0, 1024),
        "decoder_patches": Limit(1, 1024),
    }

    hidden_size: int = 512
    num_query_heads: int = 16
    num_key_value_heads: int = 16
    intermediate_size: int = 0
    encoder_layers: int = 2
    decoder_layers: int = 6
    window: int = 512  # bytes each byte attends to, itself included (0: all before it)
    cross_attention_heads: int = 0  # 0: num_query_heads
    decoder_patches: int = 4  # latent outputs (patches before its own) each byte reads

    def fill_defaults(self) -> None:
        if self.intermediate_size == 0:
            self.intermediate_size = default_intermediate_size(self.hidden_size)
        if self.cross_attention_heads == 0:
            self.cross_attention_heads = self.num_query_heads

    def validate(self) -> None:
        super().validate()
        if self.hidden_size % self.cross_attention_heads:
            raise ConfigError("cross_attention_heads", f"must divide hidden_size ({self.hidden_size}), "
                                                       f"got {self.cross_attention_heads}")


@dataclasses.dataclass
class LatentConfig(BaseConfig):
    """The global Transformer over patches."""

    LIMITS: ClassVar[dict[str, Limit]] = {
        **_WIDTH_LIMITS,
        "intermediate_size": _OPTIONAL_INTERMEDIATE,
        "num_layers": STACK_LIMITS["num_layers"],
        "window": Limit(0, STACK_LIMITS["max_sequence_length"].high),
        "memory_slots": Limit(0, 1024),
    }

    hidden_size: int = 512
    num_layers: int = 8
    num_query_heads: int = 16
    num_key_value_heads: int = 16
    intermediate_size: int = 0
    window: int = 0  # patches each patch attends to, itself included (0: all before it)
    # hierarchical memory: slots summarising, through a learned gate, the patches that the
    # attention no longer sees (those before the window; with no window, all earlier ones)
    memory_slots: int = 0

    def fill_defaults(self) -> None:
        if self.intermediate_size == 0:
            self.intermediate_size = default_intermediate_size(self.hidden_size)

    @property
    def memory_lag(self) -> int:
        """Patch ``p`` reads the memory of patches ``<= p - memory_lag``."""
        return self.window if self.window > 0 else 1


@dataclasses.dataclass
class BLTConfig(BaseConfig):
    """One document: the local and latent parts, the patcher and the entropy model."""

    LIMITS: ClassVar[dict[str, Limit]] = {
        "ngram_vocab_size": Limit(0, 2**26),
        "max_sequence_length": STACK_LIMITS["max_sequence_length"],
        "rope_theta": STACK_LIMITS["rope_theta"],
        "norm_eps": STACK_LIMITS["norm_eps"],
        "attention_dropout": Limit(0.0, 1.0, high_open=True),
        "resid_dropout": Limit(0.0, 1.0, high_open=True),
    }

    local: LocalConfig = dataclasses.field(default_factory=LocalConfig)
    latent: LatentConfig = dataclasses.field(default_factory=LatentConfig)
    patching: PatchingConfig = dataclasses.field(default_factory=lambda: PatchingConfig(scheme="space"))
    ngram_vocab_size: int = 50_000  # buckets per n-gram size (0: no n-gram embeddings)
    ngram_sizes: list[int] = dataclasses.field(default_factory=lambda: [3, 4, 5, 6, 7, 8])
    max_sequence_length: int = 4096
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    qk_norm: bool = True
    attention_dropout: float = 0.0
    resid_dropout: float = 0.0
    differential_attention: bool = False  # every stack: pairs of heads, one map minus lambda x the other
    entropy_model: str = ""  # a trained next-byte run folder (entropy schemes), read at build
    entropy_config: ModelConfig | None = None  # its config, filled in at build: a saved model stands alone

    def validate(self) -> None:
        super().validate()
        for index, size in enumerate(self.ngram_sizes):
            if not 1 <= size <= 64:
                raise ConfigError(f"ngram_sizes[{index}]", f"must be in [1, 64], got {size}")
        for name, stack in (("local", self.encoder_stack()), ("latent", self.latent_stack())):
            with field_path(name):
                stack.validate()
        if needs_entropy(self.patching) and self.entropy_config is None and not self.entropy_model:
            raise ConfigError("entropy_model", f"must name a trained next-byte run folder: the "
                                               f"{self.patching.scheme} patcher needs an entropy model")

    def _stack(self, part, num_layers: int, window: int) -> StackConfig:
        return StackConfig(part.hidden_size, num_layers, part.num_query_heads, part.num_key_value_heads,
                           part.intermediate_size, self.max_sequence_length, self.rope_theta, self.norm_eps,
                           self.qk_norm, differential_attention=self.differential_attention, window=window,
                           attention_dropout=self.attention_dropout, resid_dropout=self.resid_dropout)

    def encoder_stack(self) -> StackConfig:
        return self._stack(self.local, self.local.encoder_layers, self.local.window)

    def decoder_stack(self) -> StackConfig:
        return self._stack(self.local, self.local.decoder_layers, self.local.window)

    def latent_stack(self) -> StackConfig:
        return self._stack(self.latent, self.latent.num_layers, self.latent.window)

    def estimate_size(self) -> ModelSize:
        """Every parameter (exact) and the build memory: stacks, embeddings, cross-attentions,
        projections, memory, head and the entropy model."""
        local, latent = self.local.hidden_size, self.latent.hidden_size
        size = self.encoder_stack().size() + self.decoder_stack().size() + self.latent_stack().size()
        parameters = (INPUT_VOCAB + NUM_BYTES) * local + len(self.ngram_sizes) * self.ngram_vocab_size * local
        parameters += 2 * _cross_attention_parameters(local, self.local.cross_attention_heads)
        parameters += 2 * local * latent + local  # projections to and from the latent, start vector
        slots = self.latent.memory_slots
        if slots:
            parameters += latent * slots + slots + latent * latent + slots * latent + latent + 1  # gates, values
            parameters += _cross_attention_parameters(latent, self.latent.num_query_heads)
        if self.entropy_config is not None:
            size += self.entropy_config.estimate_size()
        return size + ModelSize.of_parameters(parameters)


def _cross_attention_parameters(width: int, heads: int) -> int:
    """``CrossAttention(width, width, heads)``: four projections and four norms."""
    return 4 * width * width + 2 * width + 2 * (width // heads)


def _local(width, heads, encoder, decoder, window, decoder_patches=4) -> dict:
    return dict(hidden_size=width, num_query_heads=heads, num_key_value_heads=heads,
                encoder_layers=encoder, decoder_layers=decoder, window=window, decoder_patches=decoder_patches)


def _latent(width, heads, layers, **more) -> dict:
    return dict(hidden_size=width, num_query_heads=heads, num_key_value_heads=heads, num_layers=layers, **more)


BLT_PRESETS: dict[str, dict] = {
    "tiny": dict(local=_local(32, 2, 1, 1, 8, decoder_patches=2), latent=_latent(48, 2, 2),
                 patching=dict(scheme="space", max_patch_size=6), ngram_vocab_size=97,
                 max_sequence_length=512),
    "small": dict(local=_local(512, 16, 2, 6, 512), latent=_latent(512, 16, 8),
                  patching=dict(scheme="space", max_patch_size=16), ngram_vocab_size=50_000,
                  max_sequence_length=8192),
    "base": dict(local=_local(768, 24, 4, 8, 512), latent=_latent(768, 24, 12),
                 patching=dict(scheme="space", max_patch_size=1024), ngram_vocab_size=200_000,
                 max_sequence_length=8192),
}


class PatchMemory(nn.Module):
    """Hierarchical memory with adaptive gating, for the latent Transformer.

    Each closed patch ``j`` writes its latent input to every slot ``s`` through a learned gate
    ``g_js = sigmoid(w_s . x_j + b_s)``; slot ``s`` holds the gate-weighted mean of what was
    written to it (plus a learned slot vector). Patch ``p`` reads the memory of patches
    ``<= p - lag`` (those its attention window no longer covers) by cross-attention over the
    slots, scaled by a learned read gate, and adds it to its input. Running sums make it a
    prefix sum in training and a constant-size state per row in the decoder."""

    def __init__(self, size: int, slots: int, lag: int, heads: int, eps: float):
        super().__init__()
        self.lag, self.eps = lag, eps
        self.write_gate = nn.Linear(size, slots)
        self.write_value = nn.Linear(size, size, bias=False)
        self.slot_vectors = nn.Parameter(torch.zeros(slots, size))
        self.read = CrossAttention(size, size, heads, eps)
        self.read_gate = nn.Linear(size, 1)

    def contributions(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs [B, N, D] -> gated values [B, N, M, D] and gates [B, N, M]."""
        gates = torch.sigmoid(self.write_gate(inputs)).float()
        return gates.unsqueeze(-1) * self.write_value(inputs).float().unsqueeze(-2), gates

    def slots(self, written: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Running sums [.., M, D] and [.., M] -> slot contents [.., M, D]."""
        mean = written / (weights.unsqueeze(-1) + self.eps)
        return (mean + self.slot_vectors.float()).to(self.slot_vectors.dtype)

    def read_into(self, inputs: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """inputs [B, N, D] plus what each reads from its slots [B, N, M, D]."""
        batch, count, num_slots, size = slots.shape
        keys, values = self.read.keys(slots.reshape(batch, count * num_slots, size))
        keys = keys.view(batch, count, num_slots, *keys.shape[2:])
        values = values.view(batch, count, num_slots, *values.shape[2:])
        every = torch.ones(batch, count, num_slots, dtype=torch.bool, device=inputs.device)
        gate = torch.sigmoid(self.read_gate(inputs))
        return inputs + gate * self.read.attend_picked(inputs, keys, values, every)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        written, weights = self.contributions(inputs)
        written, weights = written.cumsum(dim=1), weights.cumsum(dim=1)
        # patch p reads the sums up to p - lag: shift right by lag, zeros before
        written = torch.cat((written.new_zeros(written[:, : self.lag].shape), written), dim=1)[:, : inputs.shape[1]]
        weights = torch.cat((weights.new_zeros(weights[:, : self.lag].shape), weights), dim=1)[:, : inputs.shape[1]]
        return self.read_into(inputs, self.slots(written, weights))


class BLTModel(ByteModel):
    """Byte Latent Transformer; see the module docstring. ``patching`` and ``entropy_model``
    (an ``EntropyModel`` or None) are what ``omnibyte patches`` reads."""

    arch = "blt"
    config_class = BLTConfig

    def __init__(self, config: BLTConfig | None = None):
        super().__init__(config or BLTConfig())
        config = self.config
        local, latent = config.local.hidden_size, config.latent.hidden_size
        heads = config.local.cross_attention_heads
        with self.defaults_undrawn():  # default inits leave the generator alone: init_weights draws
            self.embed = nn.Embedding(INPUT_VOCAB, local)
            self.ngram_embed = (nn.EmbeddingBag(len(config.ngram_sizes) * config.ngram_vocab_size, local, mode="sum")
                                if config.ngram_vocab_size else None)
            self.encoder = TransformerStack(config.encoder_stack())
            self.patch_attention = CrossAttention(local, local, heads, config.norm_eps)
            self.to_latent = nn.Linear(local, latent, bias=False)
            self.memory = (PatchMemory(latent, config.latent.memory_slots, config.latent.memory_lag,
                                       config.latent.num_query_heads, config.norm_eps)
                           if config.latent.memory_slots else None)
            self.latent = TransformerStack(config.latent_stack())
            self.from_latent = nn.Linear(latent, local, bias=False)
            self.latent_start = nn.Parameter(torch.zeros(local))  # what the bytes of patch 0 read
            self.byte_attention = CrossAttention(local, local, heads, config.norm_eps)
            self.local_decoder = TransformerStack(config.decoder_stack())
            self.head = nn.Linear(local, NUM_BYTES, bias=False)
            self.entropy_model = self._build_entropy_model()
        if not any(tensor.is_meta for tensor in self.parameters()):
            # an entropy model loaded from its run folder keeps its weights; a random one is
            # drawn after the rest, as init_weights after a meta build draws it
            self.init_weights(entropy=not self._entropy_from_run)

    @property
    def patching(self) -> PatchingConfig:
        return self.config.patching

    def _build_entropy_model(self):
        config = self.config
        self._entropy_from_run = False
        if not needs_entropy(config.patching):
            return None
        if config.entropy_config is not None:  # weights come with the saved model
            return EntropyModel(BytePredictor(config.entropy_config))
        self._entropy_from_run = True
        loaded = load_entropy_model(config.entropy_model)
        if not isinstance(loaded.model, BytePredictor):
            raise ConfigError("entropy_model", f"must be a flat model, {config.entropy_model} holds "
                                               f"a {loaded.model.arch} model")
        config.entropy_config = loaded.model.config
        return loaded

    # ---- FSDP / meta-device support ----------------------------------------------------
    def init_weights(self, entropy: bool = True) -> None:
        """Re-initialise every parameter and buffer from the current RNG (after building under
        ``torch.device("meta")`` and ``to_empty``). ``entropy``: the entropy model too, from
        its run folder when the config names one that exists, else randomly."""
        config = self.config
        for stack in (self.encoder, self.latent, self.local_decoder):
            stack.rope.reset_parameters()
        trainable = [module for name, module in self.named_children() if name != "entropy_model"]
        layers = config.local.encoder_layers + config.latent.num_layers + config.local.decoder_layers
        for module in trainable:
            init_weights(module, num_layers=layers)
            for sub in module.modules():
                if isinstance(sub, nn.Linear) and sub.bias is not None:
                    nn.init.zeros_(sub.bias)
                if hasattr(sub, "weight") and isinstance(sub.weight, nn.Parameter) and sub.weight.dim() == 1:
                    nn.init.ones_(sub.weight)  # the norms
        normal_from_cpu_(self.latent_start, std=0.02)  # CPU draws: the same weights on any device
        if self.memory is not None:
            normal_from_cpu_(self.memory.slot_vectors, std=0.02)
        if entropy and self.entropy_model is not None:
            self._reset_entropy_model()

    def _reset_entropy_model(self) -> None:
        flat = self.entropy_model.model
        flat.transformer.rope.reset_parameters()
        if self.config.entropy_model and Path(self.config.entropy_model).exists():
            source = load_entropy_model(self.config.entropy_model).model.state_dict()
            with torch.no_grad():
                for name, tensor in flat.state_dict().items():
                    tensor.copy_(source[name])
        else:
            flat.init_weights()

    def shard_units(self) -> list[nn.Module]:
        """The blocks, for FSDP: every layer of the three stacks."""
        return [*self.encoder.layers, *self.latent.layers, *self.local_decoder.layers]

    # ---- the ByteModel interface ---------------------------------------------------------
    @property
    def max_seq_len(self) -> int:
        return self.config.max_sequence_length

    @property
    def hidden_size(self) -> int:
        return self.config.local.hidden_size

    def embed_bytes(self, tokens: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        """Byte plus hash n-gram embeddings: [B, T] -> [B, T, D] (``history``: see ``ngram_ids``)."""
        x = self.embed(tokens)
        if self.ngram_embed is not None:
            config = self.config
            ids = ngram_ids(tokens, history, config.ngram_sizes, config.ngram_vocab_size)
            x = x + self.ngram_embed(ids.flatten(0, 1)).view_as(x)
        return x

    def entropies(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """The entropy model's next-byte entropies [B, T] (bits), None without one."""
        return None if self.entropy_model is None else self.entropy_model.entropies(tokens)

    def patch_starts(self, tokens: torch.Tensor) -> torch.Tensor:
        """Where the patches of ``tokens`` [B, T] start: bool [B, T]."""
        return patch_starts(self.config.patching, tokens, self.entropies(tokens))

    def patch_inputs(self, byte_hidden: torch.Tensor, patch_ids: torch.Tensor, count: int) -> torch.Tensor:
        """The latent inputs of ``count`` patches [B, count, D_latent]: each patch's mean
        encoder output queries the encoder outputs of its own bytes. ``patch_ids`` [B, T]
        (ids >= count are left out)."""
        batch, _, width = byte_hidden.shape
        ids = patch_ids.clamp_max(count)
        sums = byte_hidden.new_zeros(batch, count + 1, width).scatter_add(
            1, ids.unsqueeze(-1).expand(-1, -1, width), byte_hidden)
        sizes = byte_hidden.new_zeros(batch, count + 1).scatter_add(1, ids, torch.ones_like(byte_hidden[..., 0]))
        queries = sums[:, :count] / sizes[:, :count].clamp_min(1).unsqueeze(-1)
        return self.to_latent(queries + self.patch_attention.segments(queries, byte_hidden, ids))

    def latent_keys(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values the bytes read from latent outputs [B, N, D_latent]: [B, N, H, hd]."""
        return self.byte_attention.keys(self.from_latent(latent))

    def start_keys(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values of the start vector (what stands before patch 0): [1, 1, H, hd]."""
        return self.byte_attention.keys(self.latent_start.view(1, 1, -1))

    def read_latents(self, byte_hidden: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                     patch_ids: torch.Tensor) -> torch.Tensor:
        """Bytes of patch ``p`` read keys ``p, p-1, ...`` of ``[start, L_0, L_1, ...]`` (key ``p``
        is the latent output of patch ``p-1``): their decoder input [B, T, D]."""
        back = torch.arange(self.config.local.decoder_patches, device=patch_ids.device)
        index = patch_ids.unsqueeze(-1) - back
        return byte_hidden + self.byte_attention.gathered(byte_hidden, keys, values, index, index >= 0)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        patch_ids = self.patch_starts(tokens).long().cumsum(dim=1) - 1  # [B, T]
        count = int(patch_ids[:, -1].max()) + 1  # patches of the longest row; shorter rows pad
        byte_hidden = self.encoder(self.embed_bytes(tokens))
        inputs = self.patch_inputs(byte_hidden, patch_ids, count)
        latent = self.latent(inputs if self.memory is None else self.memory(inputs))
        keys, values = self.latent_keys(latent)
        start_keys, start_values = self.start_keys()
        batch = tokens.shape[0]
        keys = torch.cat((start_keys.expand(batch, -1, -1, -1), keys), dim=1)
        values = torch.cat((start_values.expand(batch, -1, -1, -1), values), dim=1)
        return self.local_decoder(self.read_latents(byte_hidden, keys, values, patch_ids))

    def decoder(self, batch_size: int, max_len: int | None = None, fast: bool = False,
                compile: bool = False) -> BLTDecoder:
        return BLTDecoder(self, batch_size, max_len, fast, compile=compile)

    def mean_patch_size(self) -> float:
        """Bytes per patch the FLOP estimate assumes (exact for ``fixed``)."""
        patching = self.config.patching
        if patching.scheme == "fixed":
            return float(min(max(patching.stride, patching.min_patch_size), patching.max_patch_size))
        return min(ASSUMED_PATCH_SIZE[patching.scheme], float(patching.max_patch_size))

    def flops_per_byte(self, seq_len: int) -> float:
        """Training FLOPs per byte: the local stacks per byte (attention over their window),
        the latent stack per patch (``mean_patch_size`` bytes), the cross-attentions and
        projections, the head, and the frozen entropy model's forward pass."""
        config = self.config
        local, latent, patch = config.local.hidden_size, config.latent.hidden_size, self.mean_patch_size()
        byte_context = min(seq_len, config.local.window or seq_len)
        patches = max(1.0, seq_len / patch)
        latent_context = min(patches, config.latent.window or patches)
        flops = config.encoder_stack().flops_per_token(byte_context) + config.decoder_stack().flops_per_token(byte_context)
        flops += config.latent_stack().flops_per_token(latent_context) / patch
        per_byte_matmuls = 4 * local * local + local * NUM_BYTES  # byte cross-attention, head
        per_byte_matmuls += (4 * local * local + 2 * local * latent) / patch  # patch cross-attention, projections
        flops += 6 * per_byte_matmuls
        if self.entropy_model is not None:
            flat = self.entropy_model.model
            flops += flat.flops_per_byte(min(seq_len, flat.max_seq_len)) / 3  # forward only
        return flops


def describe(model: BLTModel) -> dict[str, Any]:
    """What ``omnibyte info`` shows about a BLT model's patcher."""
    entropy = model.config.entropy_model or ("embedded" if model.entropy_model is not None else "none")
    return {"patching": model.config.patching.describe(), "entropy_model": entropy}

"""The flat byte model: one causal transformer over every byte, and its KV-cached decoder."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Iterator

import numpy as np
import torch
import torch.nn as nn

from omnibyte.models.base import INPUT_VOCAB, NUM_BYTES, BaseConfig, ByteModel, Decoder
from omnibyte.models.graphs import GraphSteps, cache_slots, decoding_mode
from omnibyte.models.speculative import MAX_DRAFT
from omnibyte.models.validation import Limit, ModelSize
from omnibyte.models.layers import (
    STACK_LIMITS,
    StackConfig,
    TransformerStack,
    default_intermediate_size,
    init_weights,
)


@dataclasses.dataclass
class ModelConfig(BaseConfig):
    """Flat model config; the defaults are the reference spec (the ``base`` preset)."""

    LIMITS: ClassVar[dict[str, Limit]] = {
        **STACK_LIMITS,
        "vocab_size": Limit(NUM_BYTES, NUM_BYTES),
        "intermediate_size": Limit(0, STACK_LIMITS["intermediate_size"].high),  # 0: the default
    }

    OMIT_WHEN_DEFAULT: ClassVar[tuple[str, ...]] = ("differential_attention",)

    vocab_size: int = NUM_BYTES
    hidden_size: int = 1024
    num_layers: int = 12
    # 16 query heads of 64 (4 key-value heads): the same parameters and FLOPs as 32 heads of 32,
    # but attention kernels run far faster on 64-wide heads; at 8192 bytes attention is most of
    # the work, so `base` trains at 55% MFU on an H200 instead of 40% (bench/RESULTS.md)
    num_query_heads: int = 16
    num_key_value_heads: int = 4
    max_sequence_length: int = 8192
    intermediate_size: int = 0  # 0: SwiGLU default for hidden_size
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    qk_norm: bool = True
    differential_attention: bool = False  # layers.DifferentialHeads

    def fill_defaults(self) -> None:
        if self.intermediate_size == 0:
            self.intermediate_size = default_intermediate_size(self.hidden_size)

    def stack(self) -> StackConfig:
        return StackConfig(
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            num_query_heads=self.num_query_heads,
            num_key_value_heads=self.num_key_value_heads,
            intermediate_size=self.intermediate_size,
            max_sequence_length=self.max_sequence_length,
            rope_theta=self.rope_theta,
            norm_eps=self.norm_eps,
            qk_norm=self.qk_norm,
            differential_attention=self.differential_attention,
        )

    def validate(self) -> None:
        super().validate()
        self.stack().validate()

    def estimate_size(self) -> ModelSize:
        """Byte embedding, the stack and the head."""
        embeddings = (INPUT_VOCAB + self.vocab_size) * self.hidden_size
        return self.stack().size() + ModelSize.of_parameters(embeddings)


FLAT_PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, num_layers=2, num_query_heads=4, num_key_value_heads=2,
                 max_sequence_length=1024),
    "small": dict(hidden_size=512, num_layers=8, num_query_heads=8, num_key_value_heads=2,
                  intermediate_size=1536, max_sequence_length=8192),
    "base": dict(),
    # the built-in general model (scripts/train_general_model.py): 6.8M parameters, 13.0 MiB in
    # bfloat16, under the 16 MB the package allows; 64-wide heads, one key-value head
    "general": dict(hidden_size=320, num_layers=6, num_query_heads=5, num_key_value_heads=1,
                    max_sequence_length=2048),
    "1b": dict(hidden_size=2048, num_layers=22, num_query_heads=32, num_key_value_heads=8,
               max_sequence_length=8192),
}


class BytePredictor(ByteModel):
    """Byte embedding -> TransformerStack (the trunk) -> 256-way head."""

    arch = "flat"
    config_class = ModelConfig

    def __init__(self, config: ModelConfig | None = None):
        super().__init__(config or ModelConfig())
        config = self.config
        with self.defaults_undrawn():
            self.embed = nn.Embedding(INPUT_VOCAB, config.hidden_size)
            self.transformer = TransformerStack(config.stack())
            self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.init_unless_meta()

    def init_weights(self) -> None:
        init_weights(self.embed)
        self.transformer.reset_parameters()
        init_weights(self.head)

    def shard_units(self) -> list[nn.Module]:
        return list(self.transformer.layers)

    @property
    def max_seq_len(self) -> int:
        return self.config.max_sequence_length

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.transformer(self.embed(tokens))

    def decoder(self, batch_size: int, max_len: int | None = None, fast: bool = False,
                compile: bool = False) -> "FlatDecoder":
        return FlatDecoder(self, batch_size, max_len, fast, compile=compile)

    def flops_per_byte(self, seq_len: int) -> float:
        head = 6 * self.config.hidden_size * self.config.vocab_size
        return self.config.stack().flops_per_token(seq_len) + head


# prompts are written into the cache this many tokens at a time (FlatDecoder._pieces says why)
PREFILL_CHUNK = 1024

# a fast decoder's verify call (speculative decoding: the pending byte and its draft) has this
# static width
VERIFY_WIDTH = MAX_DRAFT + 1

# a fast decoder's cache is a multiple of this many positions: aligned masks let SDPA's fused
# kernels take them without copying
CACHE_ALIGNMENT = 64


class FlatDecoder(Decoder):
    """Per-row KV-cached decoding of a ``BytePredictor``.

    The cache takes the dtype of the model's weights (cast the model with
    ``model.to(torch.bfloat16)`` for bf16 decoding). Eager steps attend over the cache up to
    the longest row; ``fast`` steps attend over the whole (aligned) cache, so their shapes never
    change, and on CUDA the step is captured once as a CUDA graph (``graph`` overrides that).
    A captured graph reads the weights by address: in-place updates (training,
    ``load_state_dict``) are seen, replacing the tensors (``model.to(...)``) is not.

    Speculative decoding: ``extend`` (the verify call) runs eagerly on an eager decoder. A fast
    decoder runs a verify call of up to ``VERIFY_WIDTH`` tokens per row as one more static piece,
    padded to that width (captured as a CUDA graph on its first use), so a verify call costs
    about what a plain step does; wider calls run eagerly."""

    supports_speculation = True
    supports_device_rounds = True

    def __init__(
        self,
        model: BytePredictor,
        batch_size: int,
        max_len: int | None = None,
        fast: bool = False,
        graph: bool | None = None,
        compile: bool = False,
    ):
        context = model.max_seq_len
        capacity = context if max_len is None else min(max_len, context)
        super().__init__(batch_size, capacity, model.device)
        self.model, self.fast = model, fast
        slots = cache_slots(capacity, fast, compile, CACHE_ALIGNMENT)
        self.cache = model.transformer.new_cache(batch_size, self.device, max_len=slots)
        self.tokens = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.one_each = torch.ones(batch_size, 1, dtype=torch.bool, device=self.device)
        self.visible: int | None = None  # cache slots an eager step attends to (None: all)
        self.dense = False  # an eager step where every row holds the same number of tokens: no mask
        use_graph = decoding_mode(self.device, fast, graph, compile)
        self.steps = GraphSteps({"step": self._static_step}, use_graph, compile)
        self.steps.capture(prepare=self.cache.reset)
        self.cache.reset()

    def _static_step(self) -> torch.Tensor:
        model = self.model
        x = model.embed(self.tokens).unsqueeze(1)
        hidden = model.transformer(x, self.cache, self.one_each, self.visible, self.dense)
        return model.head(hidden[:, -1])

    def _visible(self, longest: int) -> int | None:
        """Cache slots to attend to once the longest row holds ``longest`` tokens (fast: all)."""
        return None if self.fast else longest

    def _pieces(self, tokens: torch.Tensor, valid: torch.Tensor, counts: np.ndarray
                ) -> Iterator[tuple[int, torch.Tensor]]:
        """Appends the tokens ``PREFILL_CHUNK`` at a time, yielding each piece's start and hidden
        states: a ragged prompt attends with an explicit mask, whose scores take rows x heads x
        tokens x context; 64 rows of 8 KB in one piece asked for 64 GiB on the H200."""
        model = self.model
        written = np.zeros_like(counts)
        for start in range(0, int(counts.max()), PREFILL_CHUNK):
            end = start + PREFILL_CHUNK
            written += np.clip(counts - start, 0, PREFILL_CHUNK)
            visible = self._visible(int((self.lengths + written).max()))
            yield start, model.transformer(model.embed(tokens[:, start:end]), self.cache, valid[:, start:end], visible)

    def _prefill(self, tokens: torch.Tensor, valid: torch.Tensor, counts: np.ndarray) -> torch.Tensor:
        """Each row's logits come from the piece holding its last token."""
        model = self.model
        rows = torch.arange(self.batch_size, device=self.device)
        last = np.maximum(counts - 1, 0)
        logits = None
        for start, hidden in self._pieces(tokens, valid, counts):
            end = start + PREFILL_CHUNK
            in_piece = torch.from_numpy((last >= start) & (last < end)).to(self.device)
            position = torch.from_numpy(np.clip(last - start, 0, hidden.shape[1] - 1)).to(self.device)
            piece_logits = model.head(hidden[rows, position])
            logits = piece_logits if logits is None else torch.where(in_piece.unsqueeze(1), piece_logits, logits)
        return logits

    def _step(self, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens.copy_(tokens)
        self.visible = self._visible(int(self.lengths.max()) + 1)
        # rows of equal length (every step of a compression group) attend without a mask
        self.dense = self.visible is not None and int(self.lengths.min()) + 1 == self.visible
        return self.steps.run("step")

    def _reset(self, rows: torch.Tensor) -> None:
        self.cache.reset(rows)

    def _extend(self, tokens: torch.Tensor, valid: torch.Tensor, counts: np.ndarray) -> torch.Tensor:
        width = tokens.shape[1]
        if not self.fast or width > VERIFY_WIDTH:
            return torch.cat([self.model.head(hidden) for _, hidden in self._pieces(tokens, valid, counts)], dim=1)
        if "verify" not in self.steps.pieces:
            self._add_verify_piece()
        self.verify_tokens.zero_()
        self.verify_tokens[:, :width] = tokens
        self.verify_valid.zero_()
        self.verify_valid[:, :width] = valid
        return self.steps.run("verify")[:, :width]

    def _add_verify_piece(self) -> None:
        """The static verify piece, compiled and captured when a run first asks for it; the
        warm-up calls write past every row's length, which the restored lengths then ignore."""
        self.verify_tokens = torch.zeros(self.batch_size, VERIFY_WIDTH, dtype=torch.long, device=self.device)
        self.verify_valid = torch.zeros(self.batch_size, VERIFY_WIDTH, dtype=torch.bool, device=self.device)
        self.add_piece("verify", self._static_verify, prepare=lambda: None)

    def _static_verify(self) -> torch.Tensor:
        return self.verify_on_device(self.verify_tokens, self.verify_valid)

    def _rewind(self, counts: np.ndarray) -> None:
        self.cache.rewind(torch.from_numpy(counts).to(self.device))

    # ---- rounds of speculation on the device (``speculative.DeviceRounds``) ----------------
    def verify_on_device(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        model = self.model
        return model.head(model.transformer(model.embed(tokens), self.cache, valid))

    def rewind_on_device(self, counts: torch.Tensor) -> None:
        self.cache.rewind(counts)

    def add_piece(self, name: str, piece: Callable[[], Any], prepare: Callable[[], None]) -> None:
        lengths = self.cache.lengths.clone()  # warm-ups and the capture run the piece: undo its appends

        def restore() -> None:
            self.cache.lengths.copy_(lengths)
            prepare()

        self.steps.add(name, piece, restore)

    def run_piece(self, name: str) -> Any:
        return self.steps.run(name)

    def _device_lengths(self) -> torch.Tensor:
        return self.cache.lengths

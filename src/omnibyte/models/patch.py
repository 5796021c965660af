"""The fixed-patch byte model (bGPT): a patch-level decoder over patches of S bytes and a
byte-level decoder inside each patch.

It is the two-stage case of the multiscale core (``multiscale.MultiscaleCore``): stage 0 is the
patch-level decoder over ``max_sequence_length / S`` patches, stage 1 the byte-level decoder
over the S bytes of a patch. On top of it come bGPT's options:

* ``byte_decoder_patch_fraction`` < 1: in training, ``loss()`` runs the byte-level decoder on a
  random subset of the patches only and scores just those bytes (bGPT's memory saver).
  ``forward`` always returns every logit, so scoring and evaluation are unaffected.
* ``extension_header``: files are framed with a first patch holding their extension
  (``frame()``/``header_tokens()``), so the model conditions on the file type.

bGPT's end patch is not offered: it is a 257th output class, and every omnibyte model
predicts exactly 256 byte values.
"""
from __future__ import annotations

import dataclasses

import torch

from omnibyte.models.base import BOS, BaseConfig
from omnibyte.models.layers import default_intermediate_size
from omnibyte.models.multiscale import PAD, MultiscaleConfig, MultiscaleModel, StageConfig


@dataclasses.dataclass
class PatchConfig(BaseConfig):
    """bGPT-style model; the defaults are bGPT's (the ``bgpt`` preset)."""

    patch_size: int = 16
    hidden_size: int = 768  # patch-level decoder
    num_layers: int = 12
    num_query_heads: int = 12
    num_key_value_heads: int = 12
    intermediate_size: int = 0  # 0: SwiGLU default
    byte_hidden_size: int = 768  # byte-level decoder
    byte_num_layers: int = 3
    byte_num_query_heads: int = 12
    byte_num_key_value_heads: int = 12
    byte_intermediate_size: int = 0
    max_sequence_length: int = 16384  # bytes
    byte_decoder_patch_fraction: float = 1.0
    extension_header: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    qk_norm: bool = True
    checkpoint_tokens: int = 0
    checkpoint_layers: bool = False

    def __post_init__(self):
        if self.intermediate_size == 0:
            self.intermediate_size = default_intermediate_size(self.hidden_size)
        if self.byte_intermediate_size == 0:
            self.byte_intermediate_size = default_intermediate_size(self.byte_hidden_size)

    def multiscale(self) -> MultiscaleConfig:
        """The equivalent two-stage multiscale configuration."""
        patches = StageConfig(self.max_sequence_length // self.patch_size, self.hidden_size, self.num_layers,
                              self.num_query_heads, self.num_key_value_heads, self.intermediate_size)
        bytes_ = StageConfig(self.patch_size, self.byte_hidden_size, self.byte_num_layers,
                             self.byte_num_query_heads, self.byte_num_key_value_heads,
                             self.byte_intermediate_size)
        return MultiscaleConfig([patches, bytes_], self.rope_theta, self.norm_eps, self.qk_norm,
                                self.checkpoint_tokens, self.checkpoint_layers)

    def validate(self) -> None:
        if self.patch_size < 1 or self.max_sequence_length % self.patch_size:
            raise ValueError("max_sequence_length must be a positive multiple of patch_size")
        if not 0 < self.byte_decoder_patch_fraction <= 1:
            raise ValueError("byte_decoder_patch_fraction must be in (0, 1]")
        self.multiscale().validate()


PATCH_PRESETS: dict[str, dict] = {
    "tiny": dict(patch_size=4, hidden_size=64, num_layers=2, num_query_heads=4, num_key_value_heads=2,
                 byte_hidden_size=32, byte_num_layers=1, byte_num_query_heads=2,
                 byte_num_key_value_heads=1, max_sequence_length=512),
    "small": dict(hidden_size=512, num_layers=8, num_query_heads=8, num_key_value_heads=8,
                  byte_hidden_size=384, byte_num_layers=2, byte_num_query_heads=6,
                  byte_num_key_value_heads=6, max_sequence_length=8192),
    "bgpt": dict(),
}


class PatchModel(MultiscaleModel):
    """bGPT: patch-level decoder + byte-level decoder on the two-stage multiscale core."""

    arch = "patch"
    config_class = PatchConfig

    def core_config(self) -> MultiscaleConfig:
        return self.config.multiscale()

    def loss(self, tokens, targets, mask=None) -> torch.Tensor:
        fraction = self.config.byte_decoder_patch_fraction if self.training else 1.0
        return self.core.loss(tokens, targets, mask, patch_fraction=fraction)

    def header_tokens(self, extension: str) -> list[int]:
        """bGPT's header patch: BOS, the extension's bytes, padding to one patch."""
        size = self.config.patch_size
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


def _register() -> None:
    from omnibyte.models import register

    register(PatchModel, PATCH_PRESETS)


_register()

"""The multiscale family (MEGABYTE / MBLM, N stages of Transformer or Mamba stacks) and its
bGPT ``patch`` presets: ``core`` (config, computation, model), ``decode`` (per-row decoder),
``patch`` (bGPT as a two-stage preset)."""
from omnibyte.models.multiscale.core import (
    MULTISCALE_PRESETS,
    MultiscaleConfig,
    MultiscaleCore,
    MultiscaleModel,
    PatchEmbedding,
    StageConfig,
)
from omnibyte.models.multiscale.decode import PAD, MultiscaleDecoder
from omnibyte.models.multiscale.patch import PATCH_PRESETS, PatchModel, bgpt_stages

__all__ = [
    "MULTISCALE_PRESETS", "MultiscaleConfig", "MultiscaleCore", "MultiscaleDecoder", "MultiscaleModel",
    "PAD", "PATCH_PRESETS", "PatchEmbedding", "PatchModel", "StageConfig", "bgpt_stages",
]

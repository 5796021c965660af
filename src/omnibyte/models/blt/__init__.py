"""The Byte Latent Transformer family: patchers, the entropy model and the model."""
from omnibyte.models.blt.model import BLT_PRESETS, BLTConfig, BLTModel, LatentConfig, LocalConfig, PatchMemory
from omnibyte.models.blt.patching import PatchingConfig, PatchTracker, needs_entropy, patch_starts

__all__ = [
    "BLT_PRESETS", "BLTConfig", "BLTModel", "LatentConfig", "LocalConfig", "PatchMemory", "PatchTracker",
    "PatchingConfig", "needs_entropy", "patch_starts",
]

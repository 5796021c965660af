"""The fixed-patch byte model (bGPT) as presets of the multiscale family.

bGPT is the two-stage case of the multiscale core: stage 0 is the patch-level decoder over
``context / S`` patches, stage 1 the byte-level decoder over the S bytes of a patch. Its two
options are fields of ``MultiscaleConfig``: ``byte_decoder_patch_fraction`` (in training, run the
byte decoder on a random subset of the patches) and ``extension_header`` (frame files with a
first patch holding their extension; ``MultiscaleModel.frame``).

bGPT's end patch is not offered: it is a 257th output class, and every omnibyte model predicts
exactly 256 byte values.

``--arch patch`` stays a name of its own, so run directories of omnibyte 0.1, whose config held
bGPT's flat fields (``patch_size``, ``byte_hidden_size``, ...), load through ``upgrade_config``.
"""
from __future__ import annotations

from typing import Any

from omnibyte.models.layers import STACK_LIMITS, default_intermediate_size
from omnibyte.models.multiscale.core import MultiscaleModel, StageConfig
from omnibyte.models.validation import ConfigError, Limit, check_range


# bGPT's fields (``byte_`` ones without the prefix) and their ranges; 0 widths mean the default
_FIELD_LIMITS: dict[str, Limit] = {
    **STACK_LIMITS,
    "patch_size": STACK_LIMITS["max_sequence_length"],
    "intermediate_size": Limit(0, STACK_LIMITS["intermediate_size"].high),
}


def bgpt_stages(
    patch_size: int = 16,
    max_sequence_length: int = 16384,
    hidden_size: int = 768,
    num_layers: int = 12,
    num_query_heads: int = 12,
    num_key_value_heads: int = 12,
    intermediate_size: int = 0,
    byte_hidden_size: int = 768,
    byte_num_layers: int = 3,
    byte_num_query_heads: int = 12,
    byte_num_key_value_heads: int = 12,
    byte_intermediate_size: int = 0,
) -> list[dict[str, Any]]:
    """The two stages of a bGPT model described by its own (flat) hyper-parameters; errors
    name bGPT's field (``--set hidden_size=-64`` on ``--arch patch`` is about hidden_size)."""
    given = dict(locals())
    for name, value in given.items():
        limit = _FIELD_LIMITS[name.removeprefix("byte_")]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, f"must be an integer, got {value!r}")
        check_range(name, value, limit, "an integer")
    if max_sequence_length % patch_size:
        raise ConfigError("max_sequence_length", f"must be a multiple of patch_size ({patch_size}), "
                                                 f"got {max_sequence_length}")
    return [
        dict(patch_size=max_sequence_length // patch_size, hidden_size=hidden_size, num_layers=num_layers,
             num_query_heads=num_query_heads, num_key_value_heads=num_key_value_heads,
             intermediate_size=intermediate_size or default_intermediate_size(hidden_size)),
        dict(patch_size=patch_size, hidden_size=byte_hidden_size, num_layers=byte_num_layers,
             num_query_heads=byte_num_query_heads, num_key_value_heads=byte_num_key_value_heads,
             intermediate_size=byte_intermediate_size or default_intermediate_size(byte_hidden_size)),
    ]


PATCH_PRESETS: dict[str, dict] = {
    "tiny": dict(stages=bgpt_stages(4, 512, 64, 2, 4, 2, 0, 32, 1, 2, 1)),
    "small": dict(stages=bgpt_stages(16, 8192, 512, 8, 8, 8, 0, 384, 2, 6, 6)),
    "bgpt": dict(stages=bgpt_stages()),
}

# the fields of omnibyte 0.1's PatchConfig that name the shape of its two stages
_LEGACY_SHAPE_FIELDS = (
    "patch_size", "max_sequence_length", "hidden_size", "num_layers", "num_query_heads",
    "num_key_value_heads", "intermediate_size", "byte_hidden_size", "byte_num_layers",
    "byte_num_query_heads", "byte_num_key_value_heads", "byte_intermediate_size",
)


class PatchModel(MultiscaleModel):
    """bGPT: patch-level decoder + byte-level decoder on the two-stage multiscale core."""

    arch = "patch"

    @classmethod
    def upgrade_config(cls, values: dict[str, Any]) -> dict[str, Any]:
        """bGPT's flat fields (omnibyte 0.1's config, or ``--set patch_size=8`` on a preset)
        -> the two stages they describe; fields not given keep the stages' (or bGPT's) values."""
        given = {name: values.pop(name) for name in _LEGACY_SHAPE_FIELDS if name in values}
        if not given:
            return values
        shape = _shape_of(values["stages"]) if "stages" in values else {}
        return {**values, "stages": bgpt_stages(**{**shape, **given})}


def _shape_of(stages: Any) -> dict[str, Any]:
    """bGPT's flat fields of two stage dicts (or ``StageConfig``s); malformed stages are
    refused here, since bGPT's fields can only be mapped onto exactly two."""
    if not isinstance(stages, (list, tuple)) or len(stages) != 2 or not all(
            isinstance(stage, (dict, StageConfig)) for stage in stages):
        raise ConfigError("stages", "must be two stages (patches, then bytes) to combine with bGPT's fields")
    patches, byte_stage = (stage if isinstance(stage, dict) else stage.to_dict() for stage in stages)
    shape = {"patch_size": byte_stage["patch_size"],
             "max_sequence_length": patches["patch_size"] * byte_stage["patch_size"]}
    for prefix, stage in (("", patches), ("byte_", byte_stage)):
        for name in ("hidden_size", "num_layers", "num_query_heads", "num_key_value_heads"):
            if name in stage:
                shape[prefix + name] = stage[name]
        # a width that is only the default follows a new hidden_size, as in bGPT's own config
        width, hidden = stage.get("intermediate_size", 0), stage.get("hidden_size", 0)
        if not all(isinstance(value, int) for value in (width, hidden)):
            shape[prefix + "intermediate_size"] = width  # not a size: refused, with its name, by bgpt_stages
        elif width and width != default_intermediate_size(hidden or 1):
            shape[prefix + "intermediate_size"] = width
    return shape

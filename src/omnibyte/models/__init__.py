"""Model families behind one interface (see ``base.ByteModel``) and their registry."""
from __future__ import annotations

from typing import Any

from omnibyte.models.base import BOS, BaseConfig, ByteModel
from omnibyte.models.flat import FLAT_PRESETS, BytePredictor, ModelConfig

# arch name -> (model class, presets: name -> config overrides)
ARCHITECTURES: dict[str, tuple[type[ByteModel], dict[str, dict[str, Any]]]] = {
    "flat": (BytePredictor, FLAT_PRESETS),
}


def register(model_class: type[ByteModel], presets: dict[str, dict[str, Any]]) -> None:
    ARCHITECTURES[model_class.arch] = (model_class, presets)


def model_class_for(arch: str) -> type[ByteModel]:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r} (choose from {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[arch][0]


def make_config(arch: str, preset: str = "tiny", **overrides: Any) -> BaseConfig:
    """Config of ``arch`` from a named preset plus field overrides."""
    model_class = model_class_for(arch)
    presets = ARCHITECTURES[arch][1]
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r} for {arch} (choose from {', '.join(presets)})")
    return model_class.config_class.from_dict({**presets[preset], **overrides})


def build_model(arch: str = "flat", preset: str = "tiny", **overrides: Any) -> ByteModel:
    return model_class_for(arch)(make_config(arch, preset, **overrides))


def _register_optional_families() -> None:
    """Families in their own modules register themselves on import."""
    import importlib

    for module in ("omnibyte.models.patch", "omnibyte.models.multiscale"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise


_register_optional_families()

__all__ = [
    "ARCHITECTURES", "BOS", "BaseConfig", "ByteModel", "BytePredictor", "ModelConfig",
    "build_model", "make_config", "model_class_for", "register",
]

"""The model families by ``--arch`` name, with their named presets.

A new family registers here (one line in ``ARCHITECTURES``); the conformance suite
(tests/test_conformance.py) then runs every check on it."""
from __future__ import annotations

from typing import Any

from omnibyte.models.base import BaseConfig, ByteModel
from omnibyte.models.flat import FLAT_PRESETS, BytePredictor
from omnibyte.models.multiscale import MULTISCALE_PRESETS, PATCH_PRESETS, MultiscaleModel, PatchModel

# arch name -> (model class, presets: name -> config overrides)
ARCHITECTURES: dict[str, tuple[type[ByteModel], dict[str, dict[str, Any]]]] = {
    "flat": (BytePredictor, FLAT_PRESETS),
    "patch": (PatchModel, PATCH_PRESETS),
    "multiscale": (MultiscaleModel, MULTISCALE_PRESETS),
}


def register(model_class: type[ByteModel], presets: dict[str, dict[str, Any]]) -> None:
    """Add a family defined outside omnibyte (its ``arch`` must be new)."""
    if model_class.arch in ARCHITECTURES:
        raise ValueError(f"architecture {model_class.arch!r} is already registered")
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
    values = model_class.upgrade_config({**presets[preset], **overrides})
    return model_class.config_class.from_dict(values)


def build_model(arch: str = "flat", preset: str = "tiny", **overrides: Any) -> ByteModel:
    return model_class_for(arch)(make_config(arch, preset, **overrides))

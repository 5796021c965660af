"""The model families by ``--arch`` name, with their named presets.

A new family registers here (one line in ``ARCHITECTURES``); the conformance suite
(tests/test_conformance.py) then runs every check on it."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

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
    """Config of ``arch`` from a named preset plus field overrides (``--set``), every field
    checked: errors are ``ConfigError``s naming the field and its allowed range."""
    model_class = model_class_for(arch)
    presets = ARCHITECTURES[arch][1]
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r} for {arch} (choose from {', '.join(presets)})")
    values = merge_settings(presets[preset], nest_dotted(overrides))
    return model_class.config_class.from_dict(model_class.upgrade_config(values))


def nest_dotted(overrides: dict[str, Any]) -> dict[str, Any]:
    """``{"patching.scheme": "space"}`` -> ``{"patching": {"scheme": "space"}}`` (a ``--set``
    key names a field of a nested config with dots)."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        *parents, name = key.split(".")
        if not all(parents) or not name:
            raise ValueError(f"bad setting name {key!r}")
        target = nested
        for parent in parents:
            child = target.setdefault(parent, {})
            if not isinstance(child, dict):
                raise ValueError(f"{key!r} sets a field inside {parent!r}, which is also set to a value")
            target = child
        target[name] = merge_settings(target[name], value) if isinstance(target.get(name), dict) else value
    return nested


def merge_settings(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` on top; a dict (a nested config) is merged field by field,
    anything else (lists included) replaced."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = value
    return merged


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Inside, torch's CPU generator starts from ``seed`` (None: left alone), so what is built
    inside (a model's initial weights) is the same in every run; the caller's generator state
    is restored afterwards."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_model(arch: str = "flat", preset: str = "tiny", *, seed: int | None = None, **overrides: Any) -> ByteModel:
    """A new model of ``arch`` from ``preset`` and field ``overrides``; with ``seed`` its
    initial weights are the same in every run (``seeded``). A model above the size limit is
    refused before anything is allocated (``omnibyte.models.validation.model_size_limit``)."""
    config = make_config(arch, preset, **overrides)
    with seeded(seed):
        return model_class_for(arch)(config)

"""The model families by ``--arch`` name, with their named presets.

A new family registers here (one line in ``ARCHITECTURES``); the conformance suite
(tests/test_conformance.py) then runs every check on it."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from omnibyte.models.base import BaseConfig, ByteModel
from omnibyte.models.blt import BLT_PRESETS, BLTModel
from omnibyte.models.flat import FLAT_PRESETS, BytePredictor
from omnibyte.models.multiscale import MULTISCALE_PRESETS, PATCH_PRESETS, MultiscaleModel, PatchModel

# arch name -> (model class, presets: name -> config overrides)
ARCHITECTURES: dict[str, tuple[type[ByteModel], dict[str, dict[str, Any]]]] = {
    "flat": (BytePredictor, FLAT_PRESETS),
    "patch": (PatchModel, PATCH_PRESETS),
    "multiscale": (MultiscaleModel, MULTISCALE_PRESETS),
    "blt": (BLTModel, BLT_PRESETS),
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
    values = model_class.upgrade_config({**presets[preset], **overrides})
    return model_class.config_class.from_dict(values)


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

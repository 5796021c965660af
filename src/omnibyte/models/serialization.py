"""Model files: safetensors weights + a JSON config. Nothing is ever unpickled.

The format and the functions that read and write it without knowing the families live in
``omnibyte.models.modelfiles`` (re-exported here); this module adds what needs the model
registry: the model a config document names by its ``arch``. The trainer, the CLI and the apps
all come here, so it depends only on the registry, the model files, the errors and the file I/O.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from omnibyte.errors import OmnibyteError
from omnibyte.models.modelfiles import (
    CONFIG_FILE,
    DEFAULT_TASK,
    FORMAT_VERSION,
    TASK_WEIGHTS_FILE,
    WEIGHTS_FILE,
    build_model_from_document,
    check_document,
    config_document,
    contiguous_cpu,
    load_weights,
    model_state,
    read_config,
    read_safetensors,
    read_task_weights,
    save_model,
    saved_document,
    write_safetensors,
)
from omnibyte.models.registry import model_class_for

__all__ = [  # the model files' names, from modelfiles, and what the registry adds
    "CONFIG_FILE", "DEFAULT_TASK", "FORMAT_VERSION", "TASK_WEIGHTS_FILE", "WEIGHTS_FILE",
    "build_model_from_document", "check_document", "config_document", "contiguous_cpu",
    "load_config_model", "load_model", "load_weights", "model_from_config", "model_state",
    "read_config", "read_safetensors", "read_task_weights", "save_model", "saved_document",
    "write_safetensors",
]


def model_from_config(document: dict[str, Any], source: str | Path | None = None) -> torch.nn.Module:
    """A freshly initialised model of the architecture and config the document describes.

    Every field is checked, and the model's size against the limit, before anything is
    allocated; errors are one line naming ``source`` (default: the file ``read_config`` read
    the document from) and the field."""
    source = source if source is not None else getattr(document, "source", None)
    try:
        model_class = model_class_for(document["arch"])
    except ValueError as error:
        where = f"{source}: " if source is not None else ""
        raise OmnibyteError(f"{where}{error}") from None
    return build_model_from_document(model_class, document, source)


def load_config_model(directory: str | Path) -> torch.nn.Module:
    """A freshly initialised model of the config in ``directory`` (weights not loaded)."""
    return model_from_config(read_config(directory))


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build the model described by ``directory/config.json``, load its weights, move it to
    ``device`` and put it in eval mode."""
    directory = Path(directory)
    model = load_config_model(directory)
    load_weights(model, read_safetensors(directory / WEIGHTS_FILE), directory / WEIGHTS_FILE)
    return model.to(device).eval()

"""Model files: safetensors weights + a JSON config. Nothing is ever unpickled.

A model directory holds
  * ``config.json``       {"format": 1, "arch": ..., "task": ..., "config": {...}}
  * ``model.safetensors`` the weights, with the same document in its metadata.

``task`` names what the head was trained for ("next-byte" for every model so far). Directories
written before it existed have no ``task`` entry and load as next-byte models. Old configs and
weights are brought up to date by the family itself (``upgrade_config``/``upgrade_state_dict``)
before they are checked, so a family that renames a field or a weight keeps loading its old runs.
Both files are written atomically (``omnibyte.fileio``).

This is the one module that reads and writes model files: the trainer, the CLI and the apps all
come here, so it depends only on the model registry, the errors and the shared file I/O.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from omnibyte.errors import OmnibyteError
from omnibyte.fileio import atomic_write, atomic_write_bytes
from omnibyte.models.registry import model_class_for

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TASK_WEIGHTS_FILE = "task.safetensors"
DEFAULT_TASK = "next-byte"


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model under a ``torch.compile`` wrapper (whose state-dict keys carry a prefix)."""
    return getattr(model, "_orig_mod", model)


def contiguous_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies: what safetensors can write."""
    return {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights without compile wrappers' prefixes."""
    return contiguous_cpu(_unwrapped(model).state_dict())


def config_document(model: torch.nn.Module) -> dict[str, Any]:
    """The model's identity: format, architecture and config.

    The task is deliberately not part of it: compression fingerprints hash this document, and
    streams made before tasks were recorded must keep matching their model. ``saved_document``
    adds the task for the files on disk.
    """
    model = _unwrapped(model)
    return {"format": FORMAT_VERSION, "arch": model.arch, "config": model.config.to_dict()}


def _task_document(task: str | dict[str, Any]) -> dict[str, Any]:
    """A task as the files record it: ``{"name": ..., options...}`` (a bare name is accepted)."""
    return {"name": task} if isinstance(task, str) else dict(task)


def saved_document(model: torch.nn.Module, task: str | dict[str, Any] = DEFAULT_TASK) -> dict[str, Any]:
    """``config_document`` plus the task: what ``config.json`` and the weights' metadata hold."""
    document = config_document(model)
    return {"format": document["format"], "arch": document["arch"], "task": _task_document(task),
            "config": document["config"]}


def save_model(
    model: torch.nn.Module,
    directory: str | Path,
    task: str | dict[str, Any] = DEFAULT_TASK,
    task_weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory``; returns ``directory``.

    ``task`` (a name, or a task's ``to_dict()``) is recorded in the config; the weights of the
    task's own modules (a classification head), if any, go to ``task.safetensors``. The weights
    go first, so a crash in between leaves the previous config (which still describes weights
    of the same shapes when a run is being re-saved) rather than a config whose weights are
    missing.
    """
    directory = Path(directory)
    document = saved_document(model, task)
    metadata = {"omnibyte": json.dumps(document)}
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(model_state(model), str(tmp), metadata=metadata))
    if task_weights:
        atomic_write(directory / TASK_WEIGHTS_FILE, lambda tmp: save_file(
            contiguous_cpu(task_weights), str(tmp), metadata=metadata))
    atomic_write_bytes(directory / CONFIG_FILE, (json.dumps(document, indent=2) + "\n").encode())
    return directory


def read_task_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    """The weights of the task's own modules saved with a model (none for next-byte)."""
    path = Path(directory) / TASK_WEIGHTS_FILE
    return read_safetensors(path) if path.exists() else {}


def check_document(document: Any, source: Path) -> dict[str, Any]:
    """Validate a config document read from ``source``; fills in the task of older files."""
    if not isinstance(document, dict) or "arch" not in document or "config" not in document:
        raise OmnibyteError(f"{source} is not an omnibyte config (needs 'arch' and 'config')")
    if document.get("format") != FORMAT_VERSION:
        raise OmnibyteError(f"{source}: unsupported model format {document.get('format')!r} "
                            f"(this version of omnibyte reads format {FORMAT_VERSION})")
    task = document.get("task", DEFAULT_TASK)  # written before tasks were recorded: next-byte
    task = _task_document(task) if isinstance(task, (str, dict)) else task
    if not isinstance(task, dict) or not isinstance(task.get("name"), str) or not task["name"]:
        raise OmnibyteError(f"{source}: 'task' must be a task name or an object with a 'name', got {task!r}")
    document["task"] = task
    return document


def read_config(directory: str | Path) -> dict[str, Any]:
    """Parse and check ``config.json`` (with ``task`` filled in); errors name the file and the problem."""
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not directory.exists():
        raise OmnibyteError(f"model directory not found: {directory}")
    if not path.is_file():
        raise OmnibyteError(f"not an omnibyte model directory (no {CONFIG_FILE}): {directory}")
    try:
        document = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OmnibyteError(f"corrupt {path}: {error}") from None
    except OSError as error:
        raise OmnibyteError(f"cannot read {path}: {error.strerror or error}") from None
    return check_document(document, path)


def model_from_config(document: dict[str, Any]) -> torch.nn.Module:
    """A freshly initialised model of the architecture and config the document describes."""
    try:
        model_class = model_class_for(document["arch"])
        # the family migrates configs written by older versions before they are checked
        values = model_class.upgrade_config(dict(document["config"]))
        config = model_class.config_class.from_dict(values)
    except (TypeError, ValueError) as error:
        raise OmnibyteError(f"invalid model config: {error}") from None
    return model_class(config)


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    """Load ``weights`` into ``model`` after checking names and shapes against it."""
    weights = model.upgrade_state_dict(weights)  # old weight names and layouts, migrated by the family
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise OmnibyteError(f"{source} does not match its config ({detail})")
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise OmnibyteError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, config says {tuple(expected[name].shape)}")
    model.load_state_dict(weights)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a missing or damaged file is a one-line error."""
    if not path.is_file():
        raise OmnibyteError(f"missing {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise OmnibyteError(f"corrupt or unreadable {path}: {str(error).splitlines()[0]}") from None


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build the model described by ``directory/config.json``, load its weights, move it to
    ``device`` and put it in eval mode."""
    directory = Path(directory)
    model = model_from_config(read_config(directory))
    load_weights(model, read_safetensors(directory / WEIGHTS_FILE), directory / WEIGHTS_FILE)
    return model.to(device).eval()

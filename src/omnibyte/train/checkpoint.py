"""Checkpoints as safetensors + JSON: nothing is ever unpickled.

A model directory holds
  * ``config.json``       {"format": 1, "arch": ..., "config": {...}}
  * ``model.safetensors`` the weights
and, for a training run, ``trainer_state.safetensors``: weights, optimizer tensors and
RNG states as tensors, with the trainer's JSON state (step, schedule, data position,
optimizer hyper-parameters) in the safetensors metadata. Every file is written to a
temporary name and renamed into place, so a crash never leaves a torn file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from omnibyte.errors import OmnibyteError
from omnibyte.models import ByteModel, model_class_for

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAINER_STATE_FILE = "trainer_state.safetensors"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp_path = Path(tmp_name)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as file:
            os.fsync(file.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _contiguous_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}


def model_state(model: ByteModel) -> dict[str, torch.Tensor]:
    """Weights without compile wrappers' prefixes."""
    model = getattr(model, "_orig_mod", model)
    return _contiguous_cpu(model.state_dict())


def config_document(model: ByteModel) -> dict[str, Any]:
    model = getattr(model, "_orig_mod", model)
    return {"format": FORMAT_VERSION, "arch": model.arch, "config": model.config.to_dict()}


def save_model(model: ByteModel, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory``."""
    directory = Path(directory)
    document = config_document(model)
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(
        model_state(model), str(tmp), metadata={"omnibyte": json.dumps(document)}))
    atomic_write_bytes(directory / CONFIG_FILE, (json.dumps(document, indent=2) + "\n").encode())
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    """Parse and check ``config.json``; errors name the file and the problem."""
    path = Path(directory) / CONFIG_FILE
    if not Path(directory).exists():
        raise OmnibyteError(f"model directory not found: {directory}")
    if not path.is_file():
        raise OmnibyteError(f"not an omnibyte model directory (no {CONFIG_FILE}): {directory}")
    try:
        document = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OmnibyteError(f"corrupt {path}: {error}") from None
    if not isinstance(document, dict) or "arch" not in document or "config" not in document:
        raise OmnibyteError(f"{path} is not an omnibyte config (needs 'arch' and 'config')")
    if document.get("format") != FORMAT_VERSION:
        raise OmnibyteError(f"{path}: unsupported checkpoint format {document.get('format')!r}")
    return document


def model_from_config(document: dict[str, Any]) -> ByteModel:
    try:
        model_class = model_class_for(document["arch"])
        config = model_class.config_class.from_dict(document["config"])
    except (TypeError, ValueError) as error:
        raise OmnibyteError(f"invalid model config: {error}") from None
    return model_class(config)


def load_weights(model: ByteModel, weights: dict[str, torch.Tensor], source: Path) -> None:
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
    if not path.is_file():
        raise OmnibyteError(f"missing {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise OmnibyteError(f"corrupt or unreadable {path}: {str(error).splitlines()[0]}") from None


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> ByteModel:
    """Build the model described by ``directory/config.json`` and load its weights."""
    directory = Path(directory)
    model = model_from_config(read_config(directory))
    load_weights(model, read_safetensors(directory / WEIGHTS_FILE), directory / WEIGHTS_FILE)
    return model.to(device).eval()


# ---- full training state ---------------------------------------------------------

def save_trainer_state(
    directory: Path,
    model: ByteModel,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    rng: dict[str, torch.Tensor],
) -> None:
    """One atomic file with weights, optimizer tensors, RNG states and JSON ``state``."""
    tensors = {f"model.{k}": v for k, v in model_state(model).items()}
    optimizer_dict = optimizer.state_dict()
    for index, param_state in optimizer_dict["state"].items():
        for key, value in param_state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
    tensors.update({f"rng.{k}": v for k, v in rng.items()})
    metadata = {
        "omnibyte": json.dumps(config_document(model)),
        "trainer": json.dumps(state),
        "param_groups": json.dumps(optimizer_dict["param_groups"]),
    }
    atomic_write(directory / TRAINER_STATE_FILE,
                 lambda tmp: save_file(_contiguous_cpu(tensors), str(tmp), metadata=metadata))


def load_trainer_state(directory: Path) -> tuple[dict, dict, dict, dict[str, torch.Tensor], dict]:
    """Return (config document, model weights, optimizer state dict, rng tensors, trainer state)."""
    from safetensors import safe_open

    path = directory / TRAINER_STATE_FILE
    tensors = read_safetensors(path)
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata() or {}
    try:
        document = json.loads(metadata["omnibyte"])
        trainer_state = json.loads(metadata["trainer"])
        param_groups = json.loads(metadata["param_groups"])
    except (KeyError, json.JSONDecodeError):
        raise OmnibyteError(f"{path} is not an omnibyte trainer state") from None
    weights, rng, optim_state = {}, {}, {}
    for name, tensor in tensors.items():
        kind, _, rest = name.partition(".")
        if kind == "model":
            weights[rest] = tensor
        elif kind == "rng":
            rng[rest] = tensor
        elif kind == "optim":
            index, _, key = rest.partition(".")
            optim_state.setdefault(int(index), {})[key] = tensor
    optimizer_dict = {"state": optim_state, "param_groups": param_groups}
    return document, weights, optimizer_dict, rng, trainer_state

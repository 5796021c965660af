"""The full training state of a run: one safetensors file, nothing ever unpickled.

``trainer_state.safetensors`` holds the weights, the optimizer tensors and the RNG states as
tensors, with the trainer's JSON state (step, schedule, data position, optimizer
hyper-parameters) and the model's config document in the safetensors metadata. It is written
atomically, like every file. The model files themselves (``config.json`` +
``model.safetensors``) are read and written by ``omnibyte.models.serialization``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from omnibyte.errors import OmnibyteError
from omnibyte.fileio import atomic_write
from omnibyte.models.serialization import (
    DEFAULT_TASK,
    check_document,
    contiguous_cpu,
    model_state,
    read_safetensors,
    saved_document,
)

TRAINER_STATE_FILE = "trainer_state.safetensors"


@dataclasses.dataclass
class TrainerState:
    """What ``load_trainer_state`` reads back."""

    document: dict[str, Any]  # the model's config document, task filled in
    weights: dict[str, torch.Tensor]  # the model's
    optimizer: dict[str, Any]  # an optimizer state dict
    rng: dict[str, torch.Tensor]
    state: dict[str, Any]  # the trainer's JSON state (step, ...)
    task_weights: dict[str, torch.Tensor]  # the task's own modules (a classification head)


def save_trainer_state(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    rng: dict[str, torch.Tensor],
    task: str = DEFAULT_TASK,
    task_weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """One atomic file with the model's and the task's weights, optimizer tensors, RNG states
    and JSON ``state``."""
    tensors = {f"model.{k}": v for k, v in model_state(model).items()}
    tensors.update({f"task.{k}": v for k, v in (task_weights or {}).items()})
    optimizer_dict = optimizer.state_dict()
    for index, param_state in optimizer_dict["state"].items():
        for key, value in param_state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value)
    tensors.update({f"rng.{k}": v for k, v in rng.items()})
    metadata = {
        "omnibyte": json.dumps(saved_document(model, task)),
        "trainer": json.dumps(state),
        "param_groups": json.dumps(optimizer_dict["param_groups"]),
    }
    atomic_write(Path(directory) / TRAINER_STATE_FILE,
                 lambda tmp: save_file(contiguous_cpu(tensors), str(tmp), metadata=metadata))


def load_trainer_state(directory: Path) -> TrainerState:
    """Read ``trainer_state.safetensors`` of ``directory``; one-line errors on anything wrong."""
    path = Path(directory) / TRAINER_STATE_FILE
    tensors = read_safetensors(path)
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata() or {}
    try:
        document = json.loads(metadata["omnibyte"])
        trainer_state = json.loads(metadata["trainer"])
        param_groups = json.loads(metadata["param_groups"])
    except (KeyError, json.JSONDecodeError):
        raise OmnibyteError(f"{path} is not an omnibyte trainer state") from None
    document = check_document(document, path)  # fills in the task of states saved before tasks
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "rng": {}, "task": {}}
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        kind, _, rest = name.partition(".")
        if kind == "optim":
            index, _, key = rest.partition(".")
            optim_state.setdefault(int(index), {})[key] = tensor
        elif kind in groups:
            groups[kind][rest] = tensor
    optimizer_dict = {"state": optim_state, "param_groups": param_groups}
    return TrainerState(document, groups["model"], optimizer_dict, groups["rng"], trainer_state, groups["task"])

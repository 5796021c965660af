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
import math
import re
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open

from omnibyte.errors import OmnibyteError
from omnibyte.fileio import atomic_write
from omnibyte.models.serialization import (
    DEFAULT_TASK,
    check_document,
    contiguous_cpu,
    model_state,
    read_safetensors,
    saved_document,
    write_safetensors,
)

TRAINER_STATE_FILE = "trainer_state.safetensors"
OPTIMIZER_INDEX = re.compile(r"[0-9]{1,9}")  # a parameter's position in the optimizer


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
                 lambda tmp: write_safetensors(tmp, contiguous_cpu(tensors), metadata))


def load_trainer_state(directory: Path) -> TrainerState:
    """Read ``trainer_state.safetensors`` of ``directory``. Everything in it is checked before
    it is used (tensor names, the JSON state's fields, the RNG tensors), so a damaged or
    crafted file is a one-line ``OmnibyteError``, never a traceback."""
    path = Path(directory) / TRAINER_STATE_FILE
    tensors = read_safetensors(path)
    metadata = _read_metadata(path)
    document = check_document(metadata["omnibyte"], path)  # fills in the task of states saved before tasks
    trainer_state = check_trainer_json(metadata["trainer"], path)
    param_groups = _check_param_groups(metadata["param_groups"], path)
    groups: dict[str, dict[str, torch.Tensor]] = {"model": {}, "rng": {}, "task": {}}
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        kind, _, rest = name.partition(".")
        if kind == "optim":
            index, _, key = rest.partition(".")
            if not OPTIMIZER_INDEX.fullmatch(index) or not key:
                raise OmnibyteError(f"{path}: bad optimizer tensor name {name!r} (expected optim.<index>.<key>)")
            optim_state.setdefault(int(index), {})[key] = tensor
        elif kind in groups and rest:
            groups[kind][rest] = tensor
        else:
            raise OmnibyteError(f"{path}: unexpected tensor {name!r} (not a model, task, optimizer or RNG tensor)")
    check_rng(groups["rng"], path)
    optimizer_dict = {"state": optim_state, "param_groups": param_groups}
    return TrainerState(document, groups["model"], optimizer_dict, groups["rng"], trainer_state, groups["task"])


def _read_metadata(path: Path) -> dict[str, Any]:
    """The three JSON documents in the file's metadata, parsed."""
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise OmnibyteError(f"corrupt or unreadable {path}: {str(error).splitlines()[0]}") from None
    parsed: dict[str, Any] = {}
    for key in ("omnibyte", "trainer", "param_groups"):
        if key not in metadata:
            raise OmnibyteError(f"{path} is not an omnibyte trainer state (no {key!r} metadata)")
        try:
            parsed[key] = json.loads(metadata[key])
        except json.JSONDecodeError:
            raise OmnibyteError(f"corrupt {path}: its {key!r} metadata is not JSON") from None
    return parsed


def check_trainer_json(state: Any, path: Path) -> dict[str, Any]:
    """The trainer's JSON state with each field of the expected type."""
    if not isinstance(state, dict):
        raise OmnibyteError(f"corrupt {path}: the trainer state is not an object")
    rules: dict[str, tuple[Callable[[Any], bool], str, bool]] = {  # field: (check, what it must be, required)
        "step": (_is_count, "an integer >= 0", True),
        "evals_without_improvement": (_is_count, "an integer >= 0", False),
        "best_step": (lambda v: v is None or _is_count(v), "an integer >= 0 or null", False),
        "best_val": (lambda v: v is None or _is_finite_number(v), "a finite number or null", False),
        "stopped_early": (lambda v: isinstance(v, bool), "true or false", False),
        "world_size": (lambda v: _is_count(v) and v >= 1, "an integer >= 1", False),
        "micro_batches_seen": (_is_count, "an integer >= 0", False),
        "task": (lambda v: isinstance(v, dict), "an object", False),
        "train_config": (lambda v: isinstance(v, dict), "an object", False),
    }
    for field, (check, expected, required) in rules.items():
        if field not in state:
            if required:
                raise OmnibyteError(f"corrupt {path}: the trainer state has no {field!r}")
            continue
        if not check(state[field]):
            raise OmnibyteError(f"corrupt {path}: trainer state {field!r} must be {expected}, got {state[field]!r}")
    return state


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_param_groups(groups: Any, path: Path) -> list[dict[str, Any]]:
    """Optimizer parameter groups: objects whose ``params`` are parameter indices."""
    if not isinstance(groups, list) or not all(isinstance(group, dict) for group in groups):
        raise OmnibyteError(f"corrupt {path}: 'param_groups' must be a list of objects")
    for group in groups:
        params = group.get("params")
        if not isinstance(params, list) or not all(_is_count(index) for index in params):
            raise OmnibyteError(f"corrupt {path}: each parameter group needs 'params', a list of indices")
    return groups


def check_rng(rng: dict[str, torch.Tensor], path: Path) -> None:
    """RNG states are 1-D uint8 tensors; torch's CPU state has the size of this torch's."""
    if "torch" not in rng:
        raise OmnibyteError(f"corrupt {path}: no RNG state ('rng.torch')")
    for name, tensor in rng.items():
        if tensor.dtype != torch.uint8 or tensor.dim() != 1:
            raise OmnibyteError(f"corrupt {path}: RNG state {name!r} must be a 1-D uint8 tensor, "
                                f"got {tensor.dtype} of shape {tuple(tensor.shape)}")
    expected = torch.get_rng_state().numel()
    if rng["torch"].numel() != expected:
        raise OmnibyteError(f"corrupt {path}: RNG state 'torch' has {rng['torch'].numel()} bytes, "
                            f"expected {expected}")

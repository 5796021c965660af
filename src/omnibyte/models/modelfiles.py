"""Model files: safetensors weights + a JSON config. Nothing is ever unpickled.

A model directory holds
  * ``config.json``       {"format": 1, "arch": ..., "task": ..., "config": {...}, "step": N}
  * ``model.safetensors`` the weights, with the same document in its metadata.

``task`` names what the head was trained for ("next-byte" for every model so far). Directories
written before it existed have no ``task`` entry and load as next-byte models. ``step`` (present
when the trainer wrote the folder) is the training step the weights are from. Old configs and
weights are brought up to date by the family itself (``upgrade_config``/``upgrade_state_dict``)
before they are checked, so a family that renames a field or a weight keeps loading its old runs.
Both files are written atomically (``omnibyte.fileio``).

This module knows the families only through the class it is given, never through the registry:
``ByteModel.save_pretrained``/``from_pretrained`` (models/base.py) use it directly, and
``omnibyte.models.serialization`` adds what needs the registry (a model from an ``arch`` name).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from omnibyte.errors import OmnibyteError
from omnibyte.fileio import atomic_write, atomic_write_bytes, check_output_folder

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TASK_WEIGHTS_FILE = "task.safetensors"
MODEL_CARD_FILE = "README.md"  # written by save_pretrained, as huggingface_hub's mixin does
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

    The task and the step are deliberately not part of it: compression fingerprints hash this
    document, and streams made before tasks were recorded must keep matching their model.
    ``saved_document`` adds them for the files on disk.
    """
    model = _unwrapped(model)
    return {"format": FORMAT_VERSION, "arch": model.arch, "config": model.config.to_dict()}


def _task_document(task: str | dict[str, Any]) -> dict[str, Any]:
    """A task as the files record it: ``{"name": ..., options...}`` (a bare name is accepted)."""
    return {"name": task} if isinstance(task, str) else dict(task)


def saved_document(
    model: torch.nn.Module, task: str | dict[str, Any] = DEFAULT_TASK, step: int | None = None
) -> dict[str, Any]:
    """``config_document`` plus the task (and the training step, when known): what
    ``config.json`` and the weights' metadata hold."""
    document = config_document(model)
    saved = {"format": document["format"], "arch": document["arch"], "task": _task_document(task),
             "config": document["config"]}
    if step is not None:
        saved["step"] = int(step)
    return saved


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """``save_file``, then the header's metadata put in key order: safetensors writes it in
    hash-map order, which changes from run to run, and identical runs must write identical
    files. The re-ordered header has the same length (same JSON, keys permuted), so it is
    rewritten in place; should it ever differ, the file is left as written (still valid)."""
    save_file(tensors, str(path), metadata=metadata)
    if len(metadata) < 2:
        return
    with open(path, "r+b") as file:
        length = int.from_bytes(file.read(8), "little")
        header = json.loads(file.read(length))
        header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
        canonical = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(canonical) <= length:
            file.seek(8)
            file.write(canonical + b" " * (length - len(canonical)))  # safetensors pads with spaces


def save_model(
    model: torch.nn.Module,
    directory: str | Path,
    task: str | dict[str, Any] = DEFAULT_TASK,
    task_weights: dict[str, torch.Tensor] | None = None,
    step: int | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``directory``; returns ``directory``.
    ``weights``: the model's state dict when ``model`` does not hold it whole (gathered from
    FSDP shards); by default the model's own.

    ``task`` (a name, or a task's ``to_dict()``) is recorded in the config, and ``step`` (the
    training step the weights are from) when given; the weights of the task's own modules (a
    classification head), if any, go to ``task.safetensors``. The weights go first, so a crash
    in between leaves the previous config (which still describes weights of the same shapes
    when a run is being re-saved) rather than a config whose weights are missing.
    """
    directory = Path(directory)
    document = saved_document(model, task, step)
    metadata = {"omnibyte": json.dumps(document)}
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: write_safetensors(
        tmp, model_state(model) if weights is None else contiguous_cpu(weights), metadata))
    if task_weights:
        atomic_write(directory / TASK_WEIGHTS_FILE, lambda tmp: write_safetensors(
            tmp, contiguous_cpu(task_weights), metadata))
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
    if not isinstance(document["arch"], str):
        raise OmnibyteError(f"{source}: 'arch' must be a name, got {document['arch']!r}")
    if not isinstance(document["config"], dict):
        raise OmnibyteError(f"{source}: 'config' must be an object, got {type(document['config']).__name__}")
    step = document.get("step")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
        raise OmnibyteError(f"{source}: 'step' must be a training step (an integer >= 0), got {step!r}")
    task = document.get("task", DEFAULT_TASK)  # written before tasks were recorded: next-byte
    task = _task_document(task) if isinstance(task, (str, dict)) else task
    if not isinstance(task, dict) or not isinstance(task.get("name"), str) or not task["name"]:
        raise OmnibyteError(f"{source}: 'task' must be a task name or an object with a 'name', got {task!r}")
    document["task"] = task
    return document


class ConfigDocument(dict):
    """A config document that remembers the file it was read from (``source``), so that an
    error about its config names the file wherever the document goes."""

    def __init__(self, document: dict[str, Any], source: Path):
        super().__init__(document)
        self.source = source


def read_config(directory: str | Path) -> dict[str, Any]:
    """Parse and check ``config.json`` (with ``task`` filled in); errors name the file and the
    problem. The document keeps its path (``ConfigDocument.source``) for later errors."""
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
    return ConfigDocument(check_document(document, path), path)


def build_model_from_document(model_class: type, document: dict[str, Any], source: str | Path | None = None):
    """A freshly initialised ``model_class`` with the document's config, checked (types,
    ranges, size limit) before anything is allocated; errors are one line naming ``source``
    (by default the file a ``ConfigDocument`` was read from)."""
    source = source if source is not None else getattr(document, "source", None)
    where = f"{source}: " if source is not None else ""
    try:
        # the family migrates configs written by older versions before they are checked
        values = model_class.upgrade_config(dict(document["config"]))
        config = model_class.config_class.from_dict(values)
    except (TypeError, ValueError) as error:
        raise OmnibyteError(f"{where}invalid model config: {error}") from None
    try:
        return model_class(config)
    except OmnibyteError as error:  # above the size limit
        raise OmnibyteError(f"{where}{error}") from None


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path, strict: bool = True) -> None:
    """Load ``weights`` into ``model`` after checking names and shapes against it (names may
    be missing or extra when not ``strict``; shapes must always fit)."""
    weights = model.upgrade_state_dict(weights)  # old weight names and layouts, migrated by the family
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if strict and (missing or unexpected):
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise OmnibyteError(f"{source} does not match its config ({detail})")
    for name, tensor in weights.items():
        if name in expected and tensor.shape != expected[name].shape:
            raise OmnibyteError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, config says {tuple(expected[name].shape)}")
    model.load_state_dict({name: tensor for name, tensor in weights.items() if name in expected}, strict=strict)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; a missing or damaged file is a one-line error."""
    if not path.is_file():
        raise OmnibyteError(f"missing {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise OmnibyteError(f"corrupt or unreadable {path}: {str(error).splitlines()[0]}") from None


# ---- the huggingface_hub conventions (PyTorchModelHubMixin), for local folders -------------

def family_for(model_class: type, arch: str, source: Path) -> type:
    """``model_class`` or the first of its subclasses (breadth first) whose ``arch`` is
    ``arch``: ``ByteModel`` finds every imported family (the registry imports them all),
    a concrete family only itself and its own sub-families."""
    queue = [model_class]
    while queue:
        candidate = queue.pop(0)
        if getattr(candidate, "arch", "") == arch:
            return candidate
        queue.extend(candidate.__subclasses__())
    if getattr(model_class, "arch", ""):
        raise OmnibyteError(f"{source} holds a {arch!r} model, not {model_class.arch!r}: load it with "
                            f"ByteModel.from_pretrained or omnibyte.load_model")
    raise OmnibyteError(f"{source}: unknown architecture {arch!r}")


def save_pretrained(
    model: torch.nn.Module,
    save_directory: str | Path,
    config: Any = None,
    push_to_hub: bool = False,
) -> None:
    """``PyTorchModelHubMixin.save_pretrained`` for a local folder: creates it (and its
    parents), writes ``model.safetensors`` and ``config.json`` in omnibyte's format, and a
    model card ``README.md`` when the folder has none. Never uploads."""
    if push_to_hub:
        raise OmnibyteError("omnibyte works offline: save_pretrained does not push to the Hub "
                            "(upload the saved folder with huggingface_hub yourself)")
    model = _unwrapped(model)
    if config is not None and _as_dict(config) != model.config.to_dict():
        raise ValueError("save_pretrained(config=...) must be the model's own config (omnibyte saves model.config)")
    directory = check_output_folder(save_directory, "save_pretrained folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OmnibyteError(f"cannot create {directory}: {error.strerror or error}") from None
    save_model(model, directory)
    card = directory / MODEL_CARD_FILE
    if not card.exists():  # like the mixin: a card of the user's own is never overwritten
        atomic_write_bytes(card, _model_card(model).encode())


def _as_dict(config: Any) -> Any:
    return config.to_dict() if hasattr(config, "to_dict") else config


def _model_card(model: torch.nn.Module) -> str:
    parameters = sum(p.numel() for p in model.parameters())
    return (f"---\nlibrary_name: omnibyte\ntags:\n- omnibyte\n- byte-level\n- {model.arch}\n"
            f"- pytorch_model_hub_mixin\n---\n\n"
            f"An omnibyte `{model.arch}` byte-level model ({parameters:,} parameters).\n\n"
            f"Load it with `omnibyte.ByteModel.from_pretrained(\"<this folder>\")` in Python, or pass the "
            f"folder to any command as `--model`.\n")


def from_pretrained(
    model_class: type,
    pretrained_model_name_or_path: str | Path,
    map_location: str | torch.device = "cpu",
    strict: bool = False,
    config: Any = None,
):
    """``PyTorchModelHubMixin.from_pretrained`` for a local folder: the family named by its
    ``config.json`` (``model_class`` or one of its sub-families), built from that config (or
    from ``config``, a config object or dict, as the mixin lets ``model_kwargs`` override it),
    its weights loaded from ``model.safetensors`` (``strict``: every name must match) onto
    ``map_location``, in eval mode. A name that is not a local folder is refused: omnibyte
    never downloads."""
    directory = Path(os.fspath(pretrained_model_name_or_path))
    if not directory.is_dir():
        raise OmnibyteError(f"{directory} is not a model folder (omnibyte loads local folders "
                            "only and never downloads)")
    document = read_config(directory)
    family = family_for(model_class, document["arch"], directory)
    if config is not None:
        document = {**document, "config": _as_dict(config)}
    model = build_model_from_document(family, document, directory / CONFIG_FILE)
    load_weights(model, read_safetensors(directory / WEIGHTS_FILE), directory / WEIGHTS_FILE, strict=strict)
    return model.to(map_location).eval()

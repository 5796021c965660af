"""Trainer state at scale: ``torch.distributed.checkpoint`` (DCP) folders written by every rank.

A run with a process group (``--parallel ddp|fsdp``, torchrun) saves into
``checkpoints/step-NNNNNNNNNN/``: DCP's shards of the model, the task's modules and the
optimizer (``.metadata`` + ``*.distcp``, each rank writing its own part, nothing unpickled on
load), ``trainer.json`` (step, data position, schedule, the model's config document) and
``rng.safetensors``. Any number of ranks (one process without a group included) can load it:
DCP reshards on load.

Atomic: every rank writes into ``checkpoints/.tmp-step-N``; when all are done, rank 0 adds
``trainer.json`` and renames the folder to ``step-N`` (one ``rename``), then removes older
checkpoints. A run killed at any moment leaves complete ``step-*`` folders only; the newest
is the one ``--resume`` reads, and left-over temporary folders are removed on the next start.

One process without a group keeps writing the single file ``trainer_state.safetensors``
(``omnibyte.train.checkpoint``); ``latest`` chooses whichever of the two is newer.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from omnibyte.errors import OmnibyteError
from omnibyte.fileio import atomic_write, atomic_write_bytes
from omnibyte.models.serialization import check_document, read_safetensors, write_safetensors
from omnibyte.train import checkpoint

CHECKPOINTS_DIR = "checkpoints"
TRAINER_JSON = "trainer.json"
RNG_FILE = "rng.safetensors"
STEP_DIR = re.compile(r"step-([0-9]{10})")
TEMPORARY_PREFIX = ".tmp-"


@dataclasses.dataclass(frozen=True)
class Latest:
    """The newest complete checkpoint of a run: ``kind`` is ``dcp`` (a folder) or ``file``
    (``trainer_state.safetensors``)."""

    kind: str
    path: Path
    step: int


def checkpoint_folders(out_dir: Path) -> list[tuple[int, Path]]:
    """Complete DCP checkpoints of ``out_dir``, oldest first."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = STEP_DIR.fullmatch(entry.name)
        if match and (entry / TRAINER_JSON).is_file() and (entry / ".metadata").is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def _file_step(out_dir: Path) -> int | None:
    """The step in ``trainer_state.safetensors``'s metadata (tensors not read)."""
    path = Path(out_dir) / checkpoint.TRAINER_STATE_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as file:
            step = json.loads((file.metadata() or {})["trainer"])["step"]
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError):
        return -1  # damaged: still "a run is here"; loading it gives the one-line error
    return step if isinstance(step, int) else -1


def latest(out_dir: Path) -> Latest | None:
    """The newest complete checkpoint of ``out_dir`` of either kind; None when there is none.
    At the same step the DCP folder wins (it is written by the larger run)."""
    folders = checkpoint_folders(out_dir)
    file_step = _file_step(out_dir)
    if folders and (file_step is None or folders[-1][0] >= file_step):
        return Latest("dcp", folders[-1][1], folders[-1][0])
    if file_step is not None:
        return Latest("file", Path(out_dir) / checkpoint.TRAINER_STATE_FILE, file_step)
    return None


def remove_temporaries(out_dir: Path) -> None:
    """Folders a save killed part-way left behind (rank 0, before training starts)."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.startswith(TEMPORARY_PREFIX) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)


def save(
    out_dir: Path,
    root: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    document: dict[str, Any],
    rng: dict[str, torch.Tensor],
    is_main: bool,
    barrier,
) -> Path:
    """Collective: every rank calls it. Returns the checkpoint folder."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    step = trainer_state["step"]
    folder_root = Path(out_dir) / CHECKPOINTS_DIR
    final = folder_root / f"step-{step:010d}"
    temporary = folder_root / f"{TEMPORARY_PREFIX}step-{step:010d}"
    text = json.dumps({"trainer": trainer_state, "omnibyte": document}, indent=1) + "\n"
    rng_tensors = {name: tensor.contiguous().cpu() for name, tensor in rng.items()}
    barrier()
    if (final / TRAINER_JSON).is_file():
        # the same step saved again (the end of a run right after save_every, an interrupt):
        # weights and optimizer are those already there; only the trainer's record changes,
        # file by file atomically, so the complete checkpoint is never taken away
        if is_main:
            atomic_write(final / RNG_FILE, lambda tmp: write_safetensors(tmp, rng_tensors, {"omnibyte": "rng"}))
            atomic_write_bytes(final / TRAINER_JSON, text.encode())
        barrier()
        return final
    if is_main:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    barrier()
    model_state, optimizer_state = get_state_dict(root, optimizer)
    dcp.save({"model": model_state, "optim": optimizer_state}, checkpoint_id=str(temporary))
    barrier()
    if is_main:
        write_safetensors(temporary / RNG_FILE, rng_tensors, {"omnibyte": "rng"})
        atomic_write_bytes(temporary / TRAINER_JSON, text.encode())
        _sync_folder(temporary)
        os.replace(temporary, final)  # the one step that makes the checkpoint exist
        _sync_folder(folder_root)
        for _, older in checkpoint_folders(out_dir)[:-1]:
            shutil.rmtree(older, ignore_errors=True)
    barrier()
    return final


def _sync_folder(folder: Path) -> None:
    """Flush a folder's entries (its files' renames) to disk where the OS allows it."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@dataclasses.dataclass
class Loaded:
    document: dict[str, Any]
    state: dict[str, Any]
    rng: dict[str, torch.Tensor]


def read_metadata(folder: Path) -> Loaded:
    """``trainer.json`` and the RNG states of a DCP checkpoint, checked like the single file's."""
    path = folder / TRAINER_JSON
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OmnibyteError(f"corrupt or unreadable {path}: {error}") from None
    if not isinstance(content, dict) or "trainer" not in content or "omnibyte" not in content:
        raise OmnibyteError(f"corrupt {path}: needs 'trainer' and 'omnibyte'")
    document = check_document(content["omnibyte"], path)
    state = checkpoint.check_trainer_json(content["trainer"], path)
    rng = read_safetensors(folder / RNG_FILE)
    checkpoint.check_rng(rng, folder / RNG_FILE)
    return Loaded(document, state, rng)


def load_into(folder: Path, root: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Collective: the model, task and optimizer state of ``folder`` into ``root`` and
    ``optimizer``, resharded to however many ranks load it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(root, optimizer)  # templates (optimizer state created)
    state = {"model": model_state, "optim": optimizer_state}
    try:
        with warnings.catch_warnings():  # one process without a group reads it whole: as meant
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=str(folder))
        set_state_dict(root, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    except (RuntimeError, ValueError, KeyError, OSError, TypeError) as error:
        detail = " ".join(str(error).split())[:300]
        raise OmnibyteError(f"checkpoint {folder} does not fit this model and optimizer: {detail}") from None


def load_model_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a DCP checkpoint's trainer module, read in one process as plain full
    tensors: the model's under ``model.``, the task's modules' under ``task_modules.``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        metadata = dcp.FileSystemReader(str(folder)).read_metadata()
        template = {key.removeprefix("model."): torch.empty(entry.size, dtype=entry.properties.dtype)
                    for key, entry in metadata.state_dict_metadata.items()
                    if key.startswith("model.") and isinstance(entry, TensorStorageMetadata)}
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load({"model": template}, checkpoint_id=str(folder))
    except (RuntimeError, ValueError, KeyError, OSError, TypeError, AttributeError) as error:
        detail = " ".join(str(error).split())[:300]
        raise OmnibyteError(f"cannot read the weights in {folder}: {detail}") from None
    return template


@dataclasses.dataclass
class RunWeights:
    """The whole weights of a run's newest checkpoint, whatever wrote it."""

    document: dict[str, Any]  # the model's config document (arch, config, task)
    weights: dict[str, torch.Tensor]
    task_weights: dict[str, torch.Tensor]
    step: int
    source: Path


def latest_weights(run_dir: Path) -> RunWeights:
    """The model and task weights of ``run_dir``'s newest checkpoint (a DCP folder written by
    any number of ranks, or the single file), gathered into full tensors in this process."""
    found = latest(run_dir)
    if found is None:
        raise OmnibyteError(f"{run_dir} holds no training checkpoint ({checkpoint.TRAINER_STATE_FILE} "
                            f"or {CHECKPOINTS_DIR}/step-N): is it an omnibyte train --out folder?")
    if found.kind == "file":
        saved = checkpoint.load_trainer_state(run_dir)
        return RunWeights(saved.document, saved.weights, saved.task_weights, saved.state["step"], found.path)
    meta = read_metadata(found.path)
    tensors = load_model_weights(found.path)
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    task_weights = {k.removeprefix("task_modules."): v for k, v in tensors.items() if k.startswith("task_modules.")}
    return RunWeights(meta.document, weights, task_weights, meta.state["step"], found.path)

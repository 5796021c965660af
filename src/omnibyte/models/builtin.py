"""The built-in general model: weights shipped inside the package, used when no model is named.

The model lives in ``omnibyte/builtin/general/`` (package data): ``config.json`` and
``model.safetensors`` in the usual model format, and ``PROVENANCE.json``, which records where
the weights came from (training data manifest and hash, recipe, date, commit, device, steps,
loss). ``scripts/train_general_model.py`` makes them and ``scripts/install_builtin_model.py``
copies them in; a source checkout may not have them, and then every use is a one-line error.

``$OMNIBYTE_BUILTIN_MODEL`` names another folder to use in its place (a re-trained model before
it is installed; tests, with a tiny model). Compressed streams record the built-in model's
name next to the weights' fingerprint, so ``decompress`` finds the model by itself, and refuses
a stream whose fingerprint does not match the built-in model installed here.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from omnibyte.errors import OmnibyteError
from omnibyte.models.modelfiles import CONFIG_FILE, WEIGHTS_FILE
from omnibyte.models.serialization import load_model

BUILTIN_NAME = "general"  # the name streams record; the only built-in model so far
BUILTIN_ENV = "OMNIBYTE_BUILTIN_MODEL"  # a folder used instead of the packaged one
PROVENANCE_FILE = "PROVENANCE.json"
PACKAGE_FOLDER = Path(__file__).resolve().parent.parent / "builtin" / BUILTIN_NAME
MAX_WEIGHTS_BYTES = 16_000_000  # what the package allows for the shipped weights


def builtin_model_dir() -> Path:
    """Where the built-in model is read from: ``$OMNIBYTE_BUILTIN_MODEL`` when set, else the
    package's own folder (whether or not the weights are there)."""
    override = os.environ.get(BUILTIN_ENV)
    return Path(override) if override else PACKAGE_FOLDER


def builtin_installed() -> bool:
    folder = builtin_model_dir()
    return (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def require_builtin_model_dir() -> Path:
    """The built-in model's folder, or a one-line error saying that its weights are missing
    and what to do instead."""
    folder = builtin_model_dir()
    if builtin_installed():
        return folder
    where = f"${BUILTIN_ENV} = {folder}" if os.environ.get(BUILTIN_ENV) else str(folder)
    raise OmnibyteError(f"the built-in model is not installed (no {WEIGHTS_FILE} and {CONFIG_FILE} in {where}; "
                        f"a source checkout comes without its weights): name a model with --model DIR, or "
                        f"install the weights with scripts/install_builtin_model.py (docs/compression.md)")


def is_builtin_dir(directory: str | Path) -> bool:
    """True when ``directory`` is the built-in model's folder (however it was named)."""
    try:
        return Path(directory).resolve() == builtin_model_dir().resolve()
    except OSError:
        return False


def read_provenance(directory: str | Path | None = None) -> dict[str, Any] | None:
    """The ``PROVENANCE.json`` of a model folder (default: the built-in one); None when the
    folder has none; a damaged one is a one-line error."""
    path = Path(directory if directory is not None else builtin_model_dir()) / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OmnibyteError(f"cannot read {path}: {error}") from None
    if not isinstance(document, dict):
        raise OmnibyteError(f"{path} is not a provenance record (a JSON object)")
    return document


def provenance_seq_len(directory: str | Path) -> int | None:
    """The sequence length a model with a provenance record was trained with, if recorded."""
    try:
        value = (read_provenance(directory) or {}).get("seq_len")
    except OmnibyteError:
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def load_builtin_model(device: str | torch.device = "cpu") -> torch.nn.Module:
    """The built-in model on ``device``, in eval mode (one-line error when not installed)."""
    return load_model(require_builtin_model_dir(), device)

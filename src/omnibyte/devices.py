"""Choosing the device and the autocast dtype."""
from __future__ import annotations

import contextlib

import torch

from omnibyte.errors import OmnibyteError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OmnibyteError("--device cuda asked for, but no CUDA GPU is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise OmnibyteError(f"unknown device {name!r} (use auto, cpu or cuda)") from None


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()

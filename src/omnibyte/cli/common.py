"""What the subcommands share: the model options and the one model loader, ``--set``
parsing, and turning errors into one line on stderr with an exit code."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from omnibyte.devices import resolve_device
from omnibyte.errors import OmnibyteError
from omnibyte.models.base import ByteModel
from omnibyte.models.serialization import load_model

# ``subparsers.add_parser`` is all a subcommand module needs from its caller
Subparsers = argparse._SubParsersAction
Handler = Callable[[argparse.Namespace], int]

EXIT_USAGE = 2  # bad input: argparse's code for bad options, ours for every OmnibyteError
EXIT_BROKEN_PIPE = 1
EXIT_INTERRUPTED = 130


def add_model_options(
    parser: argparse.ArgumentParser,
    *,
    required: bool = True,
    device_default: str | None = "auto",
    model_help: str = "model directory",
    device_help: str = "auto, cpu or cuda",
) -> None:
    """``--model DIR`` and ``--device``, the same in every subcommand that runs a model."""
    parser.add_argument("--model", required=required, type=Path, default=None, help=model_help)
    parser.add_argument("--device", default=device_default, help=device_help)


def load_cli_model(args: argparse.Namespace, device: str | None = None) -> ByteModel:
    """The model in ``args.model`` on ``device`` (default ``args.device``; None means auto),
    ready for inference. Every subcommand loads its model here."""
    return load_model(args.model, resolve_device(device or args.device or "auto"))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as a dict; values are JSON when they parse, else strings."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise OmnibyteError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def check_at_least(option: str, value: int | float | None, minimum: int | float) -> None:
    """One-line error unless ``value`` (when given) is at least ``minimum``."""
    if value is not None and value < minimum:
        raise OmnibyteError(f"{option} must be at least {minimum}, got {value}")


def run_handler(handler: Handler, args: argparse.Namespace) -> int:
    """Run a subcommand; user errors become ``omnibyte: error: ...`` and exit code 2, not a traceback."""
    try:
        return int(handler(args) or 0)
    except OmnibyteError as error:
        print(f"omnibyte: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("omnibyte: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `omnibyte generate ... | head`
        return EXIT_BROKEN_PIPE

"""The ``omnibyte`` command line."""
from __future__ import annotations

import argparse
import sys

from omnibyte.errors import OmnibyteError

# modules that add their own subcommands through ``add_commands(subparsers)``
COMMAND_MODULES = (
    "omnibyte.commands",
    "omnibyte.apps.compress",
    "omnibyte.apps.detect",
    "omnibyte.apps.anomaly",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="omnibyte", description="Universal byte-level models.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name == name:
                continue
            raise
        module.add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except OmnibyteError as error:
        print(f"omnibyte: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("omnibyte: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())

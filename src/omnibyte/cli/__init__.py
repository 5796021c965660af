"""The ``omnibyte`` command line: one module per subcommand, shared options in ``common``.

Each subcommand module has ``add_parser(subparsers)``, which registers its parser and sets
``handler``; ``main`` parses, runs the handler and turns user errors into one line on stderr.
All argparse code of the package lives in this package.
"""
from __future__ import annotations

import argparse

from omnibyte.cli import anomaly, common, compress, demo, detect, generate, info, train
from omnibyte.cli import eval as eval_command  # the module name would shadow the builtin

# in the order ``omnibyte --help`` lists them
COMMAND_MODULES = (train, eval_command, generate, info, demo, compress, detect, anomaly)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omnibyte", description="Universal byte-level models.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return common.run_handler(args.handler, args)


__all__ = ["build_parser", "main"]

"""The ``omnibyte`` command line: one module per subcommand, shared options in ``common``.

Each subcommand module has ``add_parser(subparsers)``, which registers its parser and sets
``handler``; ``main`` parses, runs the handler and turns user errors into one line on stderr.
All argparse code of the package lives in this package.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

from omnibyte import __version__
from omnibyte.devices import configure_cpu_allocator, configure_cpu_threads
from omnibyte.cli import (anomaly, answer, classify, common, compress, convert, datasets, demo, detect, export,
                          generate, info, media, patches, train)
from omnibyte.cli import eval as eval_command  # the module name would shadow the builtin

# in the order ``omnibyte --help`` lists them
COMMAND_MODULES = (train, eval_command, generate, info, export, demo, compress, detect, anomaly, patches, classify,
                   media, convert, answer, datasets)


def build_parser() -> common.Parser:
    parser = common.Parser(prog="omnibyte", description="Universal byte-level models.")
    parser.add_argument("--version", action="version", version=f"omnibyte {__version__}",
                        help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                       help="what to do (omnibyte COMMAND --help lists its options)")
    for module in COMMAND_MODULES:
        module.add_parser(subparsers)
    return parser


@contextlib.contextmanager
def _standard_streams() -> Iterator[None]:
    """Closed stdin/stdout become one-line errors when used; under ``torchrun`` only rank 0
    prints to stdout (every rank would print its own summary), errors still show on stderr."""
    saved = sys.stdin, sys.stdout
    if sys.stdin is None:
        sys.stdin = common.ClosedStream("stdin")
    if sys.stdout is None:
        sys.stdout = common.ClosedStream("stdout")
    try:
        if int(os.environ.get("RANK", "0") or 0) != 0:
            with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
                yield
        else:
            yield
    finally:
        sys.stdin, sys.stdout = saved


CODING_COMMANDS = ("compress", "decompress")  # where glibc's defaults cost most of the time


def main(argv: list[str] | None = None) -> int:
    """Run ``omnibyte ARGS``; returns the exit code (0, 1 for a failed stdout/stdin, 2 for bad input)."""
    with _standard_streams():
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as done:  # --help, --version, or a one-line usage error
            return done.code if isinstance(done.code, int) else 0
        configure_cpu_threads()  # torch's default oversubscribes a busy CPU: 10x slower training
        if args.command in CODING_COMMANDS:
            configure_cpu_allocator()  # integer coding's large temporaries: no page faults on every pass
        return common.run_handler(args.handler, args)


__all__ = ["build_parser", "main"]

"""``omnibyte anomaly``: the most surprising regions of a file under a model, as a table and a plot."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from omnibyte.apps.anomaly import DEFAULT_THRESHOLD, DEFAULT_WINDOW, analyze, format_table, plot_surprisal
from omnibyte.cli.common import Subparsers, add_model_options, check_at_least, load_cli_model
from omnibyte.errors import OmnibyteError
from omnibyte.fileio import STDIO, read_input

PLOT_SUFFIX = ".anomaly.png"


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("anomaly", help="find the most surprising regions of a file under a model")
    parser.add_argument("file", type=Path, metavar="FILE", help="the file to score; - reads stdin")
    add_model_options(parser)
    parser.add_argument("--top", type=int, default=10, metavar="N", help="show at most N regions (default 10)")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW, metavar="W",
                        help=f"smoothing window in bytes (default {DEFAULT_WINDOW})")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, metavar="Z",
                        help=f"robust z-score a region must exceed (default {DEFAULT_THRESHOLD:g})")
    parser.add_argument("--context", type=int, default=None, help="scoring window (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--plot", type=Path, default=None, metavar="OUT.png",
                        help=f"where to save the plot (default: FILE's name + {PLOT_SUFFIX} in the current folder)")
    parser.add_argument("--no-plot", action="store_true", help="do not save a plot")
    parser.add_argument("--json", action="store_true", help="print a JSON report")
    parser.set_defaults(handler=run)


def check_options(args: argparse.Namespace) -> None:
    for option, value in (("--top", args.top), ("--window", args.window), ("--batch-size", args.batch_size),
                          ("--context", args.context)):
        check_at_least(option, value, 1)


def read_scorable(path: Path) -> bytes:
    """The file's bytes; an empty file has nothing to score, which is the user's mistake."""
    data = read_input(path)
    if not data:
        raise OmnibyteError(f"{path} is empty: nothing to score")
    return data


def run(args: argparse.Namespace) -> int:
    check_options(args)
    data = read_scorable(args.file)  # before loading the model: a typo fails fast
    model = load_cli_model(args)
    name = "stdin" if str(args.file) == STDIO else args.file.name
    report = analyze(data, model, name=name, window=args.window, threshold=args.threshold,
                     top_k=args.top, context=args.context, batch_size=args.batch_size)
    plot_path = None
    if not args.no_plot:
        plot_path = args.plot or Path(name + PLOT_SUFFIX)
        plot_surprisal(report.bits, report.regions, plot_path, window=args.window, name=name)
    if args.json:
        print(json.dumps({**report.to_dict(), "plot": str(plot_path) if plot_path else None}, indent=2))
        return 0
    print(format_table(report))
    if plot_path:
        print(f"plot: {plot_path}")
    return 0

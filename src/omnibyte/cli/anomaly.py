"""``omnibyte anomaly``: the most surprising regions of a file under a model, as a table (or
JSON) and, with ``--plot``, a PNG of the surprisal curve."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from omnibyte.apps.anomaly import DEFAULT_THRESHOLD, DEFAULT_WINDOW, analyze, format_table, plot_surprisal
from omnibyte.cli.common import (
    Subparsers,
    add_model_options,
    add_scoring_options,
    check_context,
    check_output_file,
    load_cli_model,
    non_negative_real,
    positive_int,
)
from omnibyte.errors import OmnibyteError
from omnibyte.fileio import STDIO, read_input


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("anomaly", help="find the most surprising regions of a file under a model")
    parser.add_argument("file", type=Path, metavar="FILE", help="the file to score; - reads stdin")
    add_model_options(parser, builtin=True)
    parser.add_argument("--top", type=positive_int, default=10, metavar="N", help="show at most N regions")
    parser.add_argument("--window", type=positive_int, default=DEFAULT_WINDOW, metavar="BYTES",
                        help="smoothing window")
    parser.add_argument("--threshold", type=non_negative_real, default=DEFAULT_THRESHOLD, metavar="Z",
                        help="robust z-score a region must exceed")
    add_scoring_options(parser)
    parser.add_argument("--plot", type=Path, default=None, metavar="OUT.png",
                        help="also save a PNG of the surprisal curve and the regions here")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite an existing --plot file")
    parser.add_argument("--json", action="store_true", help="print a JSON report instead of the table")
    parser.set_defaults(handler=run)


def read_scorable(path: Path) -> bytes:
    """The file's bytes; an empty file has nothing to score, which is the user's mistake."""
    data = read_input(path)
    if not data:
        raise OmnibyteError(f"{path} is empty: nothing to score")
    return data


def run(args: argparse.Namespace) -> int:
    if args.plot is not None:
        check_output_file(args.plot, force=args.force, option="--plot")
    data = read_scorable(args.file)  # before loading the model: a typo fails fast
    model = load_cli_model(args)
    check_context(args.context, model)
    name = "stdin" if str(args.file) == STDIO else args.file.name
    report = analyze(data, model, name=name, window=args.window, threshold=args.threshold,
                     top_k=args.top, context=args.context, batch_size=args.batch_size)
    if args.plot is not None:
        plot_surprisal(report.bits, report.regions, args.plot, window=args.window, name=name)
    if args.json:
        print(json.dumps({**report.to_dict(), "plot": str(args.plot) if args.plot else None}, indent=2))
        return 0
    print(format_table(report))
    if args.plot is not None:
        print(f"plot: {args.plot}")
    return 0

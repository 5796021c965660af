"""``omnibyte convert``: turn a file into its target with a conversion model (greedy decoding)."""
from __future__ import annotations

import argparse
import sys

from omnibyte.apps.convert import convert, conversion_task
from omnibyte.cli.common import Subparsers, add_model_options, check_output_file, load_cli_model, positive_int
from omnibyte.data.pairs import KINDS, kind_problem
from omnibyte.fileio import read_input, write_output


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert a file with a conversion model (ABC <-> MIDI, CPU programs)",
        description="Convert IN with a model trained by omnibyte train --task convert: greedy decoding with the "
                    "cache until the target ends (the model writes its end marker). Nothing is written if it "
                    "never does.")
    add_model_options(parser, model_help="a model trained with omnibyte train --task convert")
    parser.add_argument("input", metavar="IN", help="the file to convert (- reads stdin)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="where to write the result (- is stdout)")
    parser.add_argument("--max-output", type=positive_int, default=None, metavar="BYTES",
                        help="give up when the output reaches BYTES bytes without ending "
                             "(default: what the model's context leaves)")
    parser.add_argument("--fast", action="store_true", help="static-shape decoding (CUDA graphs on a GPU)")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    check_output_file(args.output, force=args.force, option="-o")  # before any work
    task = conversion_task(args.model)  # a model for another task is refused before its weights load
    source = read_input(args.input)
    task.check_source(source, args.input)
    model = load_cli_model(args)
    output = convert(model, task, source, args.max_output, fast=args.fast, name=args.input)
    write_output(args.output, output, force=args.force, source=args.input)
    problem = kind_problem(task.target, output)
    if problem is not None:  # written as the model produced it, but the user should know
        print(f"omnibyte: note: the output is not valid {KINDS[task.target].description}: {problem}",
              file=sys.stderr)
    return 0

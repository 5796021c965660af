"""``omnibyte patches``: where a file's patches fall under a model's patcher (a summary, JSON,
and with ``--plot`` a PNG of entropy against position with the boundaries marked)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from omnibyte.apps.patches import DEFAULT_PLOT_BYTES, find_patches, format_summary, model_patcher, plot_patches
from omnibyte.cli.common import (
    Subparsers,
    add_model_options,
    check_output_file,
    load_cli_model,
    positive_int,
    real_in,
)
from omnibyte.errors import OmnibyteError
from omnibyte.fileio import STDIO, read_input
from omnibyte.models.blt.patching import MAX_ENTROPY_BITS, MAX_PATCH_SIZE, SCHEMES
from omnibyte.models.serialization import read_config

# option -> PatchingConfig field
PATCHER_OPTIONS = {"scheme": "scheme", "threshold": "threshold", "min_patch_size": "min_patch_size",
                   "max_patch_size": "max_patch_size", "stride": "stride"}


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "patches", help="show where a file's patches fall under a model's patcher",
        description="Show where a file's patches fall: the patcher of a model that has one (BLT), or a "
                    "next-byte model used as the entropy model of the scheme given with --scheme. "
                    "The options below override the model's patcher.")
    parser.add_argument("file", type=Path, metavar="FILE", help="the file to patch; - reads stdin")
    add_model_options(parser, model_help="a model with a patcher (BLT), or any next-byte model (a flat "
                                         "model, the entropy model) together with --scheme")
    parser.add_argument("--scheme", choices=SCHEMES, default=None,
                        help="entropy: entropy above --threshold; monotonic: entropy rise above --threshold; "
                             "fixed: every --stride bytes; space: after a byte that is not a letter or digit")
    parser.add_argument("--threshold", type=real_in(-MAX_ENTROPY_BITS, MAX_ENTROPY_BITS), default=None,
                        metavar="BITS", help="the entropy (or rise) threshold in bits")
    parser.add_argument("--calibrate", type=real_in(1.0), default=None, metavar="BYTES",
                        help="instead of --threshold, pick the threshold that gives this many bytes per patch "
                             "on FILE (entropy and monotonic schemes)")
    parser.add_argument("--min-patch-size", type=positive_int, default=None, metavar="BYTES",
                        help="a scheme starts no patch before the current one holds this many bytes")
    parser.add_argument("--max-patch-size", type=positive_int, default=None, metavar="BYTES",
                        help=f"a patch that reaches this many bytes is closed (at most {MAX_PATCH_SIZE})")
    parser.add_argument("--stride", type=positive_int, default=None, metavar="BYTES",
                        help="patch size of the fixed scheme")
    parser.add_argument("--plot", type=Path, default=None, metavar="OUT.png",
                        help="also save a PNG of entropy against position, boundaries marked")
    parser.add_argument("--plot-bytes", type=positive_int, default=DEFAULT_PLOT_BYTES, metavar="N",
                        help="the plot shows the first N bytes")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite an existing --plot file")
    parser.add_argument("--json", action="store_true", help="print a JSON report instead of the summary")
    parser.set_defaults(handler=run)


def patcher_overrides(args: argparse.Namespace) -> dict:
    return {field: getattr(args, option) for option, field in PATCHER_OPTIONS.items()
            if getattr(args, option) is not None}


def run(args: argparse.Namespace) -> int:
    if args.calibrate is not None and args.threshold is not None:
        raise OmnibyteError("give --threshold or --calibrate, not both")
    if args.plot is not None:
        check_output_file(args.plot, force=args.force, option="--plot")
    data = read_input(args.file)  # before loading the model: a typo fails fast
    name = "stdin" if str(args.file) == STDIO else args.file.name
    if not data:
        raise OmnibyteError(f"{name} is empty: nothing to patch")
    task = read_config(args.model)["task"]["name"]
    if task != "next-byte":
        raise OmnibyteError(f"{args.model} was trained for {task!r}; patches need a next-byte model")
    model = load_cli_model(args)
    config, entropy_model = model_patcher(model, patcher_overrides(args), source=str(args.model))
    report = find_patches(data, config, entropy_model, name=name, target_mean_patch_size=args.calibrate)
    if args.plot is not None:
        plot_patches(report, args.plot, max_bytes=args.plot_bytes)
    if args.json:
        print(json.dumps({**report.to_dict(), "plot": str(args.plot) if args.plot else None}, indent=2))
        return 0
    print(format_summary(report, data))
    if args.plot is not None:
        print(f"plot: {args.plot}")
    return 0

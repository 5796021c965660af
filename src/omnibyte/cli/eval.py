"""``omnibyte eval``: bits per byte of a model on files, overall and per file type."""
from __future__ import annotations

import argparse
import json
from typing import Any

from omnibyte.cli.common import Subparsers, add_model_options, load_cli_model
from omnibyte.evaluate import evaluate_paths


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("eval", help="bits per byte of a model on files")
    parser.add_argument("data", nargs="+", metavar="DATA")
    add_model_options(parser)
    parser.add_argument("--context", type=int, default=None, help="window length (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print a JSON report")
    parser.add_argument("--per-file", action="store_true", help="include every file in the report")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    model = load_cli_model(args)
    report = evaluate_paths(model, args.data, context=args.context, batch_size=args.batch_size,
                            progress=not args.json).to_dict(per_file=args.per_file)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


def print_report(report: dict[str, Any]) -> None:
    """The overall numbers, then one row per file type, largest first."""
    print(f"{report['files']} files, {report['bytes']:,} bytes: {report['bits_per_byte']:.4f} bits/byte, "
          f"accuracy {report['accuracy']:.3f}, perplexity {report['perplexity']:.2f}, "
          f"mean p(true byte) {report['mean_true_byte_prob']:.3f}")
    rows = [(kind, stats["bytes"], stats["bits_per_byte"], stats["accuracy"])
            for kind, stats in report["by_type"].items()]
    print(f"{'type':<12}{'bytes':>14}{'bits/byte':>12}{'accuracy':>10}")
    for kind, size, bpb, accuracy in sorted(rows, key=lambda row: -row[1]):
        print(f"{kind:<12}{size:>14,}{bpb:>12.4f}{accuracy:>10.3f}")
    if report["skipped"]:
        print(f"skipped: {report['skipped']}")

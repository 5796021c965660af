"""``omnibyte eval``: bits per byte of a model on files, overall, per file type and per file; for a
classifier (``train --task classify``), accuracy, per-class accuracy and a confusion matrix on
labelled data (class folders, a CSV of path,label, or NAME:SPLIT)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from omnibyte.apps.classify import evaluate_classifier, is_classifier, load_classifier, plot_confusion

from omnibyte.cli.common import (
    Subparsers,
    add_model_options,
    add_scoring_options,
    check_context,
    check_output_file,
    load_cli_model,
)
from omnibyte.data.labelled import read_labelled
from omnibyte.data.sources import SkipLog, expand_path
from omnibyte.errors import OmnibyteError
from omnibyte.evaluate import evaluate_paths


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("eval", help="bits per byte of a model on files",
                                   description="Bits per byte of a model on files, overall and per file type.")
    parser.add_argument("data", nargs="+", metavar="DATA",
                        help="files, folders (recursive), globs, .gz/.xz/.bz2 files or .tar/.zip archives")
    add_model_options(parser, builtin=True)
    add_scoring_options(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON report instead of the table")
    parser.add_argument("--per-file", action="store_true", help="add one row (or JSON entry) per file")
    parser.add_argument("--confusion", type=Path, default=None, metavar="PNG",
                        help="classifiers: also write the confusion matrix as a PNG image here")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --confusion file")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if is_classifier(args.model):
        return run_classifier(args)
    if args.confusion is not None:
        raise OmnibyteError("--confusion is for classifiers; this model predicts bytes")
    for path in args.data:  # a missing input fails before the model loads or a bar is drawn
        expand_path(path, SkipLog())
    model = load_cli_model(args)
    check_context(args.context, model)
    report = evaluate_paths(model, args.data, context=args.context, batch_size=args.batch_size,
                            progress=not args.json).to_dict(per_file=args.per_file)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


def print_report(report: dict[str, Any]) -> None:
    """The overall numbers, one row per file type (largest first) and, with --per-file, per file."""
    print(f"{report['files']} files, {report['bytes']:,} bytes: {report['bits_per_byte']:.4f} bits/byte, "
          f"accuracy {report['accuracy']:.3f}, perplexity {report['perplexity']:.2f}, "
          f"mean p(true byte) {report['mean_true_byte_prob']:.3f}"
          + (f", {report['bytes_per_patch']:.2f} bytes/patch" if "bytes_per_patch" in report else ""))
    print_rows("type", report["by_type"], largest_first=True)
    if "by_file" in report:
        print_rows("file", report["by_file"], largest_first=False)
    if report["skipped"]:
        print(report["skipped"])  # "skipped N inputs: ..."


def print_rows(title: str, stats_by_name: dict[str, dict[str, Any]], largest_first: bool) -> None:
    rows = [(name, stats["bytes"], stats["bits_per_byte"], stats["accuracy"]) for name, stats in stats_by_name.items()]
    if largest_first:
        rows.sort(key=lambda row: -row[1])
    width = max([12, *(len(row[0]) + 2 for row in rows)])
    print(f"{title:<{width}}{'bytes':>14}{'bits/byte':>12}{'accuracy':>10}")
    for name, size, bpb, accuracy in rows:
        print(f"{name:<{width}}{size:>14,}{bpb:>12.4f}{accuracy:>10.3f}")


def run_classifier(args: argparse.Namespace) -> int:
    """Accuracy, per-class accuracy and the confusion matrix of a classifier on labelled DATA."""
    if args.confusion is not None:
        check_output_file(args.confusion, force=args.force, option="--confusion")
    task = load_classifier(args.model)
    corpus = read_labelled(args.data)  # labels checked before the model loads
    model = load_cli_model(args)
    report = evaluate_classifier(model, task, [corpus.document(i) for i in range(corpus.num_documents)],
                                 batch_size=args.batch_size)
    if args.confusion is not None:
        plot_confusion(report, args.confusion)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(f"{report.files} files: accuracy {report.accuracy:.4f}")
    width = max(12, *(len(label) + 2 for label in report.labels))
    print(f"{'class':<{width}}{'files':>8}{'accuracy':>10}")
    for label, stats in report.per_class().items():
        accuracy = "-" if stats["accuracy"] is None else f"{stats['accuracy']:.3f}"
        print(f"{label:<{width}}{stats['files']:>8}{accuracy:>10}")
    print("confusion (rows: true class, columns: predicted, in the order above):")
    for row in report.confusion.tolist():
        print(" ".join(f"{count:>6}" for count in row))
    if args.confusion is not None:
        print(f"confusion matrix written to {args.confusion}")
    return 0

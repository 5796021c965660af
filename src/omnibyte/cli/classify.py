"""``omnibyte classify``: the class of files, with a model trained by ``train --task classify``."""
from __future__ import annotations

import argparse
import json

from omnibyte.apps.classify import classify_documents, load_classifier
from omnibyte.cli.common import BATCH_SIZE_HELP, Subparsers, add_model_options, load_cli_model, positive_int
from omnibyte.data.sources import SkipLog, expand_path, iter_documents


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("classify", help="the class of files (a model trained with --task classify)",
                                   description="Print the most probable class of each file and the "
                                               "probability of every class.")
    parser.add_argument("files", nargs="+", metavar="FILE", help="files, folders (recursive), globs or archives")
    add_model_options(parser, model_help="a classifier: the --out of omnibyte train --task classify")
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help=BATCH_SIZE_HELP)
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per file: path, label, probabilities")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    for path in args.files:  # a missing input fails before the model loads
        expand_path(path, SkipLog())
    task = load_classifier(args.model)  # a model of another task: one line, before its weights load
    model = load_cli_model(args)
    skipped = SkipLog()
    documents = list(iter_documents(args.files, skipped))
    predictions = classify_documents(model, task, documents, batch_size=args.batch_size)
    for prediction in predictions:
        if args.json:
            print(json.dumps(prediction.to_dict()))
        else:
            ranked = sorted(prediction.probabilities.items(), key=lambda item: -item[1])
            print(f"{prediction.path}\t{prediction.label}\t"
                  + " ".join(f"{label}={p:.3f}" for label, p in ranked))
    if skipped.total and not args.json:
        print(skipped.summary())
    return 0

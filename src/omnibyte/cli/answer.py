"""``omnibyte answer``: answer a question about an image with a question answering model."""
from __future__ import annotations

import argparse

from omnibyte.apps.answer import answer_question, answer_task, check_question
from omnibyte.cli.common import Subparsers, add_model_options, load_cli_model
from omnibyte.fileio import read_input


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "answer", help="answer a question about an image (a model trained with --task answer)",
        description="Answer QUESTION about IMAGE with a model trained by omnibyte train --task answer: the image "
                    "is converted to the encoding and size the model was trained on, and the answer is decoded "
                    "greedily with the cache and printed.")
    add_model_options(parser, model_help="a model trained with omnibyte train --task answer")
    parser.add_argument("--image", required=True, metavar="IMG", help="the image (any format Pillow reads)")
    parser.add_argument("--question", required=True, metavar="TEXT",
                        help='the question, e.g. "how many circles are there?"')
    parser.add_argument("--fast", action="store_true", help="static-shape decoding (CUDA graphs on a GPU)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    check_question(args.question)  # before any work
    task = answer_task(args.model)  # a model for another task is refused before its weights load
    image = read_input(args.image)
    model = load_cli_model(args)
    print(answer_question(model, task, image, args.question, fast=args.fast, name=args.image))
    return 0

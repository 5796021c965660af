"""``omnibyte export``: one ``model.safetensors`` + ``config.json`` from a run's newest checkpoint.

A run trained with ``--parallel fsdp`` or ``ddp`` keeps its training state as sharded
``torch.distributed.checkpoint`` folders; ``export`` gathers the newest into the model files
every tool loads (``--model DIR``). It works on one-process runs too (their single-file state),
and never needs the ranks or GPUs the run was trained on."""
from __future__ import annotations

import argparse
from pathlib import Path

from omnibyte.cli.common import Subparsers, check_run_folder
from omnibyte.errors import OmnibyteError
from omnibyte.models.serialization import CONFIG_FILE, load_weights, model_from_config, save_model
from omnibyte.train.sharded_checkpoint import latest_weights


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="gather a training run's newest checkpoint into one model folder",
        description="Write model.safetensors + config.json from the newest checkpoint of a run "
                    "(sharded by --parallel fsdp/ddp, or a one-process run).")
    parser.add_argument("run", type=Path, metavar="RUN", help="a run folder (--out of omnibyte train)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="model folder to write")
    parser.add_argument("--force", action="store_true", help="replace the model files already in DIR")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if not args.run.is_dir():
        raise OmnibyteError(f"RUN {args.run} is not a folder")
    check_run_folder(args.out)
    if not args.force and any((args.out / name).exists() for name in (CONFIG_FILE, "model.safetensors")):
        raise OmnibyteError(f"--out {args.out} already holds a model; pass --force to replace it")
    if args.out.resolve() == args.run.resolve():
        raise OmnibyteError("--out must not be the run folder itself (its model is the best by validation)")
    saved = latest_weights(args.run)
    model = model_from_config(saved.document, saved.source)
    load_weights(model, saved.weights, saved.source)  # every name and shape checked
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OmnibyteError(f"cannot create --out {args.out}: {error.strerror or error}") from None
    save_model(model, args.out, task=saved.document["task"], task_weights=saved.task_weights, step=saved.step)
    print(f"exported step {saved.step:,} of {args.run} to {args.out}")
    return 0

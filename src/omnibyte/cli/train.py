"""``omnibyte train``: train a model on files, folders, globs or archives (or resume a run)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from omnibyte.cli.common import EXIT_INTERRUPTED, Subparsers, parse_overrides
from omnibyte.data import ByteCorpus
from omnibyte.errors import OmnibyteError
from omnibyte.models import ARCHITECTURES, make_config, model_class_for
from omnibyte.models.base import ByteModel
from omnibyte.models.serialization import CONFIG_FILE, model_from_config, read_config
from omnibyte.train.trainer import TrainConfig, Trainer

# train options that map one-to-one onto TrainConfig fields
TRAIN_OPTIONS = {
    "seq_len": int, "batch_size": int, "steps": int, "grad_accum": int, "lr": float,
    "warmup_steps": int, "weight_decay": float, "grad_clip": float, "eval_every": int,
    "eval_windows": int, "patience": int, "save_every": int, "log_every": int, "seed": int,
    "time_limit": float,
}
# TrainConfig fields with options of their own; ``None`` (not given) keeps the saved/default value
OTHER_CONFIG_OPTIONS = ("device", "compile", "tensorboard")


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a model on files, folders, globs or archives")
    parser.add_argument("data", nargs="+", metavar="DATA")
    parser.add_argument("--arch", default="flat", help=f"model family ({', '.join(ARCHITECTURES)})")
    parser.add_argument("--preset", default="tiny", help="named size of the family (tiny, small, base, ...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a model config field, e.g. --set num_layers=4 (JSON values)")
    parser.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, metrics, plot)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    parser.add_argument("--device", default=None, help="auto, cpu or cuda")
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    parser.add_argument("--tensorboard", action="store_true", default=None)
    parser.add_argument("--no-progress", action="store_true")
    for name, kind in TRAIN_OPTIONS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None)
    parser.set_defaults(handler=run)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The run's saved options (when resuming) overridden by the ones given now."""
    saved = args.out / "train_config.json"
    values: dict[str, Any] = {}
    if args.resume and saved.exists():
        values = json.loads(saved.read_text())
    for name in [*TRAIN_OPTIONS, *OTHER_CONFIG_OPTIONS]:
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    try:
        return TrainConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise OmnibyteError(f"invalid training options: {error}") from None


def train_model(args: argparse.Namespace) -> ByteModel:
    """The resumed run's model, or a new one from --arch, --preset and --set."""
    if args.resume and (args.out / CONFIG_FILE).exists():
        return model_from_config(read_config(args.out))
    try:
        config = make_config(args.arch, args.preset, **parse_overrides(args.overrides))
    except (TypeError, ValueError) as error:
        raise OmnibyteError(f"invalid model config: {error}") from None
    return model_class_for(args.arch)(config)


def run(args: argparse.Namespace) -> int:
    config = train_config(args)
    if not 0 <= args.val_fraction < 1:
        raise OmnibyteError("--val-fraction must be in [0, 1)")
    model = train_model(args)
    corpus = ByteCorpus.from_paths(args.data)
    train_corpus, val_corpus = corpus.split(args.val_fraction)
    print(f"{model.arch} model, {model.num_parameters() / 1e6:.2f}M parameters; "
          f"data: {corpus.num_documents} files, {corpus.num_bytes:,} bytes "
          f"({train_corpus.num_bytes:,} train / {val_corpus.num_bytes:,} validation)"
          + (f"; skipped {corpus.skipped.summary()}" if corpus.skipped.total else ""))
    trainer = Trainer(model, train_corpus, config, args.out, val_corpus, progress=not args.no_progress)
    try:
        result = trainer.fit(resume=args.resume)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED  # the trainer saved a checkpoint; --resume continues
    summary = f"step {result.step}: train {result.train_bits_per_byte:.4f} bits/byte"
    if result.val_bits_per_byte is not None:
        summary += f", validation {result.val_bits_per_byte:.4f} (best {result.best_val_bits_per_byte:.4f})"
    print(summary + (" (stopped early)" if result.stopped_early else "") + f"; saved to {args.out}")
    return 0

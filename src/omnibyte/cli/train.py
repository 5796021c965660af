"""``omnibyte train``: train a model on files, folders, globs or archives (or resume a run)."""
from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path
from typing import Any, Callable

from omnibyte.cli.common import (
    BATCH_SIZE_HELP,
    DEVICE_NAMES,
    Subparsers,
    add_allow_large_option,
    check_run_folder,
    checked_by,
    device_name,
    int_in,
    non_negative_int,
    non_negative_real,
    parse_overrides,
    positive_int,
    positive_real,
    real_in,
    seed_int,
    show_validation,
    trained_steps,
)
from omnibyte.data import ByteCorpus
from omnibyte.data.augment import augmented, parse_augment
from omnibyte.devices import ATTENTION_BACKENDS
from omnibyte.errors import OmnibyteError
from omnibyte.models import ARCHITECTURES, make_config, model_class_for
from omnibyte.models.base import ByteModel
from omnibyte.models.registry import seeded
from omnibyte.models.serialization import CONFIG_FILE, DEFAULT_TASK, load_model, model_from_config, read_config
from omnibyte.tasks import TASKS, Task, task_from_dict
from omnibyte.train.parallel import CHECKPOINTING_MODES, PARALLEL_MODES, build_on_meta, shutdown
from omnibyte.train.trainer import TrainConfig, Trainer


# options that map one-to-one onto TrainConfig fields: (field, type, metavar, help). Their
# defaults are TrainConfig's (or the resumed run's), so ``None`` here means "not given".
TRAIN_OPTIONS: tuple[tuple[str, Callable[[str], Any], str, str], ...] = (
    ("seq_len", positive_int, "BYTES", "bytes per training sequence (at most the model's context)"),
    ("batch_size", positive_int, "N", BATCH_SIZE_HELP + ", per device and micro-step"),
    ("steps", lambda text: "auto" if text == "auto" else positive_int(text), "N|auto",
     "optimizer steps in all (a resumed run trains up to this step); auto, with --time-limit: as many as "
     "fit, measured while training, so that the learning rate reaches its floor when the time is up"),
    ("grad_accum", positive_int, "N", "micro-steps whose gradients add up to one optimizer step"),
    ("lr", positive_real, "LR", "peak learning rate (after warmup, then cosine decay)"),
    ("warmup_steps", int_in(-1), "N", "linear warmup steps; -1: 5%% of --steps, at most 1000"),
    ("weight_decay", non_negative_real, "W", "AdamW weight decay of matrices"),
    ("grad_clip", non_negative_real, "NORM", "clip the gradient norm to this; 0: no clipping"),
    ("eval_every", non_negative_int, "N", "validate every N steps and keep the best model; 0: never"),
    ("eval_windows", non_negative_int, "N", "validation windows of --seq-len per validation; 0: all"),
    ("patience", non_negative_int, "N", "stop after N validations without improvement; 0: never stop early"),
    ("save_every", non_negative_int, "N",
     "save a checkpoint every N steps; 0: only at the end (always also at the end and on Ctrl-C/SIGTERM)"),
    ("log_every", positive_int, "N", "log the training loss every N steps"),
    ("seed", seed_int, "S", "seed of the initial weights, data order and dropout"),
    ("time_limit", non_negative_real, "SECONDS", "stop cleanly after this much training; 0: no limit"),
    ("augment", checked_by(parse_augment), "COPIES",
     "also train on augmented copies of each training file (never of validation files): one copy per "
     "comma-separated item, augmentations in one copy joined with +; mirror, shift (24-bit BMP), delay "
     "(8-bit mono WAV); e.g. mirror,shift,mirror+shift for clothes, delay,delay for speech"),
)
# TrainConfig fields with options of their own; ``None`` (not given) keeps the saved/default value
OTHER_CONFIG_OPTIONS = ("device", "compile", "tensorboard", "parallel", "activation_checkpointing", "loss_chunk",
                        "attention_backend")


def add_parser(subparsers: Subparsers) -> None:
    defaults = TrainConfig()
    parser = subparsers.add_parser("train", help="train a model on files, folders, globs or archives",
                                   description="Train a model, or continue a run with --resume.")
    parser.add_argument("data", nargs="+", metavar="DATA",
                        help="files, folders (recursive), globs, .gz/.xz/.bz2 files or .tar/.zip archives")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="run folder: model, checkpoints, metrics and loss curve")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    parser.add_argument("--arch", default=None, choices=list(ARCHITECTURES), help="model family (default: flat)")
    parser.add_argument("--preset", default=None, help="named size of the family (tiny, small, base, ...; default: tiny)")
    parser.add_argument("--task", default=None, choices=sorted(TASKS),
                        help="what to train for (default: next-byte, or the resumed run's); classify: "
                             "DATA is one sub-folder per class or a CSV of path,label")
    parser.add_argument("--init-from", type=Path, default=None, metavar="DIR",
                        help="start from the weights of the model in DIR (e.g. a generative run; its config "
                             "is used); a task head starts fresh")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a model config field, e.g. --set num_layers=4 (JSON values; repeatable)")
    add_allow_large_option(parser)
    parser.add_argument("--device", default=None, type=device_name,
                        help=f"where to train: {DEVICE_NAMES} (default: auto, or the resumed run's)")
    parser.add_argument("--val-fraction", type=real_in(0.0, 1.0, include_high=False), default=0.05,
                        metavar="F", help="share of the data held out for validation")
    parser.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    parser.add_argument("--tensorboard", action="store_true", default=None,
                        help="also log metrics for TensorBoard (in DIR/tensorboard)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--parallel", choices=PARALLEL_MODES, default=None,
                        help="fsdp: shard weights, gradients and optimizer state over the ranks (FSDP2); "
                             "ddp: replicate; none: one process; auto: ddp under torchrun, else none "
                             "(default: auto). Run N GPUs with torchrun --nproc-per-node N -m omnibyte.cli train ...")
    parser.add_argument("--activation-checkpointing", choices=CHECKPOINTING_MODES, default=None,
                        help="recompute activations in the backward pass to save memory: per block, "
                             "or selective (keep matmul and attention outputs) (default: none)")
    parser.add_argument("--loss-chunk", type=non_negative_int, default=None, metavar="N",
                        help="compute the head and cross-entropy N positions at a time (saves the "
                             "float32 logits' memory); 0: all at once (default: 0)")
    parser.add_argument("--attention-backend", choices=ATTENTION_BACKENDS, default=None,
                        help="attention kernels for training (CUDA): flash, cudnn, efficient, math, or "
                             "auto: PyTorch's choice (default: auto)")
    for name, kind, metavar, text in TRAIN_OPTIONS:
        # the default shown is TrainConfig's; the value stays None so a resumed run keeps its own
        shown = getattr(defaults, name)
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None, metavar=metavar,
                            help=f"{text} (default: {shown if shown != '' else 'none'})")
    parser.set_defaults(handler=run)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The run's saved options (when resuming) overridden by the ones given now."""
    saved = args.out / "train_config.json"
    values: dict[str, Any] = {}
    if args.resume and saved.exists():
        try:
            values = json.loads(saved.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise OmnibyteError(f"cannot read {saved}: {error}") from None
    for name in [*(option[0] for option in TRAIN_OPTIONS), *OTHER_CONFIG_OPTIONS]:
        value = getattr(args, name)
        if name == "steps" and value is not None:
            values["fit_steps_to_time"] = value == "auto"
            if value == "auto":  # planned while training; the saved plan (resuming) or the default until then
                continue
        if value is not None:
            values[name] = value
    if values.get("fit_steps_to_time") and not values.get("time_limit"):
        raise OmnibyteError("--steps auto needs --time-limit SECONDS: the time the schedule is fitted to")
    try:
        return TrainConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise OmnibyteError(f"invalid training options: {error}") from None


def resuming(args: argparse.Namespace) -> bool:
    """True when --resume finds a run to continue (its model, task and weights come from it)."""
    return args.resume and (args.out / CONFIG_FILE).exists()


def train_model(args: argparse.Namespace) -> ByteModel:
    """The resumed run's model (its weights come from the checkpoint), the model of
    --init-from with its weights, or a new one from --arch, --preset and --set. New and
    resumed models are built on the meta device: the trainer materialises them on its device
    (``init_weights`` under ``--seed`` for a new one: the weights an eager build under the
    seed has)."""
    if resuming(args):
        document = read_config(args.out)
        return build_on_meta(lambda: model_from_config(document))
    if args.init_from is not None:
        return initial_model(args)
    try:
        config = make_config(args.arch or "flat", args.preset or "tiny", **parse_overrides(args.overrides))
    except (TypeError, ValueError) as error:
        raise OmnibyteError(f"invalid model config: {error}") from None
    return build_on_meta(lambda: model_class_for(args.arch or "flat")(config))


def initial_model(args: argparse.Namespace) -> ByteModel:
    """The model saved in --init-from, weights included; its config is the run's config, so
    options that would define another model are refused."""
    document = read_config(args.init_from)
    if args.arch is not None and args.arch != document["arch"]:
        raise OmnibyteError(f"--init-from {args.init_from} holds a {document['arch']} model, not --arch {args.arch}")
    if args.preset is not None or args.overrides:
        raise OmnibyteError(f"--init-from {args.init_from} takes the model config from there; "
                            "leave out --preset and --set")
    return load_model(args.init_from)


def train_task(args: argparse.Namespace, corpus: ByteCorpus, model: ByteModel, seed: int) -> Task:
    """The resumed run's task (as recorded in the run), or --task configured for ``corpus``;
    a task head gets its initial weights from ``seed``."""
    if resuming(args):
        recorded = read_config(args.out)["task"]
        if args.task is not None and args.task != recorded.get("name"):
            raise OmnibyteError(f"{args.out} was trained for task {recorded.get('name')!r}, not {args.task!r}; "
                                "use another --out or the same task")
        try:
            return task_from_dict(recorded)
        except ValueError as error:
            raise OmnibyteError(f"{args.out}: {error}") from None
    with seeded(seed):
        return TASKS[args.task or DEFAULT_TASK].for_data(corpus, model)


def task_class(args: argparse.Namespace) -> type[Task]:
    """The class of the task trained: --task, the resumed run's, or next-byte."""
    if resuming(args):
        name = read_config(args.out)["task"].get("name")
        if name in TASKS:
            return TASKS[name]
    return TASKS[args.task or DEFAULT_TASK]


def run(args: argparse.Namespace) -> int:
    check_run_folder(args.out)  # before reading data or building anything
    config = train_config(args)
    finished = trained_steps(args.out) if args.resume else None
    if finished is not None and finished >= config.steps:  # one line, before the data is read
        print(f"{args.out} already finished at step {finished:,}; nothing to do (pass a larger --steps to continue)")
        return 0
    model = train_model(args)
    corpus = task_class(args).read_corpus(args.data, exclude=[args.out])  # never its own checkpoints
    task = train_task(args, corpus, model, config.seed)
    # augmented copies are made of whole files: split by files then, never inside one
    train_corpus, val_corpus = corpus.split(args.val_fraction, by="documents" if config.augment else "auto")
    originals = train_corpus.num_documents
    train_corpus = augmented(train_corpus, parse_augment(config.augment), config.seed)
    print(f"{model.arch} model, {model.num_parameters() / 1e6:.2f}M parameters; "
          f"data: {corpus.num_documents} files, {corpus.num_bytes:,} bytes "
          f"({train_corpus.num_bytes:,} train / {val_corpus.num_bytes:,} validation)"
          + (f"; {train_corpus.num_documents - originals:,} augmented copies of the {originals:,} training files"
             if train_corpus.num_documents > originals else "")
          + (f"; {corpus.skipped.summary()}" if corpus.skipped.total else ""))
    trainer = Trainer(model, train_corpus, config, args.out, val_corpus, task=task, progress=not args.no_progress)
    trainer.callbacks.append(show_validation)
    try:
        result = trainer.fit(resume=args.resume)
    except KeyboardInterrupt as stopped:  # the trainer saved a checkpoint and said so; --resume continues
        return 128 + getattr(stopped, "signal_number", signal.SIGINT)  # 130 for Ctrl-C, 143 for SIGTERM
    shutdown()  # every rank is here: the last collective of the run is behind it
    print(result.summary())
    if task.objective != "bits_per_byte" and result.val_metrics:  # the summary speaks of bits/byte
        print("last validation: " + ", ".join(f"{key} {value:.4f}" for key, value in result.val_metrics.items()))
    return 0

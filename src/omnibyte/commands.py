"""Core subcommands: train, eval, generate, info, demo."""
from __future__ import annotations

import argparse
import json
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import torch

from omnibyte.data import ByteCorpus
from omnibyte.devices import resolve_device
from omnibyte.errors import OmnibyteError
from omnibyte.models import ARCHITECTURES, ByteModel, make_config, model_class_for
from omnibyte.train import checkpoint
from omnibyte.train.trainer import TrainConfig, Trainer

# train options that map one-to-one onto TrainConfig fields
TRAIN_OPTIONS = {
    "seq_len": int, "batch_size": int, "steps": int, "grad_accum": int, "lr": float,
    "warmup_steps": int, "weight_decay": float, "grad_clip": float, "eval_every": int,
    "eval_windows": int, "patience": int, "save_every": int, "log_every": int, "seed": int,
    "time_limit": float,
}


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    _add_train(subparsers)
    _add_eval(subparsers)
    _add_generate(subparsers)
    _add_info(subparsers)
    _add_demo(subparsers)


# ---- train ------------------------------------------------------------------------

def _add_train(subparsers) -> None:
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
    parser.set_defaults(handler=run_train)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise OmnibyteError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def _train_config(args: argparse.Namespace) -> TrainConfig:
    saved = args.out / "train_config.json"
    values: dict[str, Any] = {}
    if args.resume and saved.exists():
        values = json.loads(saved.read_text())
    for name in [*TRAIN_OPTIONS, "device", "compile", "tensorboard"]:
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    try:
        return TrainConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise OmnibyteError(f"invalid training options: {error}") from None


def _train_model(args: argparse.Namespace) -> ByteModel:
    if args.resume and (args.out / checkpoint.CONFIG_FILE).exists():
        return checkpoint.model_from_config(checkpoint.read_config(args.out))
    try:
        config = make_config(args.arch, args.preset, **parse_overrides(args.overrides))
    except (TypeError, ValueError) as error:
        raise OmnibyteError(f"invalid model config: {error}") from None
    return model_class_for(args.arch)(config)


def run_train(args: argparse.Namespace) -> int:
    config = _train_config(args)
    if not 0 <= args.val_fraction < 1:
        raise OmnibyteError("--val-fraction must be in [0, 1)")
    model = _train_model(args)
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
        return 130
    summary = f"step {result.step}: train {result.train_bits_per_byte:.4f} bits/byte"
    if result.val_bits_per_byte is not None:
        summary += f", validation {result.val_bits_per_byte:.4f} (best {result.best_val_bits_per_byte:.4f})"
    print(summary + (" (stopped early)" if result.stopped_early else "") + f"; saved to {args.out}")
    return 0


# ---- eval -------------------------------------------------------------------------

def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model directory")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")


def load_cli_model(args: argparse.Namespace) -> ByteModel:
    return checkpoint.load_model(args.model, resolve_device(args.device))


def _add_eval(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="bits per byte of a model on files")
    parser.add_argument("data", nargs="+", metavar="DATA")
    _add_model_options(parser)
    parser.add_argument("--context", type=int, default=None, help="window length (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print a JSON report")
    parser.add_argument("--per-file", action="store_true", help="include every file in the report")
    parser.set_defaults(handler=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from omnibyte.evaluate import evaluate_paths

    model = load_cli_model(args)
    report = evaluate_paths(model, args.data, context=args.context, batch_size=args.batch_size,
                            progress=not args.json).to_dict(per_file=args.per_file)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
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
    return 0


# ---- generate ---------------------------------------------------------------------

def _add_generate(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="sample bytes from a model")
    _add_model_options(parser)
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="", help="UTF-8 text to continue")
    prompt.add_argument("--prompt-file", type=Path, help="file whose bytes are the prompt")
    parser.add_argument("--max-bytes", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("-o", "--output", default="-", help="output file (default: stdout)")
    parser.set_defaults(handler=run_generate)


def _prompt_bytes(args: argparse.Namespace) -> bytes:
    if args.prompt_file is None:
        return args.prompt.encode("utf-8")
    try:
        return args.prompt_file.read_bytes()
    except OSError as error:
        raise OmnibyteError(f"cannot read prompt file {args.prompt_file}: {error.strerror}") from None


def output_path_with_kind(name: str, data: bytes) -> Path:
    """``name`` plus the extension of the detected kind when it has none."""
    path = Path(name)
    if path.suffix:
        return path
    try:
        from omnibyte.apps.detect import extension_for
    except ImportError:
        return path
    return path.with_name(path.name + extension_for(data))


def run_generate(args: argparse.Namespace) -> int:
    if args.max_bytes < 0:
        raise OmnibyteError("--max-bytes must not be negative")
    if args.temperature < 0:
        raise OmnibyteError("--temperature must not be negative")
    prompt = _prompt_bytes(args)
    model = load_cli_model(args)
    options = dict(max_new_bytes=args.max_bytes, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, seed=args.seed,
                   fast=model.device.type == "cuda")  # CUDA-graph decoding where it exists
    try:
        if args.output == "-":
            out = sys.stdout.buffer
            for piece in model.stream(prompt, **options):
                out.write(piece)
                out.flush()
            return 0
        data = model.generate(prompt, **options)
    except ValueError as error:
        raise OmnibyteError(str(error)) from None
    path = output_path_with_kind(args.output, data)
    checkpoint.atomic_write_bytes(path, data)
    print(f"wrote {len(data):,} bytes to {path}", file=sys.stderr)
    return 0


# ---- info -------------------------------------------------------------------------

def _add_info(subparsers) -> None:
    parser = subparsers.add_parser("info", help="describe a saved model")
    _add_model_options(parser)
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=run_info)


def model_summary(model: ByteModel) -> dict[str, Any]:
    return {"arch": model.arch, "parameters": model.num_parameters(), "context": model.max_seq_len,
            "flops_per_byte": model.flops_per_byte(model.max_seq_len), "config": model.config.to_dict()}


def run_info(args: argparse.Namespace) -> int:
    args.device = "cpu"
    summary = model_summary(load_cli_model(args))
    state_file = args.model / checkpoint.TRAINER_STATE_FILE
    if state_file.exists():
        summary["trained_steps"] = checkpoint.load_trainer_state(args.model)[4]["step"]
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"architecture  {summary['arch']}")
    print(f"parameters    {summary['parameters']:,}")
    print(f"context       {summary['context']:,} bytes")
    print(f"FLOPs/byte    {summary['flops_per_byte']:.3g} (training, at full context)")
    if "trained_steps" in summary:
        print(f"trained steps {summary['trained_steps']:,}")
    for key, value in summary["config"].items():
        print(f"  {key:<22}{value}")
    return 0


# ---- demo -------------------------------------------------------------------------

def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="train a tiny model on Python's own source and sample from it")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--minutes", type=float, default=2.5, help="training time budget")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """The README's first command: a complete tour on data every machine has."""
    import shutil

    from omnibyte.evaluate import evaluate_documents

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    corpus = ByteCorpus.from_paths([str(stdlib / "*.py")])
    train_corpus, val_corpus = corpus.split(0.05)
    print(f"corpus: {corpus.num_documents} Python files from {stdlib} ({corpus.num_bytes:,} bytes)")
    model = model_class_for("flat")(make_config("flat", "tiny", hidden_size=128, num_layers=4,
                                                num_query_heads=4, num_key_value_heads=2))
    config = TrainConfig(seq_len=256, batch_size=16, steps=3000, lr=3e-3, eval_every=250,
                         eval_windows=32, save_every=500, device=args.device, time_limit=args.minutes * 60)
    shutil.rmtree(args.out, ignore_errors=True)
    torch.manual_seed(0)
    trainer = Trainer(model, train_corpus, config, args.out, val_corpus)
    # size the cosine schedule to the time budget, so the learning rate has decayed when time is up
    started = time.perf_counter()
    for _ in range(5):
        trainer.train_step()
    seconds_per_step = (time.perf_counter() - started) / 5
    config.steps = max(10, min(config.steps, int(0.9 * config.time_limit / seconds_per_step)))
    result = trainer.fit()
    held_out = [val_corpus.document(i) for i in range(min(val_corpus.num_documents, 8))]
    report = evaluate_documents(model, held_out, context=256, progress=False).to_dict()
    print(f"\ntrained {result.step} steps in <= {args.minutes:g} min; model saved to {args.out}")
    print(f"held-out bits/byte: {report['bits_per_byte']:.3f} "
          f"(accuracy {report['accuracy']:.3f}; 8.0 would be a uniform guess)")
    sample = model.generate(b"def ", max_new_bytes=300, temperature=0.8, top_k=40, seed=0)
    print("sample (prompt 'def '):\n" + "-" * 60)
    print(("def " + sample.decode("utf-8", errors="replace")))
    print("-" * 60)
    return 0

"""``omnibyte demo``: the README's first command, a complete tour on data every machine has.

The demo trains a fixed number of steps, so its result is the same on a busy machine as on an
idle one (only slower); the default takes about 3 minutes on an idle 2-core CPU.
"""
from __future__ import annotations

import argparse
import shutil
import sysconfig
from pathlib import Path

from omnibyte.cli.common import (
    DEVICE_NAMES,
    Subparsers,
    check_run_folder,
    device_name,
    positive_int,
    show_validation,
)
from omnibyte.data import ByteCorpus
from omnibyte.errors import OmnibyteError
from omnibyte.evaluate import evaluate_documents
from omnibyte.fileio import TEMP_NAME
from omnibyte.models.serialization import load_model
from omnibyte.models import build_model
from omnibyte.train.trainer import TrainConfig, Trainer

DEMO_STEPS = 500  # 2 min 49 s on the idle 2-core VM, held-out 2.217 bits/byte (bench/RESULTS.md)
MARKER = ".omnibyte-demo"  # written into every folder the demo creates: only those are ever replaced
# what a demo run writes into its folder (the trainer's files); anything else there is the user's
RUN_ENTRIES = {MARKER, "config.json", "model.safetensors", "task.safetensors", "trainer_state.safetensors",
               "train_config.json", "metrics.jsonl", "loss_curve.png", "best", "tensorboard"}


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("demo", help="train a tiny model on Python's own source and sample from it")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR",
                        help="run folder: new, empty, or an earlier demo's (which is replaced)")
    parser.add_argument("--steps", type=positive_int, default=DEMO_STEPS, metavar="N",
                        help=f"training steps ({DEMO_STEPS} take about 3 minutes on 2 CPU cores)")
    parser.add_argument("--device", default="auto", type=device_name, help=f"where to train: {DEVICE_NAMES}")
    parser.set_defaults(handler=run)


def prepare_folder(out: Path) -> None:
    """Make ``out`` an empty folder holding the demo's marker. An existing folder is replaced
    only when an earlier demo made it and it holds nothing but the demo's files; any other
    non-empty folder is refused, never deleted."""
    check_run_folder(out)
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise OmnibyteError(f"--out {out} is not empty and not an earlier demo run; choose another --out")
        foreign = sorted(entry.name for entry in out.iterdir()
                         if entry.name not in RUN_ENTRIES and not TEMP_NAME.match(entry.name))
        if foreign:
            raise OmnibyteError(f"--out {out} holds {foreign[0]}, which the demo did not write; "
                                "choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by omnibyte demo; the next demo may replace this folder\n")


def run(args: argparse.Namespace) -> int:
    """Train on the standard library's ``*.py``, report held-out bits/byte and print a sample."""
    prepare_folder(args.out)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    corpus = ByteCorpus.from_paths([str(stdlib / "*.py")])
    train_corpus, val_corpus = corpus.split(0.05)
    print(f"corpus: {corpus.num_documents} Python files from {stdlib} ({corpus.num_bytes:,} bytes)")
    config = TrainConfig(seq_len=256, batch_size=16, steps=args.steps, lr=3e-3, eval_every=50, eval_windows=32,
                         save_every=args.steps, log_every=10, seed=0, device=args.device)
    model = build_model("flat", "tiny", seed=config.seed, hidden_size=128, num_layers=4,  # the same demo every time
                        num_query_heads=4, num_key_value_heads=2)
    trainer = Trainer(model, train_corpus, config, args.out, val_corpus)
    trainer.callbacks.append(show_validation)
    result = trainer.fit()
    model = load_model(args.out)  # the best model by validation: what `--model` gets from now on
    held_out = [val_corpus.document(i) for i in range(val_corpus.num_documents)]  # all of it: ~300 KB, seconds
    report = evaluate_documents(model, held_out, context=256, batch_size=16, progress=False).to_dict()
    print(f"\ntrained {result.step} steps; model saved to {args.out}")
    print(f"held-out bits/byte: {report['bits_per_byte']:.3f} "
          f"(accuracy {report['accuracy']:.3f}; 8.0 would be a uniform guess)")
    sample = model.generate(b"def ", max_new_bytes=300, temperature=0.8, top_k=40, seed=0)
    print("sample (prompt 'def '):\n" + "-" * 60)
    print(("def " + sample.decode("utf-8", errors="replace")))
    print("-" * 60)
    return 0

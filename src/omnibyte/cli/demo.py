"""``omnibyte demo``: the README's first command, a complete tour on data every machine has."""
from __future__ import annotations

import argparse
import shutil
import sysconfig
import time
from pathlib import Path

import torch

from omnibyte.cli.common import Subparsers
from omnibyte.data import ByteCorpus
from omnibyte.evaluate import evaluate_documents
from omnibyte.models import make_config, model_class_for
from omnibyte.train.trainer import TrainConfig, Trainer

TIMING_STEPS = 5  # steps timed to size the schedule to the time budget


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("demo", help="train a tiny model on Python's own source and sample from it")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--minutes", type=float, default=2.5, help="training time budget")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Train on the standard library's ``*.py``, report held-out bits/byte and print a sample."""
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
    for _ in range(TIMING_STEPS):
        trainer.train_step()
    seconds_per_step = (time.perf_counter() - started) / TIMING_STEPS
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

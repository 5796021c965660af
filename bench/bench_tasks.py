"""bGPT's classification tasks (issue 12): a classifier on the pooled trunk, trained at most
``--minutes`` per model, scored on the held-out test split.

| task | data | target |
|---|---|---|
| fashion-mnist | Fashion-MNIST as 32x32 24-bit BMP (3,126 bytes), 10 classes, official test set | >= 92% |
| fsdd | FSDD as 8 kHz 8-bit 1 s WAV (8,044 bytes), 10 digits, official test split (index 0-4) | >= 97% |
| nottingham | Nottingham tune type from the ABC (file stem), 20% of tunes held out | vs majority class |

The media files are made in memory (``omnibyte.data.fashion_mnist``/``fsdd``/``nottingham``)
from ``--data`` (the layout of ``../shared/data``: ``fashion-mnist/*.gz``,
``fsdd/recordings/*.wav``, ``nottingham/ABC_cleaned/*.abc``). ``bench/pack_task_data.py``
writes a compact copy of exactly that (about 41 MB) for a machine without ``../shared/data``.

Every model is a fixed-patch (bGPT) model whose patch stage spans a whole file (16-byte
patches, 8 for ABC; the BMP/WAV header is the first patches); files are read whole (BMP 3,127
and WAV 8,045 tokens with BOS), ABC tunes cut at 1,024. The trainer fits the number of
optimizer steps to the time budget as it trains (``fit_steps_to_time``, ``--steps auto``), so
the cosine schedule ends with it (until s18 a short timed run before training set it once).
The best model by validation loss (a few % of the training files) is scored on the test split.
``--pretrain`` adds, per task, generative pre-training (next-byte on the same training files,
``--pretrain-minutes``, default ``--minutes``) followed by fine-tuning from it (``--minutes``):
bGPT's pre-training-vs-scratch comparison; ``--no-scratch`` leaves out the model from scratch.

    python bench/bench_tasks.py --data runs/task_data --out OUT              # ~7.5 min on an H200
    python bench/bench_tasks.py --data runs/task_data --out OUT --tasks fsdd --pretrain   # ~6 min
    python bench/bench_tasks.py --data runs/task_data --out OUT --tasks fsdd --pretrain --no-scratch \
        --pretrain-minutes 5 --minutes 4     # 9 of the issue's 10 minutes for one model
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_environment, print_table, validate_times, write_json  # noqa: E402

from omnibyte.apps.classify import evaluate_classifier, load_classifier  # noqa: E402
from omnibyte.data import ByteCorpus, Document  # noqa: E402
from omnibyte.data.augment import augmented, parse_augment  # noqa: E402
from omnibyte.data.fashion_mnist import fashion_mnist_documents  # noqa: E402
from omnibyte.data.fsdd import fsdd_documents  # noqa: E402
from omnibyte.data.nottingham import nottingham_documents  # noqa: E402
from omnibyte.devices import resolve_device  # noqa: E402
from omnibyte.models import build_model  # noqa: E402
from omnibyte.models.multiscale.patch import bgpt_stages  # noqa: E402
from omnibyte.models.serialization import load_model  # noqa: E402
from omnibyte.tasks import ClassifyTask, NextByteTask, Task  # noqa: E402
from omnibyte.train.trainer import TrainConfig, Trainer  # noqa: E402

# task -> loader(data root, split), seq_len, model stages, batch size, lr, default minutes, target,
# and optionally augment: copies of each training file, as `omnibyte train --augment` makes them
# (clothes mirrored and moved, spoken digits started later)
TASKS: dict[str, dict[str, Any]] = {
    "fashion-mnist": dict(load=lambda root, split: fashion_mnist_documents(root / "fashion-mnist", split),
                          seq_len=3136, stages=bgpt_stages(16, 3136, 384, 6, 6, 6, 0, 128, 1, 4, 4),
                          batch_size=64, lr=1e-3, minutes=3.5, target=0.92, augment="mirror,shift,mirror+shift"),
    "fsdd": dict(load=lambda root, split: fsdd_documents(root / "fsdd" / "recordings", split),
                 seq_len=8192, stages=bgpt_stages(16, 8192, 384, 6, 6, 6, 0, 128, 1, 4, 4),
                 batch_size=32, lr=1e-3, minutes=2.5, target=0.97, augment="delay,delay"),
    "nottingham": dict(load=lambda root, split: nottingham_documents(root / "nottingham" / "ABC_cleaned", split),
                       seq_len=1024, stages=bgpt_stages(8, 1024, 256, 4, 4, 4, 0, 128, 1, 4, 4),
                       batch_size=32, lr=1e-3, minutes=0.75, target=None),
}
VALIDATION_FRACTION = 0.04


def new_model(spec: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("patch", "small", stages=spec["stages"])


def train_config(spec: dict[str, Any], minutes: float, device: str) -> TrainConfig:
    """Steps fitted to ``minutes`` by the trainer (``--steps auto``): 1,000 is only its first guess."""
    return TrainConfig(seq_len=spec["seq_len"], batch_size=spec["batch_size"], steps=1000, lr=spec["lr"],
                       warmup_steps=-1, eval_every=166, eval_windows=1024, save_every=10**9, log_every=50,
                       device=device, time_limit=minutes * 60, fit_steps_to_time=True)


def train(spec: dict[str, Any], model: torch.nn.Module, task: Task, train_corpus: ByteCorpus,
          val_corpus: ByteCorpus | None, out: Path, minutes: float, device: str) -> dict[str, Any]:
    """Train for ``minutes`` (the schedule ends with them); the run's best (or last) model is saved in ``out``."""
    started = time.perf_counter()
    trainer = Trainer(model, train_corpus, train_config(spec, minutes, device), out, val_corpus, task=task,
                      progress=False)
    trainer.callbacks.append(validate_times(6))
    result = trainer.fit()
    return {"steps": result.step, "planned_steps": trainer.config.steps,
            "train_seconds": round(time.perf_counter() - started, 1), "best_step": result.model_step}


def split_train(documents: list[Document], spec: dict[str, Any]) -> tuple[ByteCorpus, ByteCorpus]:
    """(train, validation); the task's ``augment`` copies join the training part only. Made once
    per task: every model of the task trains on the same split and copies."""
    train, validation = ByteCorpus(documents).split(VALIDATION_FRACTION, by="documents")
    return augmented(train, parse_augment(spec.get("augment") or "")), validation


def unlabelled(corpus: ByteCorpus) -> ByteCorpus:
    documents = (corpus.document(index) for index in range(corpus.num_documents))
    return ByteCorpus([Document(document.name, document.data) for document in documents])


def classify_row(name: str, spec: dict[str, Any], train_docs: list[Document], split: tuple[ByteCorpus, ByteCorpus],
                 test_docs: list[Document], out: Path, minutes: float, device: str,
                 init_from: Path | None = None) -> dict[str, Any]:
    """Train a classifier (from scratch, or from the model in ``init_from``) on ``split`` and
    score it on test."""
    train_corpus, val_corpus = split
    model = load_model(init_from) if init_from is not None else new_model(spec)
    torch.manual_seed(0)
    task = ClassifyTask.for_data(ByteCorpus(train_docs), model)  # the classes of all training files
    stats = train(spec, model, task, train_corpus, val_corpus, out, minutes, device)
    best, classifier = load_model(out, device), load_classifier(out)
    report = evaluate_classifier(best, classifier, test_docs, batch_size=spec["batch_size"])
    majority = Counter(document.label for document in test_docs).most_common(1)[0][1] / len(test_docs)
    return {"task": name, "start": "pre-trained" if init_from else "scratch", "train_files": train_corpus.num_documents,
            "augment": spec.get("augment") or "", "test_files": report.files, "accuracy": report.accuracy,
            "majority_baseline": majority,
            "target": spec["target"], "met": None if spec["target"] is None else report.accuracy >= spec["target"],
            "minutes": minutes, **stats, "per_class": report.per_class(), "confusion": report.confusion.tolist(),
            "labels": report.labels, "parameters": sum(p.numel() for p in best.parameters())}


def pretrain(spec: dict[str, Any], split: tuple[ByteCorpus, ByteCorpus], out: Path, minutes: float,
             device: str) -> dict:
    """Next-byte pre-training on the task's own training split (its labels left out)."""
    train_corpus, val_corpus = (unlabelled(corpus) for corpus in split)
    return train(spec, new_model(spec), NextByteTask(), train_corpus, val_corpus, out, minutes, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"),
                        help="folder laid out like ../shared/data (see bench/pack_task_data.py)")
    parser.add_argument("--out", type=Path, required=True, help="folder for bench_tasks.json and bench_tasks.txt (the table)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the training runs (models and trainer states, large; "
                             "default: runs/bench_tasks/DATE-TIME)")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {', '.join(TASKS)}")
    parser.add_argument("--minutes", type=float, default=None,
                        help="training minutes per model (default: " +
                             ", ".join(f"{name} {spec['minutes']}" for name, spec in TASKS.items()) + ")")
    parser.add_argument("--pretrain", action="store_true",
                        help="also pre-train next-byte on the training files, then fine-tune (2x the minutes)")
    parser.add_argument("--pretrain-minutes", type=float, default=None,
                        help="pre-training minutes per task (default: --minutes)")
    parser.add_argument("--no-scratch", action="store_true",
                        help="with --pretrain: only the pre-trained model, not the one from scratch")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit-files", type=int, default=None, metavar="N",
                        help="smoke test: N train and N test files of each task only")
    parser.add_argument("--batch-size", type=int, default=None, help="override every task's batch size")
    parser.add_argument("--no-augment", action="store_true",
                        help="no augmented copies of the training files (the recipe before s20)")
    args = parser.parse_args()
    names = [name.strip() for name in args.tasks.split(",") if name.strip()]
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        parser.error(f"unknown tasks: {', '.join(unknown)}")
    if (args.no_scratch or args.pretrain_minutes is not None) and not args.pretrain:
        parser.error("--no-scratch and --pretrain-minutes go with --pretrain")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or Path("runs/bench_tasks") / time.strftime("%Y%m%d-%H%M%S")
    device = str(resolve_device(args.device))
    environment = describe_environment(device)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for name in names:
        spec = {**TASKS[name], **({"batch_size": args.batch_size} if args.batch_size else {}),
                **({"augment": ""} if args.no_augment else {})}
        minutes = args.minutes if args.minutes is not None else spec["minutes"]
        loading = time.perf_counter()
        train_docs, test_docs = spec["load"](args.data, "train"), spec["load"](args.data, "test")
        if args.limit_files:  # every other file, so that small subsets still hold several classes
            train_docs, test_docs = (docs[:: max(len(docs) // args.limit_files, 1)][: args.limit_files]
                                     for docs in (train_docs, test_docs))
            test_docs = [doc for doc in test_docs if doc.label in {d.label for d in train_docs}]
        split = split_train(train_docs, spec)
        print(f"{name}: {len(train_docs):,} train / {len(test_docs):,} test files "
              f"({time.perf_counter() - loading:.1f} s to load and split)", flush=True)
        if not args.no_scratch:
            rows.append(classify_row(name, spec, train_docs, split, test_docs, args.work / name, minutes, device))
            print(f"{name}: accuracy {rows[-1]['accuracy']:.4f} after {rows[-1]['steps']} steps", flush=True)
        if args.pretrain:
            pretrain_minutes = args.pretrain_minutes if args.pretrain_minutes is not None else minutes
            stats = pretrain(spec, split, args.work / f"{name}-pretrain", pretrain_minutes, device)
            row = classify_row(name, spec, train_docs, split, test_docs, args.work / f"{name}-finetune", minutes,
                               device, init_from=args.work / f"{name}-pretrain")
            row["pretrain"] = {**stats, "minutes": pretrain_minutes}
            rows.append(row)
            print(f"{name} (pre-trained): accuracy {row['accuracy']:.4f}", flush=True)
    columns = ["task", "start", "train_files", "test_files", "accuracy", "majority_baseline", "target", "met",
               "minutes", "steps", "train_seconds", "parameters"]
    command = "python " + " ".join(sys.argv)
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        print_table(rows, columns, title=f"classification ({environment.get('gpu') or environment['device']}; {command})")
    print(table.getvalue(), end="")
    (args.out / "bench_tasks.txt").write_text(table.getvalue())
    write_json(args.out / "bench_tasks.json", {"environment": environment, "command": command,
                                               "total_seconds": round(time.perf_counter() - started, 1),
                                               "rows": rows})


if __name__ == "__main__":
    main()

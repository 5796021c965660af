"""Quality at equal training time: flat vs fixed-patch vs multiscale vs BLT on GCIDE.

Each model trains for the same wall-clock budget on the GCIDE text (the last 2,000,000 bytes
are test, the 2,000,000 before them validation, the rest train), then is scored on the whole
test split. The trainer fits the number of optimizer steps to the budget as it trains
(``fit_steps_to_time``), so the cosine schedule ends when the budget does. BLT rows also give
the mean bytes per patch on the first 1,000,000 test bytes.

    python bench/bench_quality.py --data ../shared/data/text/gcide.txt.gz --minutes 10 \
        --out runs/quality.json

A budget longer than one process may run (a device command is cut at 10 minutes) trains in two
phases: the first is stopped by SIGTERM (``timeout -s TERM``), saves a checkpoint and writes
its rows as interrupted; ``--resume`` then continues every model to the steps it planned and
scores it (``train_seconds`` adds up both phases). The run folders must still be there:

    timeout -s TERM 540 python bench/bench_quality.py --data ... --minutes 10 --models flat --out q1.json
    python bench/bench_quality.py --data ... --minutes 10 --models flat --resume --out q.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_environment, print_table, validate_times, write_json  # noqa: E402

from omnibyte.data import ByteCorpus  # noqa: E402
from omnibyte.evaluate import count_patches, evaluate_documents  # noqa: E402
from omnibyte.models import build_model  # noqa: E402
from omnibyte.models.serialization import load_model  # noqa: E402
from omnibyte.train.trainer import TrainConfig, Trainer, TrainingInterrupted  # noqa: E402

TEST_BYTES = 2_000_000
VALIDATION_BYTES = 2_000_000

# name -> (arch, preset, overrides, seq_len, batch_size, lr)
CONTENDERS = {
    "flat": ("flat", "small", {}, 2048, 32, 2e-3),
    "patch": ("patch", "small", {}, 8192, 8, 1e-3),
    "multiscale": ("multiscale", "small", {}, 8192, 8, 1e-3),
    # BLT with space patching (no entropy model needed); bench_blt.py --entropy-model for entropy patches
    "blt": ("blt", "small", {"patching": {"scheme": "space", "max_patch_size": 16}}, 8192, 8, 1e-3),
}


def gcide_splits(path: str) -> tuple[ByteCorpus, ByteCorpus, ByteCorpus]:
    corpus = ByteCorpus.from_paths([path])
    return corpus.split_tail_bytes(TEST_BYTES, VALIDATION_BYTES)


validate_four_times = validate_times(4)  # a trainer callback, by a name of its own that a test wraps


def phase_seconds(run: Path, add: float | None = None) -> float:
    """The training seconds of a run's phases so far (``bench_seconds.json`` in its folder),
    after adding ``add``."""
    path = run / "bench_seconds.json"
    phases = json.loads(path.read_text()) if path.exists() else []
    if add is not None:
        phases.append(round(add, 1))
        write_json(path, phases)
    return sum(phases)


def train_and_test(name: str, splits, minutes: float, out_dir: Path, resume: bool = False) -> dict:
    """Train ``name`` for ``minutes`` (or continue its interrupted run), then score it on test."""
    train, validation, test = splits
    arch, preset, overrides, seq_len, batch_size, lr = CONTENDERS[name]
    run = out_dir / name
    torch.manual_seed(0)
    model = build_model(arch, preset, **overrides)
    if resume:  # the first phase's options, its planned steps among them
        config = TrainConfig.from_dict(json.loads((run / "train_config.json").read_text()))
    else:
        config = TrainConfig(seq_len=seq_len, batch_size=batch_size, steps=1000, lr=lr, eval_every=250,
                             eval_windows=32, save_every=10**9, time_limit=minutes * 60, fit_steps_to_time=True)
    trainer = Trainer(model, train, config, run, validation, progress=False)
    trainer.callbacks.append(validate_four_times)
    row = {"model": name, "arch": arch, "preset": preset, "params": model.num_parameters(), "seq_len": seq_len,
           "batch_size": batch_size, "minutes": minutes}
    started = time.time()
    try:
        result = trainer.fit(resume=resume)
    except TrainingInterrupted as stop:
        seconds = phase_seconds(run, time.time() - started)
        return {**row, "interrupted_at_step": stop.step, "planned_steps": trainer.config.steps,
                "train_seconds": round(seconds, 1)}
    seconds = phase_seconds(run, None if result.already_finished else time.time() - started)
    model = load_model(run, trainer.device)  # the best by validation
    report = evaluate_documents(model, [test.document(i) for i in range(test.num_documents)],
                                context=model.max_seq_len, batch_size=8, progress=False).to_dict()
    row.update(steps=result.step, planned_steps=trainer.config.steps, train_seconds=round(seconds, 1),
               train_bytes=result.step * seq_len * batch_size, val_bits_per_byte=result.best_val_bits_per_byte,
               test_bits_per_byte=report["bits_per_byte"], test_accuracy=report.get("accuracy"))
    if arch == "blt":
        data = b"".join(test.document(i).data for i in range(test.num_documents))[:1_000_000]
        row["bytes_per_patch"] = len(data) / max(count_patches(model, data, seq_len), 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="path of gcide.txt.gz")
    parser.add_argument("--minutes", type=float, default=10.0, help="training time per model")
    parser.add_argument("--models", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS))
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted runs in --runs to their planned steps, then score them")
    parser.add_argument("--runs", default="runs/quality", help="folder for the trained models")
    parser.add_argument("--out", default="quality.json")
    args = parser.parse_args()
    splits = gcide_splits(args.data)
    rows = []
    for name in args.models:  # a SIGTERM stops the model in training; the ones after it are not started
        rows.append(train_and_test(name, splits, args.minutes, Path(args.runs), args.resume))
        write_json(args.out, {"environment": describe_environment(), "minutes": args.minutes,
                              "command": " ".join(sys.argv), "results": rows})  # kept if a later model is cut
        if "interrupted_at_step" in rows[-1]:
            break
    print_table(rows, ["model", "params", "steps", "planned_steps", "interrupted_at_step", "train_seconds",
                       "train_bytes", "val_bits_per_byte", "test_bits_per_byte", "bytes_per_patch"])
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

"""Quality at equal training time: flat vs fixed-patch vs multiscale on GCIDE.

Each model trains for the same wall-clock budget on the GCIDE text (the last 2,000,000 bytes
are test, the 2,000,000 before them validation, the rest train), then is scored on the whole
test split. The number of optimizer steps is calibrated per model from a short timed run, so
the cosine schedule ends when the budget does.

    python bench/bench_quality.py --data ../shared/data/text/gcide.txt.gz --minutes 10 \
        --out runs/quality.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_environment, print_table, write_json  # noqa: E402

from omnibyte.data import ByteCorpus  # noqa: E402
from omnibyte.evaluate import evaluate_documents  # noqa: E402
from omnibyte.models import build_model  # noqa: E402
from omnibyte.train.trainer import TrainConfig, Trainer  # noqa: E402

TEST_BYTES = 2_000_000
VALIDATION_BYTES = 2_000_000

# name -> (arch, preset, overrides, seq_len, batch_size, lr)
CONTENDERS = {
    "flat": ("flat", "small", {}, 2048, 32, 2e-3),
    "patch": ("patch", "small", {}, 8192, 8, 1e-3),
    "multiscale": ("multiscale", "small", {}, 8192, 8, 1e-3),
}


def gcide_splits(path: str) -> tuple[ByteCorpus, ByteCorpus, ByteCorpus]:
    corpus = ByteCorpus.from_paths([path])
    return corpus.split_tail_bytes(TEST_BYTES, VALIDATION_BYTES)


def steps_per_second(name: str, train: ByteCorpus, out_dir: Path, calibration_steps: int) -> float:
    """Optimizer steps per second of a throwaway copy of the contender (after warm-up)."""
    arch, preset, overrides, seq_len, batch_size, lr = CONTENDERS[name]
    model = build_model(arch, preset, **overrides)
    config = TrainConfig(seq_len=seq_len, batch_size=batch_size, steps=10**6, lr=lr,
                         eval_every=0, save_every=10**9, log_every=10**9, compile=False)
    trainer = Trainer(model, train, config, out_dir / f"{name}-calibration", progress=False)
    for _ in range(3):
        trainer.train_step()
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    started = time.perf_counter()
    for _ in range(calibration_steps):
        trainer.train_step()
    torch.cuda.synchronize() if torch.cuda.is_available() else None
    return calibration_steps / (time.perf_counter() - started)


def train_and_test(name: str, splits, minutes: float, out_dir: Path, calibration_steps: int) -> dict:
    train, validation, test = splits
    arch, preset, overrides, seq_len, batch_size, lr = CONTENDERS[name]
    rate = steps_per_second(name, train, out_dir, calibration_steps)
    steps = max(int(rate * minutes * 60 * 0.97), 10)  # validation passes take the rest
    torch.manual_seed(0)
    model = build_model(arch, preset, **overrides)
    config = TrainConfig(seq_len=seq_len, batch_size=batch_size, steps=steps, lr=lr,
                         eval_every=max(steps // 4, 1), eval_windows=32, save_every=10**9,
                         time_limit=minutes * 60)
    started = time.time()
    result = Trainer(model, train, config, out_dir / name, validation, progress=False).fit()
    train_seconds = time.time() - started
    context = model.max_seq_len
    report = evaluate_documents(model, [test.document(i) for i in range(test.num_documents)],
                                context=context, batch_size=8, progress=False).to_dict()
    return {
        "model": name, "arch": arch, "preset": preset, "params": model.num_parameters(),
        "seq_len": seq_len, "batch_size": batch_size, "steps": result.step,
        "train_seconds": round(train_seconds, 1),
        "train_bytes": result.step * seq_len * batch_size,
        "val_bits_per_byte": result.val_bits_per_byte,
        "test_bits_per_byte": report["bits_per_byte"],
        "test_accuracy": report.get("accuracy"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="path of gcide.txt.gz")
    parser.add_argument("--minutes", type=float, default=10.0, help="training time per model")
    parser.add_argument("--models", nargs="+", default=list(CONTENDERS), choices=list(CONTENDERS))
    parser.add_argument("--calibration-steps", type=int, default=10)
    parser.add_argument("--runs", default="runs/quality", help="folder for the trained models")
    parser.add_argument("--out", default="quality.json")
    args = parser.parse_args()
    splits = gcide_splits(args.data)
    rows = [train_and_test(name, splits, args.minutes, Path(args.runs), args.calibration_steps)
            for name in args.models]
    print_table(rows, ["model", "params", "steps", "train_seconds", "train_bytes",
                       "val_bits_per_byte", "test_bits_per_byte"])
    write_json(args.out, {"environment": describe_environment(), "minutes": args.minutes,
                          "command": " ".join(sys.argv), "results": rows})
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

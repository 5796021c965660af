"""Visual question answering on image bytes (issue 16, MBLM's VQA experiment) on Shapes-VQA.

Trains, all at once as separate processes on one device, each for ``--minutes`` of wall clock:

* the multiscale family with Transformer stages, on every encoding (raw pixels, BMP, PNG,
  JPEG) of the same scenes, through the normal trainer (``--task answer``, loss on the answer);
* the same with a Mamba global stage (MBLM's hybrid: Mamba over patches, a Transformer over the
  bytes of a patch; the pure-PyTorch scan unless ``mamba_ssm`` imports);
* the CNN + LSTM classifier (``omnibyte.baselines.vqa``) on the decoded pixels;

then scores each on the test split with ``omnibyte.apps.answer.answer_accuracy`` (exact match,
overall and per question type; byte models decode greedily with the cache). The answer prior
(the most common training answer of each question type, no image) is a row for scale.

The data is written with ``omnibyte datasets shapes-vqa`` (seed ``--seed``, one folder per
encoding, ``WORK/data/<encoding><size>``, reused when it exists with the same options) unless
``--data`` names folders written before. The small models are launch-bound, so the ~9
processes together use one H200 far better than one after another; every byte model's cosine
schedule is recalibrated from its measured step rate so that it ends with the time budget.

    python bench/bench_vqa.py --out OUT --work /tmp/vqa-work --minutes 5 --device cuda   # ~7 min on an H200
    python bench/bench_vqa.py --out /tmp/vqa --minutes 0.2 --scenes 60 --preset tiny --device cpu  # smoke

Writes ``OUT/bench_vqa.md`` (the table, also printed), ``OUT/bench_vqa.json`` and per model
``OUT/results/NAME.json`` and ``OUT/logs/NAME.log``; the data (about 0.7 GB at 20,000 scenes)
and the trained models (``runs/NAME/``) go to ``--work`` (default: ``OUT``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_environment, write_json  # noqa: E402

import omnibyte  # noqa: E402
from omnibyte.apps.answer import answer_accuracy  # noqa: E402
from omnibyte.data.pairs import PairRecord, corpus_records, read_pair_corpus, target_stream  # noqa: E402
from omnibyte.data.shapes_vqa import ENCODINGS, QUESTION_TYPES, parse_record_name  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BLOCKS = ("transformer", "mamba")
BASELINE_ENCODING = "pixels"
FIRST_CALIBRATION_STEP, RECALIBRATE_EVERY = 5, 20
GRACE_SECONDS = 600  # a worker still running this long after its budget is stopped


def stage(patch: int, hidden: int, layers: int, heads: int, kv_heads: int, block: str = "transformer") -> dict:
    return dict(patch_size=patch, hidden_size=hidden, num_layers=layers, num_query_heads=heads,
                num_key_value_heads=kv_heads, block=block)


# preset -> the global stage and byte stage shapes (hidden, layers, heads, kv heads; the global
# patch count follows the context), the byte models' batch, peak learning rate and warmup, and
# the baseline's size. ``small`` is sized for a 5-minute budget shared by 9 processes on an H200:
# the loss covers only the answer (a few bytes of a ~3,200-byte pixel record), so records seen
# matter more than width (a launch-bound step of 64 rows costs about what one of 32 does);
# ``base`` is wider and deeper for longer budgets.
PRESETS: dict[str, dict[str, Any]] = {
    "small": dict(top=(256, 4, 4, 4), bytes=(128, 2, 4, 4), batch_size=64, lr=2e-3, warmup=100,
                  baseline=dict(width=64, hidden=256, batch_size=128, lr=1e-3, warmup_steps=200, eval_every=500)),
    "base": dict(top=(384, 6, 6, 6), bytes=(256, 2, 4, 4), batch_size=32, lr=1e-3, warmup=100,
                 baseline=dict(width=64, hidden=256, batch_size=128, lr=1e-3, warmup_steps=200, eval_every=500)),
    "tiny": dict(top=(32, 1, 2, 1), bytes=(32, 1, 2, 1), batch_size=4, lr=2e-3, warmup=5,
                 baseline=dict(width=8, hidden=32, batch_size=16, lr=2e-3, warmup_steps=5, eval_every=50)),
}
BYTE_PATCH = 8  # bytes per global position


def context_for(size: int) -> int:
    """The model context: a power of two holding a raw-pixel record (image, question, answer)."""
    return 4096 if size == 32 else 16384


def byte_stages(preset: dict[str, Any], block: str, context: int) -> list[dict]:
    return [stage(context // BYTE_PATCH, *preset["top"], block=block), stage(BYTE_PATCH, *preset["bytes"])]


# ---- data ------------------------------------------------------------------------------------------

def dataset_options(args: argparse.Namespace, encoding: str) -> dict[str, Any]:
    return {"dataset": "shapes-vqa", "seed": args.seed, "encoding": encoding, "size": args.size,
            "scenes": {"train": args.scenes, "validation": args.test_scenes, "test": args.test_scenes}}


def matches(folder: Path, options: dict[str, Any]) -> bool:
    try:
        described = json.loads((folder / "dataset.json").read_text())
    except (OSError, ValueError):
        return False
    return all(described.get(key) == value for key, value in options.items())


def child_environment(threads: int) -> dict[str, str]:
    """The environment of a child process: this omnibyte on its path, ``threads`` CPU threads."""
    source = str(Path(omnibyte.__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def prepare_data(args: argparse.Namespace) -> dict[str, Path]:
    """Encoding -> dataset folder, written (in parallel) where missing."""
    root = args.data or args.work / "data"
    folders = {encoding: root / f"{encoding}{args.size}" for encoding in args.data_encodings}
    jobs = {}
    for encoding, folder in folders.items():
        if matches(folder, dataset_options(args, encoding)):
            continue
        if args.data is not None:
            sys.exit(f"bench_vqa: {folder} is not a shapes-vqa dataset of these options "
                     f"(--scenes {args.scenes} --test-scenes {args.test_scenes} --seed {args.seed})")
        if folder.exists() and any(folder.iterdir()) and not args.force:
            sys.exit(f"bench_vqa: {folder} holds another dataset; pass --force to replace it")
        command = [sys.executable, "-m", "omnibyte.cli", "datasets", "shapes-vqa", "--scenes", str(args.scenes),
                   "--test-scenes", str(args.test_scenes), "--encoding", encoding, "--size", str(args.size),
                   "--seed", str(args.seed), "--out", str(folder), "--force"]
        jobs[encoding] = subprocess.Popen(command, env=child_environment(1), stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True)
    for encoding, job in jobs.items():
        output, _ = job.communicate()
        if job.returncode != 0:
            sys.exit(f"bench_vqa: writing the {encoding} data failed:\n{output}")
    return folders


def split_records(folder: Path, split: str) -> list[PairRecord]:
    records, _ = corpus_records(read_pair_corpus([str(folder / split)]))
    return records


def answer_prior(folder: Path) -> dict[str, Any]:
    """Accuracy of answering every test question with its type's most common training answer."""
    common: dict[str, Counter] = defaultdict(Counter)
    for record in split_records(folder, "train"):
        common[parse_record_name(record.name)[0]][record.target] += 1
    test = split_records(folder, "test")
    guesses = [common[parse_record_name(r.name)[0]].most_common(1)[0][0].decode("latin-1")
               if common[parse_record_name(r.name)[0]] else None for r in test]
    return answer_accuracy(test, guesses)


# ---- workers (one process per model) ------------------------------------------------------------

class TimeBudget:
    """Trainer callback: every ``RECALIBRATE_EVERY`` steps it sets the run's length in steps
    from the step rate measured so far, so that the cosine schedule ends with the budget (the
    rate changes while the other processes start, train and stop)."""

    def __init__(self, seconds: float):
        self.seconds, self.started, self.mark = seconds, time.time(), None

    def __call__(self, trainer) -> None:
        step, now = trainer.step, time.time()
        if step == FIRST_CALIBRATION_STEP:
            self.mark = (step, now)
        elif self.mark is not None and (step - FIRST_CALIBRATION_STEP) % RECALIBRATE_EVERY == 0:
            rate = (step - self.mark[0]) / max(now - self.mark[1], 1e-9)
            left = self.seconds - (now - self.started)
            trainer.config.steps = max(step + int(rate * left * 0.97), step + 1)  # validations take the rest
            if step == FIRST_CALIBRATION_STEP + RECALIBRATE_EVERY:
                trainer.config.eval_every = max(trainer.config.steps // 4, 1)


def run_byte_model(spec: dict[str, Any]) -> dict[str, Any]:
    from omnibyte.apps.answer import evaluate_answers
    from omnibyte.models import build_model
    from omnibyte.models.serialization import load_model
    from omnibyte.tasks import AnswerTask
    from omnibyte.train.trainer import TrainConfig, Trainer

    folder, preset = Path(spec["data"]), {**PRESETS[spec["preset"]], **spec["overrides"]}
    train_corpus = AnswerTask.read_corpus([folder])
    val_corpus = read_pair_corpus([str(folder / "validation")])
    model = build_model("multiscale", "tiny", seed=0, stages=byte_stages(preset, spec["block"], spec["context"]))
    task = AnswerTask.for_data(train_corpus, model)
    seconds = spec["minutes"] * 60
    config = TrainConfig(seq_len=spec["context"], batch_size=preset["batch_size"], steps=10**7, lr=preset["lr"],
                         warmup_steps=preset["warmup"], eval_every=10**7, eval_windows=256, save_every=0,
                         log_every=50, seed=0, device=spec["device"], time_limit=seconds)
    trainer = Trainer(model, train_corpus, config, spec["run"], val_corpus, task=task, progress=False)
    trainer.callbacks.append(TimeBudget(seconds))
    started = time.time()
    result = trainer.fit()
    trained_seconds = time.time() - started
    best = load_model(spec["run"], trainer.device)  # the best model by validation loss
    test = split_records(folder, "test")
    started = time.time()
    report, _ = evaluate_answers(best, test, batch_size=spec["eval_batch"], fast=False)
    return {**report, "steps": result.step, "best_step": result.model_step, "train_seconds": round(trained_seconds, 1),
            "eval_seconds": round(time.time() - started, 1), "parameters": best.num_parameters(),
            "val_bits_per_byte": result.best_val_bits_per_byte, "batch_size": config.batch_size, "lr": config.lr}


def run_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from omnibyte.baselines.vqa import BaselineConfig, evaluate_baseline, train_baseline

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    folder = Path(spec["data"])
    config = BaselineConfig(**PRESETS[spec["preset"]]["baseline"], steps=10**9, seconds=spec["minutes"] * 60,
                            device=spec["device"])
    trained = train_baseline(split_records(folder, "train"), config, split_records(folder, "validation"))
    started = time.time()
    report, _ = evaluate_baseline(trained, split_records(folder, "test"))
    return {**report, **trained.stats, "eval_seconds": round(time.time() - started, 1),
            "batch_size": config.batch_size, "lr": config.lr}


def worker(spec_path: Path) -> None:
    spec = json.loads(spec_path.read_text())
    result = run_baseline(spec) if spec["model"] == "cnn-lstm" else run_byte_model(spec)
    write_json(Path(spec["result"]), {**spec, **result})


# ---- the parent ------------------------------------------------------------------------------------

def longest_record(folder: Path) -> int:
    """Tokens of the longest row (input positions) of the folder's held-out records, which must
    all fit to be scored (a training record that does not fit is left out, noted in the log)."""
    return max(len(r.source) + len(target_stream(r.target)) + 1  # BOS, source, BOS, target stream, less one
               for split in ("validation", "test") for r in split_records(folder, split))


def worker_specs(args: argparse.Namespace, folders: dict[str, Path]) -> list[dict[str, Any]]:
    context = context_for(args.size)
    specs = []
    for block in args.blocks:
        for encoding in args.encodings:
            specs.append({"name": f"{block}-{encoding}{args.size}", "model": f"multiscale-{block}", "block": block,
                          "encoding": encoding, "data": str(folders[encoding]), "context": context})
    if not args.no_baseline:
        specs.append({"name": f"cnn-lstm-{BASELINE_ENCODING}{args.size}", "model": "cnn-lstm",
                      "encoding": BASELINE_ENCODING, "data": str(folders[BASELINE_ENCODING])})
    for spec in specs:
        overrides = {key: value for key, value in (("lr", args.lr), ("batch_size", args.batch_size)) if value}
        spec.update(preset=args.preset, overrides=overrides, minutes=args.minutes, device=args.device,
                    eval_batch=args.eval_batch, run=str(args.work / "runs" / spec["name"]),
                    result=str(args.out / "results" / f"{spec['name']}.json"))
    return specs


def launch(specs: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run every spec as its own process, all at once; the results (or the failure) per spec."""
    threads = max((os.cpu_count() or 1) // len(specs), 1)
    for folder in (args.work / "specs", args.out / "logs", args.out / "results"):
        folder.mkdir(parents=True, exist_ok=True)
    running = []
    for spec in specs:
        spec_path = args.work / "specs" / f"{spec['name']}.json"
        spec_path.write_text(json.dumps(spec, indent=2))
        Path(spec["result"]).unlink(missing_ok=True)
        log = open(args.out / "logs" / f"{spec['name']}.log", "w")
        process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                                   env=child_environment(threads), stdout=log, stderr=subprocess.STDOUT)
        running.append((spec, process, log))
    deadline = time.time() + args.minutes * 60 + GRACE_SECONDS
    results = []
    for spec, process, log in running:
        try:
            process.wait(timeout=max(deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        result_path = Path(spec["result"])
        if process.returncode == 0 and result_path.exists():
            results.append(json.loads(result_path.read_text()))
        else:
            tail = (args.out / "logs" / f"{spec['name']}.log").read_text()[-2000:]
            print(f"bench_vqa: {spec['name']} failed (exit {process.returncode}):\n{tail}", file=sys.stderr)
            results.append({**spec, "error": f"exit {process.returncode}", "accuracy": None, "by_type": {}})
    return results


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def markdown_tables(results: list[dict[str, Any]], prior: dict[str, Any], args: argparse.Namespace) -> str:
    columns = ["model", "encoding", "overall", *QUESTION_TYPES, "vs pixels", "steps", "train s", "params"]
    lines = [f"Test exact-match accuracy (%), {args.size}x{args.size}, {args.minutes:g} min per model, "
             f"{args.scenes:,} training scenes, preset {args.preset}", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    pixels = {row["model"]: row.get("accuracy") for row in results if row["encoding"] == "pixels"}
    rows = [{"model": "answer prior (no image)", "encoding": "-", **prior}] + results
    for row in rows:
        reference = pixels.get(row["model"])
        delta = ("-" if reference is None or row.get("accuracy") is None or row["encoding"] == "pixels"
                 else f"{100 * (row['accuracy'] - reference):+.1f}")
        cells = [row["model"], row["encoding"], percent(row.get("accuracy")),
                 *(percent(row.get("by_type", {}).get(kind, {}).get("accuracy")) for kind in QUESTION_TYPES),
                 delta, f"{row['steps']:,}" if row.get("steps") else "-",
                 f"{row['train_seconds']:.0f}" if row.get("train_seconds") else "-",
                 f"{row['parameters'] / 1e6:.2f}M" if row.get("parameters") else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    counts = prior.get("by_type", {})
    lines += ["", f"Test records: {prior.get('records', 0):,} (" +
              ", ".join(f"{kind} {counts[kind]['records']:,}" for kind in QUESTION_TYPES if kind in counts) + ")."]
    failed = [row["name"] for row in results if row.get("error")]
    if failed:
        lines += ["", "Failed: " + ", ".join(failed) + " (see logs/)."]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=False, help="folder for the data, runs, tables and JSON")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the data and the trained models, large (default: --out)")
    parser.add_argument("--data", type=Path, default=None,
                        help="folder holding <encoding><size>/ datasets written before (default: write them to "
                             "OUT/data)")
    parser.add_argument("--minutes", type=float, default=5.0, help="training wall-clock minutes per model")
    parser.add_argument("--scenes", type=int, default=20_000, help="training scenes (about 4.4 questions each)")
    parser.add_argument("--test-scenes", type=int, default=None,
                        help="validation and test scenes, each (default: a twentieth of --scenes, at least 10)")
    parser.add_argument("--size", type=int, choices=(32, 64), default=32, help="image width and height")
    parser.add_argument("--encodings", nargs="+", choices=ENCODINGS, default=list(ENCODINGS))
    parser.add_argument("--blocks", nargs="+", choices=BLOCKS, default=list(BLOCKS),
                        help="multiscale global-stage blocks to train")
    parser.add_argument("--no-baseline", action="store_true", help="leave out the CNN + LSTM baseline")
    parser.add_argument("--preset", choices=list(PRESETS), default="small")
    parser.add_argument("--lr", type=float, default=None,
                        help="byte models' peak learning rate (default: the preset's)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="byte models' records per step (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the scenes and questions")
    parser.add_argument("--eval-batch", type=int, default=64, help="test records decoded together")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--force", action="store_true",
                        help="replace the runs of an earlier bench in WORK/runs and a dataset of other options in "
                             "WORK/data")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is None and args.out is None:
        parser.error("--out is required")
    if args.minutes <= 0 or args.scenes < 1 or (args.lr is not None and args.lr <= 0) or \
            (args.batch_size is not None and args.batch_size < 1):
        parser.error("--minutes, --scenes, --lr and --batch-size must be positive")
    args.work = args.work or args.out
    args.data_encodings = list(dict.fromkeys(args.encodings + ([] if args.no_baseline else [BASELINE_ENCODING])))
    args.test_scenes = args.test_scenes or max(args.scenes // 20, 10)
    return args


def main() -> None:
    args = parse_args()
    if args.worker is not None:
        worker(args.worker)
        return
    from omnibyte.devices import resolve_device

    args.device = str(resolve_device(args.device))
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    folders = prepare_data(args)
    data_seconds = time.time() - started
    context = context_for(args.size)
    longest = max(longest_record(folder) for folder in folders.values())
    if longest > context:
        sys.exit(f"bench_vqa: a record of {longest} tokens does not fit the context of {context}")
    print(f"data ready in {data_seconds:.0f} s ({', '.join(str(f) for f in folders.values())}); longest record "
          f"{longest} tokens of {context}", flush=True)
    specs = worker_specs(args, folders)
    earlier = [Path(spec["run"]) for spec in specs if Path(spec["run"]).exists()]
    if earlier and not args.force:
        sys.exit(f"bench_vqa: {args.work / 'runs'} holds runs of an earlier bench; pass --force to replace them")
    for run in earlier:
        shutil.rmtree(run)
    print(f"training {len(specs)} models at once for {args.minutes:g} min each: "
          + ", ".join(spec["name"] for spec in specs), flush=True)
    results = launch(specs, args)
    prior = answer_prior(folders[args.data_encodings[0]])
    table = markdown_tables(results, prior, args)
    print("\n" + table, end="")
    (args.out / "bench_vqa.md").write_text(table)
    write_json(args.out / "bench_vqa.json",
               {"environment": describe_environment(args.device), "command": "python " + " ".join(sys.argv),
                "minutes_per_model": args.minutes, "data_seconds": round(data_seconds, 1),
                "total_seconds": round(time.time() - started, 1), "context": context, "longest_record": longest,
                "preset": {"name": args.preset, **PRESETS[args.preset]},
                "overrides": {"lr": args.lr, "batch_size": args.batch_size}, "answer_prior": prior, "results": results})


if __name__ == "__main__":
    main()

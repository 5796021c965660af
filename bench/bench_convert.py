"""Conversion benchmarks (bGPT's digital-world tasks): ABC -> MIDI and MIDI -> ABC on the
Nottingham Music Database, and CPU state modelling, each a flat ``small`` model trained for
``--minutes`` with the ``convert`` task, then decoded greedily (cached) on held-out records.

Reported per task: steps and training time, target bits/byte and argmax accuracy (teacher
forced), outputs that ended, exact outputs; MIDI targets: parse rate (mido) and, from ABC, the
share of test tunes whose notes (pitch, start, duration per track) equal the reference's; ABC
targets: parse rate with abc2midi (and the references' rate, for scale); CPU: per-byte and
exact-state accuracy, overall and by program length. ``--cpu-trace`` trains the CPU model on
trace targets (each instruction's effect, then the final state: ``cpusim.run_trace``) and
scores the final state the model writes after its own effects.

The machine needs no ../shared/data: copy the Nottingham files it reads (3.6 MB) and abc2midi
into an ignored folder first, and point ``--data``/``--abc2midi`` there::

    mkdir -p runs/convert-data/nottingham/MIDI
    cp -r ../shared/data/nottingham/ABC_cleaned runs/convert-data/nottingham/
    cp ../shared/data/nottingham/MIDI/*.mid runs/convert-data/nottingham/MIDI/
    cp "$(command -v abc2midi)" runs/convert-data/      # optional: ABC parse rates

    python bench/bench_convert.py --data runs/convert-data/nottingham \\
        --abc2midi runs/convert-data/abc2midi --minutes 1.75 --out runs/bench-convert

Three models of ``--minutes`` each plus data, decoding and checks: about 7 minutes on an H200
with ``--minutes 1.75`` (an estimate: data, the CPU records and decoding take about a minute).
CPU smoke test: ``--minutes 0.2 --preset tiny --cpu-records 2000
--test-tunes 4 --cpu-test-records 50 --context 1024``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_environment, print_table, validate_times, write_json  # noqa: E402

from omnibyte import cpusim  # noqa: E402
from omnibyte.apps.convert import evaluate_conversion  # noqa: E402
from omnibyte.data.nottingham import nottingham_records  # noqa: E402
from omnibyte.data.pairs import PairRecord, record_tokens, records_corpus  # noqa: E402
from omnibyte.devices import resolve_device  # noqa: E402
from omnibyte.models import build_model  # noqa: E402
from omnibyte.models.serialization import load_model  # noqa: E402
from omnibyte.tasks import ConvertTask  # noqa: E402
from omnibyte.train.trainer import TrainConfig, Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VALIDATION_FRACTION = 0.05


def split_validation(records: list[PairRecord]) -> tuple[Any, Any]:
    """(train, validation) corpora, split by record name as ``omnibyte train`` splits them."""
    return records_corpus(records).split(VALIDATION_FRACTION, by="documents")


def train(name: str, records: list[PairRecord], args: argparse.Namespace, seq_len: int, batch_size: int,
          lr: float) -> tuple[Any, ConvertTask, dict[str, Any]]:
    """A flat model trained for ``args.minutes`` on ``records``; returns it, its task and facts."""
    train_corpus, val_corpus = split_validation(records)
    task = ConvertTask.for_data(train_corpus)
    model = build_model(args.arch, args.preset, seed=0, max_sequence_length=args.context)
    seconds = args.minutes * 60
    # the trainer fits the steps to the time (re-measured as it goes: s18's ABC -> MIDI run, planned
    # once from a slow start, trained 98 of its 195 s)
    config = TrainConfig(seq_len=seq_len, batch_size=batch_size, steps=1000, lr=lr, warmup_steps=100,
                         eval_every=250, eval_windows=64, save_every=0, log_every=50, seed=0,
                         device=args.device, time_limit=seconds, fit_steps_to_time=True)
    trainer = Trainer(model, train_corpus, config, args.runs / name, val_corpus, task=task, progress=False)
    trainer.callbacks.append(validate_times(4))
    started = time.time()
    result = trainer.fit()
    facts = {"params": model.num_parameters(), "seq_len": seq_len, "batch_size": batch_size, "lr": lr,
             "train_records": train_corpus.num_documents, "val_records": val_corpus.num_documents,
             "steps": result.step, "train_seconds": round(time.time() - started, 1),
             "val_bits_per_byte": result.best_val_bits_per_byte}
    # the run folder holds the best model by validation: that one is evaluated
    return load_model(args.runs / name, trainer.device), task, facts


def decode_budget(records: list[PairRecord], context: int) -> int:
    """Output bytes allowed per record: a fifth more than the longest reference, within the context."""
    longest = max(len(record_tokens(r.source, r.target, r.target_kind)) - len(r.source) - 2 for r in records)
    return min(int(longest * 1.2) + 16, context)


def evaluate(model, task: ConvertTask, test: list[PairRecord], args: argparse.Namespace,
             decode_batch: int) -> dict[str, Any]:
    """The conversion measures on ``test`` (greedy, cached; CUDA graphs on a GPU)."""
    started = time.time()
    fits = [record for record in test if len(record_tokens(record.source, record.target, record.target_kind)) - 1
            <= model.max_seq_len]
    report, _ = evaluate_conversion(model, task, test, max_new_bytes=decode_budget(test, model.max_seq_len),
                                    batch_size=decode_batch, fast=model.device.type == "cuda",
                                    abc2midi=str(args.abc2midi) if args.abc2midi else None)
    report.update(test_records_fitting=len(fits), eval_seconds=round(time.time() - started, 1))
    return report


def nottingham_task(direction: str, args: argparse.Namespace) -> dict[str, Any]:
    train_records, test_records = nottingham_records(args.data, direction, seed=0)
    test_records = test_records[: args.test_tunes]
    model, task, facts = train(direction, train_records, args, seq_len=args.context, batch_size=args.music_batch,
                               lr=args.lr)
    return {"task": direction, **facts, **evaluate(model, task, test_records, args, args.decode_batch)}


def cpu_records(count: int, stream: int, args: argparse.Namespace,
                exclude: set[bytes] = frozenset()) -> list[PairRecord]:
    pairs = cpusim.generate_records(count, args.seed, args.min_length, args.max_length, stream, args.cpu_trace)
    return [PairRecord(source, target, "cpu", "cpu-trace" if args.cpu_trace else "cpu-state", f"s{stream}-{index}")
            for index, (source, target) in enumerate(pairs) if source not in exclude]


def cpu_task(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    train_records = cpu_records(args.cpu_records, 0, args)
    test_records = cpu_records(args.cpu_test_records, 1, args, {record.source for record in train_records})
    generated = round(time.time() - started, 1)
    longest = max(len(record_tokens(r.source, r.target, r.target_kind)) - 1 for r in train_records)
    seq_len = -(-longest // 64) * 64
    model, task, facts = train("cpu", train_records, args, seq_len=seq_len, batch_size=args.cpu_batch, lr=args.lr)
    report = evaluate(model, task, test_records, args, args.cpu_decode_batch)
    return {"task": "cpu", "target": "trace" if args.cpu_trace else "final state", "generate_seconds": generated,
            **facts, **report}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / ".." / "shared" / "data" / "nottingham",
                        help="the Nottingham folder (ABC_cleaned/ and MIDI/*.mid are read)")
    parser.add_argument("--abc2midi", type=Path, default=None, help="abc2midi program (default: the one on PATH)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-convert",
                        help="folder for bench_convert.json (the table goes to stdout)")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "bench-convert-models",
                        help="folder for the trained models (replaced)")
    parser.add_argument("--tasks", nargs="+", default=["abc2midi", "midi2abc", "cpu"],
                        choices=["abc2midi", "midi2abc", "cpu"])
    parser.add_argument("--minutes", type=float, default=2.0, help="training time per model")
    parser.add_argument("--arch", default="flat")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--context", type=int, default=8192,
                        help="model context and Nottingham seq_len (97%% of ABC+MIDI records fit in 8192)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--music-batch", type=int, default=8, help="records per Nottingham training step")
    parser.add_argument("--test-tunes", type=int, default=None,
                        help="evaluate the first N test tunes (default: all 103)")
    parser.add_argument("--cpu-records", type=int, default=100_000, help="CPU training records")
    parser.add_argument("--cpu-test-records", type=int, default=2_000, help="held-out CPU records")
    parser.add_argument("--cpu-batch", type=int, default=64, help="records per CPU training step")
    parser.add_argument("--cpu-trace", action="store_true",
                        help="CPU targets are traces (each instruction's effect, then the final state), as "
                             "bGPT's data records the state after every instruction; the final state is scored")
    parser.add_argument("--min-length", type=int, default=1, help="fewest instructions per CPU program")
    parser.add_argument("--max-length", type=int, default=16, help="most instructions per CPU program")
    parser.add_argument("--seed", type=int, default=0, help="seed of the CPU records")
    parser.add_argument("--decode-batch", type=int, default=64, help="Nottingham rows decoded together")
    parser.add_argument("--cpu-decode-batch", type=int, default=256, help="CPU records decoded together")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    args.device = str(resolve_device(args.device))
    return args


def main() -> None:
    args = parse_args()
    started = time.time()
    for name in args.tasks:  # the models of an earlier run would be resumed, not retrained
        shutil.rmtree(args.runs / name, ignore_errors=True)
    rows = []
    for name in args.tasks:
        row = cpu_task(args) if name == "cpu" else nottingham_task(name, args)
        rows.append(row)
        print(f"{name}: done after {time.time() - started:.0f} s", flush=True)
    print_table(rows, ["task", "params", "steps", "train_seconds", "val_bits_per_byte", "records",
                       "target_bits_per_byte", "target_accuracy", "finished_rate", "exact_rate", "eval_seconds"],
                title="Conversion (greedy, cached decoding of held-out records)")
    music = [row for row in rows if row["task"] != "cpu"]
    if music:
        print_table(music, ["task", "records", "test_records_fitting", "parse_rate", "note_match_rate", "clean_rate",
                            "reference_parse_rate", "reference_clean_rate"], title="Music outputs")
    for row in rows:
        if row["task"] == "cpu":
            print_table([{"program_length": length, **values} for length, values in row["by_length"].items()],
                        ["program_length", "records", "byte_accuracy", "exact_state_rate"],
                        title=f"CPU state modelling ({row['target']} targets): final-state byte accuracy "
                              f"{row['byte_accuracy']:.6f} (target >= 0.9999), exact states "
                              f"{row['exact_state_rate']:.4f}"
                              + (f", effect bytes {row['effect_byte_accuracy']:.6f}"
                                 if row.get("effect_byte_accuracy") is not None else ""))
            print_table([{"part": part, **values} for part, values in row["byte_accuracy_by_part"].items()],
                        ["part", "bytes", "byte_accuracy"],
                        title="by part: a model that cannot copy fails the unchanged bytes, one that cannot compute the changed")
    total = round(time.time() - started, 1)
    print(f"\ntotal {total} s")
    write_json(args.out / "bench_convert.json",
               {"environment": describe_environment(args.device), "command": " ".join(sys.argv),
                "minutes_per_model": args.minutes, "total_seconds": total,
                "results": [{key: value for key, value in row.items()} for row in rows]})


if __name__ == "__main__":
    main()

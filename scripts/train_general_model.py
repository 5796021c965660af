#!/usr/bin/env python3
"""Train omnibyte's built-in general model on the mix of ``build_general_mix.py``, in one command.

    python scripts/train_general_model.py --mix runs/general-mix --out OUT [--minutes 6.5]

1. calibrates: a short ``omnibyte train`` on one kind of the mix measures steps per second, so
   the cosine schedule ends with the wall-clock budget (``--minutes``; ``--time-limit`` stops it
   in any case);
2. trains the flat model (``--preset general``) with ``omnibyte train`` on ``MIX/train``;
3. exports the best model by validation in bfloat16 to ``OUT/general/`` (``config.json``,
   ``model.safetensors``, ``PROVENANCE.json``) and refuses a model file over 16 MB;
4. scores the exported model on every held-out kind with ``omnibyte eval`` (bits/byte next to
   xz -9e and bzip2 -9 on the same files);
5. writes ``OUT/train.log``, ``OUT/metrics.jsonl`` (the training curve), ``OUT/loss_curve.png``
   and ``OUT/heldout_eval.json``: seven files in all.

Install the result into the package with ``python scripts/install_builtin_model.py OUT/general``.
A CPU smoke test: ``--minutes 0.2 --preset tiny --device cpu --seq-len 256 --batch-size 4
--heldout-limit-bytes 20000`` on a small mix.
"""
from __future__ import annotations

import argparse
import bz2
import datetime
import hashlib
import json
import lzma
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

MAX_MODEL_BYTES = 16_000_000  # the limit for the shipped weights ("at most 16 MB on disk")
SAFETY = 0.93  # share of the budget the schedule plans for: validation and saving take the rest


def omnibyte(arguments: list[str], log: Path | None = None, echo: bool = True) -> str:
    """Runs ``python -m omnibyte.cli ARGUMENTS`` with this checkout's package; its output goes,
    line by line as it comes, to ``log`` (so a run cut short keeps its log) and, with ``echo``,
    to the terminal; a failure stops the recipe with the command's last lines."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONUNBUFFERED", "1")
    command = [sys.executable, "-m", "omnibyte.cli", *arguments]
    print("$ omnibyte " + " ".join(arguments), flush=True)
    lines = []
    with open(log or os.devnull, "a") as handle:
        handle.write("$ omnibyte " + " ".join(arguments) + "\n")
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            lines.append(line)
            handle.write(line)
            handle.flush()
            if echo:
                print(line, end="", flush=True)
        code = process.wait()
    output = "".join(lines)
    if code != 0:
        if not echo:
            print(output[-4000:], file=sys.stderr)
        raise SystemExit(f"error: omnibyte {arguments[0]} failed (exit {code})")
    return output


def trained_steps(run: Path) -> int | None:
    from omnibyte.cli.common import trained_steps as steps

    return steps(run)


def read_metrics(path: Path) -> list[dict]:
    from omnibyte.train.metrics import read_metrics as read

    return read(path) if path.exists() else []


def model_options(args: argparse.Namespace) -> list[str]:
    return ["--preset", args.preset, "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
            "--lr", str(args.lr), "--device", args.device, "--seed", str(args.seed), "--no-progress",
            *(["--compile"] if args.compile else []), *sum((["--set", item] for item in args.set), [])]


def calibrate(args: argparse.Namespace, run_dir: Path, log: Path) -> float:
    """Training steps per second of this model and batch on this device, from a short run on
    the mix's largest kind folder (its first steps, which include start-up, left out)."""
    folders = sorted((p for p in (args.mix / "train").iterdir() if p.is_dir()),
                     key=lambda p: sum(f.stat().st_size for f in p.iterdir()))
    data = folders[len(folders) // 2]  # a middle-sized kind: enough windows, read quickly
    out = run_dir / "calibration"
    omnibyte(["train", str(data), "--out", str(out), *model_options(args), "--steps", str(args.calibration_steps),
              "--log-every", "5", "--eval-every", "0", "--save-every", "0", "--val-fraction", "0"], log)
    records = [r for r in read_metrics(out / "metrics.jsonl") if "bytes_per_s" in r]
    rates = [r["bytes_per_s"] for r in records[1:]] or [r["bytes_per_s"] for r in records]
    bytes_per_step = args.seq_len * args.batch_size
    return statistics.median(rates) / bytes_per_step


def export_bf16(run: Path, target: Path) -> dict:
    """The run's model (the best by validation) in bfloat16 to ``target``; returns its facts."""
    import torch

    from omnibyte.models.serialization import WEIGHTS_FILE, load_model, read_config, save_model

    model = load_model(run)
    document = read_config(run)
    weights = {name: tensor.detach().to(torch.bfloat16) for name, tensor in model.state_dict().items()}
    target.mkdir(parents=True, exist_ok=True)
    save_model(model, target, task=document["task"], step=document.get("step"), weights=weights)
    size = (target / WEIGHTS_FILE).stat().st_size
    return {"parameters": model.num_parameters(), "weights_bytes": size, "dtype": "bfloat16",
            "step": document.get("step"), "config": model.config.to_dict()}


def classic_bits(files: list[Path]) -> dict[str, float]:
    """xz -9e and bzip2 -9 bits/byte on the same files (each file coded on its own)."""
    raw = xz = bz = 0
    for path in files:
        data = path.read_bytes()
        raw += len(data)
        xz += len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
        bz += len(bz2.compress(data, 9))
    return {"xz -9e": 8 * xz / raw, "bzip2 -9": 8 * bz / raw} if raw else {}


def heldout_files(folder: Path, limit: int | None) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if limit is None:
        return files
    chosen, total = [], 0
    for path in files:
        if total >= limit:
            break
        chosen.append(path)
        total += path.stat().st_size
    return chosen


def evaluate_heldout(args: argparse.Namespace, model_dir: Path, log: Path) -> dict:
    """Bits/byte of the exported model per held-out kind, from one ``omnibyte eval --per-file``
    over every kind's files, with xz -9e and bzip2 -9 on the same files."""
    kinds = {folder.name: heldout_files(folder, args.heldout_limit_bytes)
             for folder in sorted(p for p in (args.mix / "heldout").iterdir() if p.is_dir())}
    files = [path for paths in kinds.values() for path in paths]
    output = omnibyte(["eval", *map(str, files), "--model", str(model_dir), "--device", args.device,
                       "--batch-size", str(args.eval_batch_size), "--json", "--per-file"], log, echo=False)
    by_file = json.loads(output[output.index("{"):])["by_file"]
    report = {}
    for kind, paths in kinds.items():
        rows = [by_file[str(path)] for path in paths if str(path) in by_file]
        total = sum(row["bytes"] for row in rows)
        if not total:
            continue
        bits = sum(row["bits_per_byte"] * row["bytes"] for row in rows) / total
        report[kind] = {"files": len(rows), "bytes": total, "bits_per_byte": bits, **classic_bits(paths)}
        print(f"  held-out {kind:<12} {bits:.4f} bits/byte (xz -9e {report[kind].get('xz -9e', float('nan')):.4f}, "
              f"{total:,} bytes)", flush=True)
    return report


def git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def device_description(device: str) -> str:
    import torch

    from omnibyte.devices import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda":
        return f"{torch.cuda.get_device_name(resolved)} (torch {torch.__version__})"
    import platform

    return f"{platform.processor() or platform.machine()} CPU (torch {torch.__version__})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--mix", type=Path, default=ROOT / "runs" / "general-mix",
                        help="output of build_general_mix.py (train/, heldout/, MANIFEST.json)")
    parser.add_argument("--out", type=Path, required=True, help="report folder; the model goes to OUT/general")
    parser.add_argument("--run-dir", type=Path, default=Path("/tmp/omnibyte-general-run"),
                        help="training runs (checkpoints: large, not part of the result)")
    parser.add_argument("--minutes", type=float, default=6.5, help="wall-clock budget of the main training")
    parser.add_argument("--preset", default="general", help="flat preset of the model")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model config override")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (start-up cost)")
    parser.add_argument("--calibration-steps", type=int, default=30)
    parser.add_argument("--evaluations", type=int, default=8, help="validations during training")
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--heldout-limit-bytes", type=int, default=None,
                        help="score only about this many bytes of each held-out kind (smoke tests)")
    parser.add_argument("--force", action="store_true", help="replace OUT/general and the run folder")
    args = parser.parse_args(argv)
    started = time.time()
    for needed in ("MANIFEST.json", "train", "heldout"):
        if not (args.mix / needed).exists():
            parser.error(f"--mix {args.mix} has no {needed}: run scripts/build_general_mix.py first")
    model_dir = args.out / "general"
    if model_dir.exists() and not args.force:
        parser.error(f"{model_dir} exists (use --force to replace it)")
    if args.run_dir.exists():
        if not args.force and any(args.run_dir.iterdir()):
            parser.error(f"--run-dir {args.run_dir} is not empty (use --force to replace it)")
        shutil.rmtree(args.run_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    if model_dir.exists():
        shutil.rmtree(model_dir)
    log = args.out / "train.log"
    log.write_text("")

    rate = calibrate(args, args.run_dir, log)
    seconds = args.minutes * 60
    steps = max(10, int(rate * seconds * SAFETY))
    print(f"calibrated: {rate:.2f} steps/s ({rate * args.seq_len * args.batch_size / 1e6:.2f} MB/s); "
          f"planning {steps:,} steps for {args.minutes:g} min", flush=True)
    run = args.run_dir / "main"
    train_arguments = ["train", str(args.mix / "train"), "--out", str(run), *model_options(args),
                       "--steps", str(steps), "--time-limit", str(seconds), "--val-fraction", "0.02",
                       "--eval-every", str(max(1, steps // args.evaluations)), "--eval-windows", "64",
                       "--save-every", "0", "--log-every", str(max(1, steps // 200))]
    train_started = time.time()
    omnibyte(train_arguments, log)
    train_seconds = time.time() - train_started

    facts = export_bf16(run, model_dir)
    if facts["weights_bytes"] > MAX_MODEL_BYTES:
        raise SystemExit(f"error: {model_dir}/model.safetensors is {facts['weights_bytes']:,} bytes, over the "
                         f"{MAX_MODEL_BYTES:,}-byte limit: pick a smaller --preset")
    heldout = evaluate_heldout(args, model_dir, log)

    records = read_metrics(run / "metrics.jsonl")
    train_records = [r for r in records if "bits_per_byte" in r]
    val_records = [r for r in records if "val_bits_per_byte" in r]
    for name in ("metrics.jsonl", "loss_curve.png"):
        if (run / name).exists():
            shutil.copyfile(run / name, args.out / name)
    mix_manifest = json.loads((args.mix / "MANIFEST.json").read_text())
    provenance = {
        "name": "general",
        "what": "omnibyte's built-in general model: a flat byte transformer trained on a broad mix of file kinds",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": git_commit(),
        "device": device_description(args.device),
        "recipe": "python scripts/train_general_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "train_command": "omnibyte " + " ".join(train_arguments),
        "seq_len": args.seq_len,
        "steps": trained_steps(run),  # where training stopped (the model is the best by validation: model.step)
        "planned_steps": steps,
        "train_seconds": round(train_seconds, 1),
        "final_train_bits_per_byte": train_records[-1]["bits_per_byte"] if train_records else None,
        "best_validation_bits_per_byte": min((r["val_bits_per_byte"] for r in val_records), default=None),
        "model": facts,
        "training_data": {
            "manifest_sha256": hashlib.sha256((args.mix / "MANIFEST.json").read_bytes()).hexdigest(),
            "train_sha256": mix_manifest["train_sha256"],
            "command": mix_manifest["command"],
            "files": mix_manifest["files"], "raw_bytes": mix_manifest["raw_bytes"],
            "kinds": {kind: {"files": s["files"], "raw_bytes": s["raw_bytes"], "sources": sorted(s["sources"])}
                      for kind, s in mix_manifest["kinds"].items()},
            "heldout_sha256": mix_manifest["heldout_sha256"],
        },
        "heldout_bits_per_byte": {kind: round(r["bits_per_byte"], 4) for kind, r in heldout.items()},
    }
    (model_dir / "PROVENANCE.json").write_text(json.dumps(provenance, indent=1) + "\n")
    (args.out / "heldout_eval.json").write_text(json.dumps({"model": str(model_dir), "heldout": heldout,
                                                            "provenance": provenance}, indent=1) + "\n")
    print(f"done in {time.time() - started:.0f} s: {facts['parameters']:,} parameters, "
          f"{facts['weights_bytes']:,} bytes of weights, step {provenance['steps']}, "
          f"best validation {provenance['best_validation_bits_per_byte']}; model in {model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

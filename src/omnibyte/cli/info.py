"""``omnibyte info``: describe a saved model (architecture, size, context, training progress)."""
from __future__ import annotations

import argparse
import json
from typing import Any

from omnibyte.cli.common import Subparsers, add_model_options, load_cli_model, saved_step, trained_steps
from omnibyte.models.base import ByteModel
from omnibyte.models.builtin import BUILTIN_NAME, is_builtin_dir, read_provenance
from omnibyte.models.blt.patching import PatchingConfig
from omnibyte.models.serialization import read_config


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("info", help="describe a saved model")
    add_model_options(parser, device=False, builtin=True)  # describing a model runs nothing: always on the CPU
    parser.add_argument("--json", action="store_true", help="print a JSON report instead of the table")
    parser.set_defaults(handler=run)


def model_summary(model: ByteModel) -> dict[str, Any]:
    """Architecture, parameter count, context, training FLOPs per byte and the config."""
    summary = {"arch": model.arch, "parameters": model.num_parameters(), "context": model.max_seq_len,
               "flops_per_byte": model.flops_per_byte(model.max_seq_len), "config": model.config.to_dict()}
    patching = getattr(model, "patching", None)  # the patched families (BLT) say where patches start
    if isinstance(patching, PatchingConfig):
        summary["patching"] = {**patching.to_dict(), "description": patching.describe()}
    return summary


def run(args: argparse.Namespace) -> int:
    summary = model_summary(load_cli_model(args, device="cpu", announce=False))  # it says the step itself
    summary["task"] = read_config(args.model)["task"]
    summary["saved_step"] = saved_step(args.model)  # the step the saved weights are from (a run's best)
    last = trained_steps(args.model)
    if last is not None:
        summary["trained_steps"] = last
    if is_builtin_dir(args.model):
        summary["builtin"] = BUILTIN_NAME
    summary["folder"] = str(args.model)
    provenance = read_provenance(args.model)  # where the weights came from (the built-in model has one)
    if provenance is not None:
        summary["provenance"] = provenance
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
    return 0


def print_summary(summary: dict[str, Any]) -> None:
    if "builtin" in summary:
        print(f"model         the built-in {summary['builtin']} model ({summary['folder']})")
    print(f"architecture  {summary['arch']}")
    options = ", ".join(f"{key}={value}" for key, value in summary["task"].items() if key != "name")
    print(f"task          {summary['task']['name']}" + (f" ({options})" if options else ""))
    print(f"parameters    {summary['parameters']:,}")
    print(f"context       {summary['context']:,} bytes")
    print(f"FLOPs/byte    {summary['flops_per_byte']:.3g} (training, at full context)")
    if "patching" in summary:
        print(f"patcher       {summary['patching']['description']}")
    if "trained_steps" in summary:
        print(f"trained steps {summary['trained_steps']:,}")
    step = summary["saved_step"]
    if step is not None:
        best = " (the best by validation)" if step != summary.get("trained_steps", step) else ""
        print(f"saved model   from step {step:,}{best}")
    else:
        print("saved model   step not recorded")
    for key, value in summary["config"].items():
        print(f"  {key:<22}{value}")
    if "provenance" in summary:
        print_provenance(summary["provenance"])


def print_provenance(provenance: dict[str, Any]) -> None:
    """Where the weights came from: data, recipe, date, commit, device (``PROVENANCE.json``)."""
    print("provenance")
    labels = {"date": "date", "device": "device", "git_commit": "commit", "recipe": "recipe", "steps": "steps",
              "train_seconds": "training seconds", "best_validation_bits_per_byte": "best validation"}
    for key, label in labels.items():
        if provenance.get(key) is not None:
            print(f"  {label:<22}{provenance[key]}")
    data = provenance.get("training_data")
    if isinstance(data, dict):
        kinds = data.get("kinds") if isinstance(data.get("kinds"), dict) else {}
        print(f"  {'training data':<22}{data.get('raw_bytes', 0):,} bytes in {data.get('files', 0):,} files, "
              f"{len(kinds)} kinds (manifest sha256 {str(data.get('manifest_sha256'))[:16]})")
        for kind, facts in kinds.items():
            if isinstance(facts, dict):
                print(f"    {kind:<20}{facts.get('raw_bytes', 0):>14,} bytes  {', '.join(facts.get('sources', []))}")
    heldout = provenance.get("heldout_bits_per_byte")
    if isinstance(heldout, dict) and heldout:
        print("  held-out bits/byte    " + ", ".join(f"{kind} {value}" for kind, value in heldout.items()))

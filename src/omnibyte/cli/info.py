"""``omnibyte info``: describe a saved model (architecture, size, context, training progress)."""
from __future__ import annotations

import argparse
import json
from typing import Any

from omnibyte.cli.common import Subparsers, add_model_options, load_cli_model, saved_step, trained_steps
from omnibyte.models.base import ByteModel
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
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)
    return 0


def print_summary(summary: dict[str, Any]) -> None:
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

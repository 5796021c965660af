"""``omnibyte detect``: what kind of data files hold and, with --segments, where the kind changes.

The CLI composes the two apps: ``apps.detect`` labels a whole file, ``apps.segment`` (which
builds on detect) splits a mixed stream. Neither app knows about the other's caller.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from omnibyte.apps.detect import Detection, detect
from omnibyte.apps.segment import segment
from omnibyte.cli.common import Subparsers, add_model_options, load_cli_model
from omnibyte.fileio import read_input

SUMMARY_WIDTH = 70  # evidence summaries are cut to this many characters in the table


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("detect", help="tell what kind of data files hold (and where kinds change)")
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument("--json", action="store_true", help="print a JSON report")
    parser.add_argument("--segments", action="store_true", help="split each file into segments of one kind")
    add_model_options(parser, required=False, model_help="model directory: add its surprisal as evidence",
                      device_help="device for --model: auto, cpu or cuda")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    contents = [read_input(path) for path in args.files]  # the first unreadable file ends the command
    model = load_cli_model(args) if args.model is not None else None
    reports = []
    for path, data in zip(args.files, contents):
        report: dict[str, Any] = {"file": str(path), "detection": detect(data, model)}
        if args.segments:
            report["segments"] = segment(data, model)
        reports.append(report)
    if args.json:
        print(json.dumps([{key: _jsonable(value) for key, value in report.items()} for report in reports], indent=2))
    else:
        print_table(reports, sys.stdout)
    return 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value.to_dict() if hasattr(value, "to_dict") else value


def print_table(reports: list[dict[str, Any]], out: TextIO) -> None:
    """One row per file (kind, confidence, size, evidence) and, with segments, one per segment."""
    width = max(4, *(len(report["file"]) for report in reports))
    print(f"{'file':<{width}}  {'kind':<7} {'conf':>5} {'size':>12}  evidence", file=out)
    for report in reports:
        found: Detection = report["detection"]
        summary = found.summary()
        if len(summary) > SUMMARY_WIDTH:
            summary = summary[:SUMMARY_WIDTH - 3] + "..."
        print(f"{report['file']:<{width}}  {found.kind:<7} {found.confidence:>5.2f} {found.size:>12,}  {summary}",
              file=out)
        for piece in report.get("segments", []):
            print(f"{'':<{width}}    {piece.start:>10,} .. {piece.end:<10,} {piece.kind:<7} {piece.confidence:.2f}",
                  file=out)

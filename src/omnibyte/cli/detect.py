"""``omnibyte detect``: what kind of data files hold and, with --segments, where the kind changes.

The CLI composes the two apps: ``apps.detect`` labels a whole file, ``apps.segment`` (which
builds on detect) splits a mixed stream. Neither app knows about the other's caller.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from omnibyte.apps.detect import Detection, detect
from omnibyte.apps.segment import segment
from omnibyte.cli.common import Subparsers, add_model_options, load_cli_model
from omnibyte.errors import OmnibyteError
from omnibyte.fileio import STDIO, read_input

SUMMARY_WIDTH = 70  # evidence summaries are cut to this many characters in the table


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("detect", help="tell what kind of data files hold (and where kinds change)")
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="files, or folders (every file below them, hidden ones skipped); - reads stdin")
    parser.add_argument("--json", action="store_true", help="print a JSON report instead of the table")
    parser.add_argument("--segments", action="store_true", help="split each file into segments of one kind")
    add_model_options(parser, required=False, bare_is_builtin=True,
                      model_help="model folder: show its surprisal (bits/byte) per file and use it as evidence")
    parser.set_defaults(handler=run)


def input_files(names: list[str]) -> list[str]:
    """The files to detect, in order: a folder stands for the regular files below it (sorted,
    hidden entries skipped, symlinked folders not followed); ``-`` is stdin. Missing paths
    are refused before any file is read."""
    files: list[str] = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            found = folder_files(path)
            if not found:
                raise OmnibyteError(f"{name} holds no files to detect")
            files += found
        elif name == STDIO or path.exists():  # a file, or a pipe such as <(command)
            files.append(name)
        else:
            raise OmnibyteError(f"cannot read {name}: No such file or directory")
    return files


def folder_files(folder: Path) -> list[str]:
    found = []
    for root, folders, names in os.walk(folder):
        folders[:] = sorted(entry for entry in folders if not entry.startswith("."))
        found += [os.path.join(root, entry) for entry in sorted(names) if not entry.startswith(".")]
    return [name for name in found if Path(name).is_file()]  # no sockets, fifos or broken links


def run(args: argparse.Namespace) -> int:
    files = input_files(args.files)
    model = load_cli_model(args) if args.model is not None else None
    reports = []
    for name in files:
        data = read_input(name)  # one file at a time: a folder of large files fits in memory
        report: dict[str, Any] = {"file": "stdin" if name == STDIO else name, "detection": detect(data, model)}
        if args.segments:
            report["segments"] = segment(data, model)
        reports.append(report)
    if args.json:
        print(json.dumps([{key: _jsonable(value) for key, value in report.items()} for report in reports], indent=2))
    else:
        print_table(reports, sys.stdout, with_model=model is not None)
    return 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value.to_dict() if hasattr(value, "to_dict") else value


def print_table(reports: list[dict[str, Any]], out: TextIO, with_model: bool = False) -> None:
    """One row per file (kind, confidence, size, the model's bits/byte with --model, evidence)
    and, with segments, one per segment."""
    width = max(4, *(len(report["file"]) for report in reports))
    model_column = f" {'bits/B':>6}" if with_model else ""
    print(f"{'file':<{width}}  {'kind':<7} {'conf':>5} {'size':>12}{model_column}  evidence", file=out)
    for report in reports:
        found: Detection = report["detection"]
        summary = found.summary()
        if len(summary) > SUMMARY_WIDTH:
            summary = summary[:SUMMARY_WIDTH - 3] + "..."
        bits = "" if not with_model else f" {'-':>6}" if found.model_bits_per_byte is None else (
            f" {found.model_bits_per_byte:>6.2f}")  # an empty file has no surprisal
        print(f"{report['file']:<{width}}  {found.kind:<7} {found.confidence:>5.2f} {found.size:>12,}{bits}  {summary}",
              file=out)
        for piece in report.get("segments", []):
            print(f"{'':<{width}}    {piece.start:>10,} .. {piece.end:<10,} {piece.kind:<7} {piece.confidence:.2f}",
                  file=out)

"""``omnibyte generate``: sample bytes from a model, for one or several prompts, several samples each.

Every (prompt, sample) pair is one row; all rows are generated in a single batched
``model.generate(list, ...)`` call. Row ``r`` uses seed ``--seed + r``, so sample K of a batched
run equals a run of that prompt alone with ``--seed`` seed + K. One sample to stdout streams as
it is sampled; several are printed one after the other under a ``==> sample K (prompt P) <==``
line, or written to numbered files.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from omnibyte.apps.detect import extension_for
from omnibyte.cli.common import Subparsers, add_model_options, check_at_least, load_cli_model
from omnibyte.errors import OmnibyteError
from omnibyte.fileio import (
    STDIO,
    check_writable,
    numbered_path,
    read_input,
    save_bytes,
    with_default_suffix,
    write_stdout,
)
from omnibyte.models.base import ByteModel


@dataclasses.dataclass(frozen=True)
class PromptSource:
    """One ``--prompt`` (UTF-8 text) or ``--prompt-file`` (a file's bytes; - is stdin).

    Both options append to one list, so prompts keep their command-line order however they mix.
    Files are read only when the prompts are needed, so a missing file is a one-line error."""

    text: str | None = None
    path: str | None = None

    def read(self) -> bytes:
        return self.text.encode("utf-8") if self.path is None else read_input(self.path)


def text_prompt(text: str) -> PromptSource:
    return PromptSource(text=text)


def file_prompt(path: str) -> PromptSource:
    return PromptSource(path=path)


@dataclasses.dataclass(frozen=True)
class Row:
    """One sample to generate: which prompt, its bytes, and the seed of the row (None: random)."""

    prompt_index: int
    prompt: bytes
    seed: int | None


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("generate", help="sample bytes from a model")
    add_model_options(parser)
    # both append to one list (``args.prompts``), so mixed prompts keep their order
    parser.add_argument("--prompt", dest="prompts", action="append", type=text_prompt, metavar="TEXT",
                        help="UTF-8 text to continue (repeat for several prompts)")
    parser.add_argument("--prompt-file", dest="prompts", action="append", type=file_prompt, metavar="FILE",
                        help="file whose bytes are a prompt; - reads stdin (repeatable)")
    parser.add_argument("--num-samples", type=int, default=1, metavar="N", help="samples per prompt (default 1)")
    parser.add_argument("--max-bytes", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None, help="seed of the first sample; sample K uses SEED + K")
    parser.add_argument("-o", "--output", default=STDIO,
                        help="output file (default: stdout); several samples go to FILE-0, FILE-1, ...")
    parser.add_argument("-f", "--force", action="store_true",
                        help="overwrite existing files when writing several samples")
    parser.set_defaults(handler=run)


def output_path_with_kind(name: str | Path, data: bytes) -> Path:
    """``name`` plus the extension of the detected kind of ``data`` when it has none."""
    return with_default_suffix(name, extension_for(data))


def sample_path(output: str | Path, index: int, data: bytes) -> Path:
    """Where sample ``index`` of several goes: ``out.txt`` -> ``out-3.txt``; ``out`` -> ``out-3.wav``."""
    return output_path_with_kind(numbered_path(output, index), data)


def check_options(args: argparse.Namespace) -> None:
    check_at_least("--max-bytes", args.max_bytes, 0)
    if args.temperature < 0:
        raise OmnibyteError("--temperature must not be negative")
    check_at_least("--num-samples", args.num_samples, 1)


def make_rows(args: argparse.Namespace) -> list[Row]:
    """Prompts x --num-samples rows, prompt-major; row ``r`` gets seed ``--seed + r``."""
    prompts = [source.read() for source in args.prompts or [PromptSource(text="")]]
    pairs = [(index, prompt) for index, prompt in enumerate(prompts) for _ in range(args.num_samples)]
    return [Row(index, prompt, None if args.seed is None else args.seed + row)
            for row, (index, prompt) in enumerate(pairs)]


def refuse_existing_outputs_early(args: argparse.Namespace, count: int) -> None:
    """With a suffix on FILE the numbered names do not depend on the samples: refuse to
    overwrite before spending any time generating."""
    if args.output != STDIO and Path(args.output).suffix:
        for index in range(count):
            check_writable(numbered_path(args.output, index), force=args.force)


def run(args: argparse.Namespace) -> int:
    check_options(args)
    rows = make_rows(args)  # prompt files are read before the model loads: a typo fails fast
    if len(rows) > 1:
        refuse_existing_outputs_early(args, len(rows))
    model = load_cli_model(args)
    options = dict(max_new_bytes=args.max_bytes, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, fast=model.device.type == "cuda")  # CUDA-graph decoding where it exists
    try:
        if len(rows) == 1 and args.output == STDIO:
            stream_one(model, rows[0], options)
            return 0
        samples = model.generate([row.prompt for row in rows], seed=_seeds(rows), **options)
    except ValueError as error:  # e.g. a prompt longer than the model's context
        raise OmnibyteError(str(error)) from None
    if len(rows) == 1:
        write_one(args.output, samples[0])
    elif args.output == STDIO:
        print_several(rows, samples)
    else:
        write_several(args.output, samples, force=args.force)
    return 0


def _seeds(rows: list[Row]) -> list[int] | None:
    """One seed per row, or None for random rows (a seed is given for all rows or for none)."""
    return None if rows[0].seed is None else [row.seed for row in rows]


def stream_one(model: ByteModel, row: Row, options: dict[str, Any]) -> None:
    """Write the sample to stdout byte by byte, as it is sampled."""
    for piece in model.stream(row.prompt, seed=row.seed, **options):
        write_stdout(piece)


def write_one(output: str, data: bytes) -> None:
    """One sample to FILE (plus the detected kind's extension when FILE has none), as always."""
    path = output_path_with_kind(output, data)
    save_bytes(path, data)
    print(f"wrote {len(data):,} bytes to {path}", file=sys.stderr)


def print_several(rows: list[Row], samples: list[bytes]) -> None:
    """Every sample on stdout under a ``==> sample K (prompt P) <==`` line, each ended by a newline."""
    for index, (row, data) in enumerate(zip(rows, samples)):
        write_stdout(f"==> sample {index} (prompt {row.prompt_index}) <==\n".encode() + data + b"\n")


def write_several(output: str, samples: list[bytes], force: bool) -> None:
    """Sample K to FILE-K, each atomically; nothing is written if any target exists without --force."""
    paths = [sample_path(output, index, data) for index, data in enumerate(samples)]
    for path in paths:
        check_writable(path, force=force)
    for path, data in zip(paths, samples):
        save_bytes(path, data)
        print(f"wrote {len(data):,} bytes to {path}", file=sys.stderr)

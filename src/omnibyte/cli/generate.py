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
import os
import sys
from pathlib import Path
from typing import Any

from omnibyte.apps.classify import refuse_classifier
from omnibyte.apps.detect import extension_for
from omnibyte.cli.common import (
    Subparsers,
    add_model_options,
    check_output_file,
    int_in,
    load_cli_model,
    non_negative_int,
    non_negative_real,
    positive_int,
    real_in,
    seed_int,
)
from omnibyte.errors import OmnibyteError
from omnibyte.fileio import STDIO, numbered_path, read_input, save_bytes, with_default_suffix, write_stdout
from omnibyte.models.base import ByteModel


@dataclasses.dataclass(frozen=True)
class PromptSource:
    """One ``--prompt`` (its bytes) or ``--prompt-file`` (a file's bytes; - is stdin).

    Both options append to one list, so prompts keep their command-line order however they mix.
    Files are read only when the prompts are needed, so a missing file is a one-line error."""

    text: bytes | None = None
    path: str | None = None

    def read(self) -> bytes:
        return self.text if self.path is None else read_input(self.path)


def text_prompt(text: str) -> PromptSource:
    """The argument's bytes as the OS passed them: UTF-8 text, or any other bytes (Python
    keeps non-UTF-8 arguments as surrogate escapes, which ``os.fsencode`` turns back)."""
    try:
        return PromptSource(text=os.fsencode(text))
    except UnicodeEncodeError:  # a lone surrogate from a Python caller: no bytes stand behind it
        raise argparse.ArgumentTypeError("not valid text; put the bytes in a file and use --prompt-file") from None


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
    add_model_options(parser, builtin=True)
    # both append to one list (``args.prompts``), so mixed prompts keep their order
    parser.add_argument("--prompt", dest="prompts", action="append", type=text_prompt, metavar="TEXT",
                        help="text to continue, as the bytes given (repeat for several prompts)")
    parser.add_argument("--prompt-file", dest="prompts", action="append", type=file_prompt, metavar="FILE",
                        help="file whose bytes are a prompt; - reads stdin (repeatable)")
    parser.add_argument("--num-samples", type=positive_int, default=1, metavar="N", help="samples per prompt")
    parser.add_argument("--max-bytes", type=non_negative_int, default=256, metavar="N",
                        help="bytes to generate after each prompt (prompt + N must fit the model's context)")
    parser.add_argument("--temperature", type=non_negative_real, default=1.0, metavar="T",
                        help="sampling temperature; 0 is greedy")
    parser.add_argument("--top-k", type=int_in(1, 256), default=None, metavar="K",
                        help="sample among the K most likely bytes only (default: all 256)")
    parser.add_argument("--top-p", type=real_in(0.0, 1.0, include_low=False), default=None, metavar="P",
                        help="sample among the most likely bytes whose probabilities add up to P (default: 1)")
    parser.add_argument("--seed", type=seed_int, default=None, metavar="S",
                        help="seed of the first sample; sample K uses S + K (default: random)")
    parser.add_argument("--speculative", action="store_true",
                        help="draft bytes from the context and verify several per model call: the same "
                             "sample (same seed, same bytes), faster on repetitive text; families "
                             "without support decode plainly")
    parser.add_argument("--compile", action="store_true",
                        help="compile the decoder's step with torch.compile before decoding: faster steps "
                             "for small models, after a compilation of seconds to a minute in every run, so "
                             "it pays only for long samples; the sample agrees with the plain one to float "
                             "rounding")
    parser.add_argument("-o", "--output", default=STDIO, metavar="FILE",
                        help="output file (- is stdout); several samples go to FILE-0, FILE-1, ...; "
                             "a FILE without an extension gets the detected kind's")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite existing output files")
    parser.set_defaults(handler=run)


def output_path_with_kind(name: str | Path, data: bytes) -> Path:
    """``name`` plus the extension of the detected kind of ``data`` when it has none."""
    return with_default_suffix(name, extension_for(data))


def sample_path(output: str | Path, index: int, data: bytes) -> Path:
    """Where sample ``index`` of several goes: ``out.txt`` -> ``out-3.txt``; ``out`` -> ``out-3.wav``."""
    return output_path_with_kind(numbered_path(output, index), data)


def make_rows(args: argparse.Namespace) -> list[Row]:
    """Prompts x --num-samples rows, prompt-major; row ``r`` gets seed ``--seed + r``."""
    prompts = [source.read() for source in args.prompts or [PromptSource(text=b"")]]
    pairs = [(index, prompt) for index, prompt in enumerate(prompts) for _ in range(args.num_samples)]
    return [Row(index, prompt, None if args.seed is None else args.seed + row)
            for row, (index, prompt) in enumerate(pairs)]


def check_outputs(args: argparse.Namespace, count: int) -> None:
    """Refuse, before the model loads, outputs that cannot be written or would be overwritten
    without --force. A FILE without a suffix gets the samples' detected kind as its suffix, so
    those names are checked again when the samples exist."""
    if args.output == STDIO:
        return
    names = [Path(args.output)] if count == 1 else [numbered_path(args.output, index) for index in range(count)]
    for name in names:  # without a suffix, only the folder can be checked now
        check_output_file(name, force=args.force or not name.suffix, option="-o")


def run(args: argparse.Namespace) -> int:
    rows = make_rows(args)  # prompt files are read before the model loads: a typo fails fast
    check_outputs(args, len(rows))
    refuse_classifier(args.model, "generate")
    model = load_cli_model(args)
    options = dict(max_new_bytes=args.max_bytes, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, speculative=args.speculative, compile=args.compile,
                   # CUDA-graph decoding where it exists; static-shape steps wherever they compile
                   fast=model.device.type == "cuda" or args.compile)
    try:
        if len(rows) == 1 and args.output == STDIO:
            stream_one(model, rows[0], options)
            return 0
        samples = model.generate([row.prompt for row in rows], seed=_seeds(rows), **options)
    except ValueError as error:  # e.g. a prompt longer than the model's context
        raise OmnibyteError(str(error)) from None
    if len(rows) == 1:
        write_one(args.output, samples[0], force=args.force)
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


def write_one(output: str, data: bytes, force: bool) -> None:
    """One sample to FILE (plus the detected kind's extension when FILE has none), atomically."""
    path = output_path_with_kind(output, data)
    check_output_file(path, force=force, option="-o")
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
        check_output_file(path, force=force, option="-o")
    for path, data in zip(paths, samples):
        save_bytes(path, data)
        print(f"wrote {len(data):,} bytes to {path}", file=sys.stderr)

"""``omnibyte media to-bmp|to-wav``: standardise images and audio as bGPT does."""
from __future__ import annotations

import argparse
from pathlib import Path

from omnibyte.cli.common import Subparsers, check_output_file
from omnibyte.errors import OmnibyteError
from omnibyte.fileio import atomic_write_bytes
from omnibyte.media import audio_to_wav, image_to_bmp

CONVERSIONS = {  # subcommand -> (converter, output suffix, what it makes)
    "to-bmp": (image_to_bmp, ".bmp", "images -> 32x32 24-bit RGB BMP"),
    "to-wav": (audio_to_wav, ".wav", "WAV audio -> 8,000 Hz mono 8-bit WAV of exactly 1 second"),
}


def add_parser(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser("media", help="convert images to 32x32 BMP and audio to 1 s 8 kHz WAV",
                                   description="Standardise media files the way bGPT feeds them to a byte model.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION",
                                    help="to-bmp (images) or to-wav (audio)")
    for name, (_, suffix, text) in CONVERSIONS.items():
        action = actions.add_parser(name, help=text, description=text.capitalize() + ".")
        action.add_argument("inputs", nargs="+", metavar="IN", help="input files")
        action.add_argument("-o", "--out", required=True, type=Path, metavar="DIR",
                            help=f"folder for the outputs (NAME{suffix} for input NAME.*; created if missing)")
        action.add_argument("--force", action="store_true", help="overwrite existing outputs")
        action.set_defaults(handler=run)


def output_paths(inputs: list[str], folder: Path, suffix: str) -> list[Path]:
    """One output per input, named after it; two inputs with the same stem are refused."""
    paths = [folder / (Path(name).stem + suffix) for name in inputs]
    seen: dict[Path, str] = {}
    for name, path in zip(inputs, paths):
        if path in seen:
            raise OmnibyteError(f"{seen[path]} and {name} would both be written to {path}")
        seen[path] = name
    return paths


def run(args: argparse.Namespace) -> int:
    convert, suffix, _ = CONVERSIONS[args.action]
    if args.out.exists() and not args.out.is_dir():
        raise OmnibyteError(f"--out {args.out} is a file, not a folder")
    targets = output_paths(args.inputs, args.out, suffix)
    if args.out.is_dir():
        for target in targets:  # every output checked before anything is written
            check_output_file(target, force=args.force)
    converted = [convert(name) for name in args.inputs]  # every input read before anything is written
    for target, data in zip(targets, converted):
        atomic_write_bytes(target, data)
        print(f"{target} ({len(data):,} bytes)")
    return 0

"""``omnibyte compress`` and ``omnibyte decompress``: lossless coding of files with a model.

The coding itself is ``omnibyte.apps.compress``; this module names outputs, loads the model on
the device the stream needs, and reports progress and ratios on stderr.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from omnibyte.apps import container
from omnibyte.apps.compress import DEFAULT_BATCH_SIZE, SUFFIX, compress, decompress, model_fingerprint
from omnibyte.cli.common import Subparsers, add_model_options, load_cli_model
from omnibyte.errors import OmnibyteError
from omnibyte.fileio import STDIO, read_input, write_output
from omnibyte.models.base import ByteModel

# ratio_of(bytes done, compressed bits so far or None) -> the text shown after the progress bar
RatioText = Callable[[int, "int | None"], str]


def add_parser(subparsers: Subparsers) -> None:
    compress_parser = subparsers.add_parser("compress", help="compress files losslessly with a model")
    _add_common(compress_parser)
    compress_parser.add_argument("--chunk-size", type=int, default=None,
                                 help="bytes per independently coded chunk (default: 64 KiB or the model's context)")
    compress_parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                                 help="chunks coded together as one batch (more is faster on a GPU)")
    compress_parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA), float32, bfloat16, float16")
    compress_parser.add_argument("--portable", action="store_true",
                                 help="code on the CPU in float32, so any CPU machine can decode (slow)")
    compress_parser.set_defaults(handler=run_compress)
    decompress_parser = subparsers.add_parser("decompress", help="restore files made by omnibyte compress")
    _add_common(decompress_parser)
    decompress_parser.set_defaults(handler=run_decompress)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="input files; - reads stdin")
    # no --device means: auto for compress, the stream's own device for decompress
    add_model_options(parser, device_default=None)
    parser.add_argument("-o", "--output", default=None,
                        help="output file (- for stdout); a folder when there are several inputs")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite existing output files")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")


def output_for(name: str, args: argparse.Namespace, compressing: bool) -> str:
    """Where the result for input ``name`` goes ('-' is stdout)."""
    if args.output is not None and len(args.files) == 1:
        return args.output
    if name == STDIO:
        if args.output is not None and args.output != STDIO:
            return str(Path(args.output) / ("stdin" + (SUFFIX if compressing else "")))
        return STDIO
    path = Path(name)
    if compressing:
        target = path.with_name(path.name + SUFFIX)
    elif path.suffix == SUFFIX:
        target = path.with_suffix("")
    else:
        raise OmnibyteError(f"{name} does not end in {SUFFIX}; name the output with -o")
    if args.output is not None:
        if args.output == STDIO:
            raise OmnibyteError("several inputs cannot all go to stdout")
        target = Path(args.output) / target.name
    return str(target)


def _progress_bar(args: argparse.Namespace, name: str, total: int, ratio_of: RatioText):
    """tqdm bar in KB/s with the running ratio; off for --quiet and when stderr is not a terminal."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=False,
               disable=True if args.quiet else None, file=sys.stderr)
    done = 0

    def update(step_bytes: int, bits: int | None) -> None:
        nonlocal done
        done += step_bytes
        bar.update(step_bytes)
        if not bar.disable:
            bar.set_postfix_str(ratio_of(done, bits), refresh=False)

    return bar, update


def _load_coding_model(args: argparse.Namespace, device: str) -> tuple[ByteModel, bytes]:
    """The model and its fingerprint; a stream coded on CUDA needs CUDA to decode."""
    if device == "cuda" and not torch.cuda.is_available():
        raise OmnibyteError("this needs a CUDA GPU (streams made on cuda decode only on one; "
                            "compress with --portable for CPU decoding)")
    model = load_cli_model(args, device=device)
    return model, model_fingerprint(model)


def _summary(args: argparse.Namespace, name: str, original: int, compressed: int, seconds: float) -> None:
    if args.quiet:
        return
    ratio = original / compressed if compressed else float("inf")
    bits = 8 * compressed / original if original else 0.0
    print(f"{name}: {original:,} -> {compressed:,} bytes ({ratio:.2f}x, {bits:.3f} bits/byte) "
          f"in {seconds:.1f} s ({original / 1024 / max(seconds, 1e-9):.1f} KB/s)", file=sys.stderr)


def run_compress(args: argparse.Namespace) -> int:
    device = "cpu" if args.portable else (args.device or "auto")
    if args.portable and args.device not in (None, "cpu"):
        raise OmnibyteError("--portable codes on the CPU; drop --device")
    dtype = "float32" if args.portable else args.dtype
    model, fingerprint = _load_coding_model(args, device)
    for name in args.files:
        target = output_for(name, args, compressing=True)
        data = read_input(name)
        bar, update = _progress_bar(args, name, len(data),
                                    lambda done, bits: f"ratio {8 * done / max(bits or 1, 1):.2f}x")
        start = time.perf_counter()
        with bar:
            blob = compress(data, model, args.chunk_size, args.batch_size, dtype=dtype,
                            progress=update, fingerprint=fingerprint)
        write_output(target, blob, force=args.force, source=name)
        _summary(args, name, len(data), len(blob), time.perf_counter() - start)
    return 0


def run_decompress(args: argparse.Namespace) -> int:
    blobs = [(name, read_input(name)) for name in args.files]
    headers = [container.unpack(blob) for _, blob in blobs]  # reject bad streams before loading anything
    devices = {header.settings.device for header in headers}
    device = args.device or (devices.pop() if len(devices) == 1 else "auto")
    model, fingerprint = _load_coding_model(args, device)
    for (name, blob), header in zip(blobs, headers):
        target = output_for(name, args, compressing=False)
        ratio = f"ratio {header.original_size / max(len(blob), 1):.2f}x"
        bar, update = _progress_bar(args, name, header.original_size, lambda done, bits: ratio)
        start = time.perf_counter()
        with bar:
            data = decompress(blob, model, progress=update, fingerprint=fingerprint)
        write_output(target, data, force=args.force, source=name)
        _summary(args, name, len(data), len(blob), time.perf_counter() - start)
    return 0

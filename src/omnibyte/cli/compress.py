"""``omnibyte compress`` and ``omnibyte decompress``: lossless coding of files with a model.

The coding itself is ``omnibyte.apps.compress``; this module names outputs, checks every
input and output before the model is loaded, loads the model on the device the stream needs,
and reports progress and ratios on stderr. Files are written atomically (a temporary file
renamed into place), so a failure never leaves a partial output.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from omnibyte.apps import container
from omnibyte.apps.compress import (DEFAULT_ADAPT_BLOCK, DEFAULT_ADAPT_LR, DEFAULT_ROWS, MAX_BATCH_SIZE, NUMERICS,
                                    SUFFIX, adapt_settings, check_builtin_name, check_device, compress,
                                    compress_adapted_or_plain, decompress,
                                    model_fingerprint, resolve_numerics,
                                    scratch_model)
from omnibyte.cli.common import (
    BATCH_SIZE_HELP,
    BUILTIN,
    BUILTIN_HELP,
    Subparsers,
    add_allow_large_option,
    check_output_file,
    device_name,
    int_in,
    load_cli_model,
    real_in,
    seed_int,
)
from omnibyte.errors import OmnibyteError
from omnibyte.fileio import STDIO, check_output_folder, check_writable, read_input, write_output
from omnibyte.models.base import ByteModel
from omnibyte.models.integer import integer_model
from omnibyte.models.builtin import BUILTIN_NAME, is_builtin_dir, provenance_seq_len, require_builtin_model_dir

# ratio_of(bytes done, compressed bits so far or None) -> the text shown after the progress bar
RatioText = Callable[[int, "int | None"], str]
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def add_parser(subparsers: Subparsers) -> None:
    compress_parser = subparsers.add_parser(
        "compress", help="compress files losslessly with a model",
        description="Compress files losslessly with a model (range coding of its next-byte probabilities). "
                    "Chunks the model cannot shrink are stored raw, so no input grows by more than a few "
                    "bytes per chunk (docs/compression.md).")
    _add_common(compress_parser, compressing=True)
    compress_parser.add_argument("--chunk-size", type=int_in(1), default=None, metavar="BYTES",
                                 help="bytes per independently coded chunk (default: picked from the input size "
                                      "and the device, at most what the model was trained on)")
    compress_parser.add_argument("--batch-size", type=int_in(1, MAX_BATCH_SIZE), default=None,
                                 metavar="N", help=BATCH_SIZE_HELP + "; here each chunk is one sequence (default: "
                                 f"picked with the chunk size, at most {DEFAULT_ROWS['cpu']} on the CPU and "
                                 f"{DEFAULT_ROWS['cuda']} on CUDA)")
    compress_parser.add_argument("--adapt", action="store_true",
                                 help="keep training the model on the bytes already coded (online adaptation; "
                                      "decompress repeats the same updates). With a trained model the input is "
                                      "also coded without adaptation, and the smaller stream is kept")
    compress_parser.add_argument("--adapt-always", action="store_true",
                                 help="with --adapt: keep the adapted stream even when coding without adaptation "
                                      "is smaller (one pass instead of two)")
    compress_parser.add_argument("--adapt-lr", type=real_in(0.0, 1.0, include_low=False), default=None,
                                 metavar="LR", help="learning rate of the adaptation (Adam; default: "
                                 f"{DEFAULT_ADAPT_LR['trained']:g} for a trained model, "
                                 f"{DEFAULT_ADAPT_LR['scratch']:g} from scratch)")
    compress_parser.add_argument("--adapt-block", type=int_in(1, 1 << 24), default=None, metavar="BYTES",
                                 help=f"bytes of every row between two updates (default: {DEFAULT_ADAPT_BLOCK})")
    compress_parser.add_argument("--mix", action=argparse.BooleanOptionalAction, default=None,
                                 help="with --adapt: mix the model's probabilities with counts of the input's own "
                                      "contexts (default: on with --model none, off with a trained model; "
                                      "docs/compression.md)")
    compress_parser.add_argument("--arch", default=None, metavar="NAME",
                                 help="with --model none: the architecture to build (default: flat)")
    compress_parser.add_argument("--preset", default=None, metavar="NAME",
                                 help="with --model none: the size preset to build (e.g. tiny)")
    compress_parser.add_argument("--seed", type=seed_int, default=None,
                                 help="with --model none: the seed of the initial weights (default: 0)")
    compress_parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                                 help="arithmetic of the model while coding: auto is bfloat16 on CUDA, float32 "
                                      "on the CPU (the only one there)")
    compress_parser.add_argument("--portable", action="store_true",
                                 help="code on the CPU in float32, so any CPU machine can decode (slow)")
    compress_parser.add_argument("--numerics", default="auto", choices=("auto", *NUMERICS),
                                 help="float: the model's own arithmetic, decodes only on the same device type "
                                      "and dtype; integer (flat models): exact integer arithmetic, the stream "
                                      "decodes on any CPU or GPU (no --adapt); auto (default): integer for the "
                                      "built-in model without --adapt, else float")
    compress_parser.set_defaults(handler=run_compress)
    decompress_parser = subparsers.add_parser(
        "decompress", help="restore files made by omnibyte compress",
        description="Restore files made by omnibyte compress, with the same model; the result is checked "
                    "against the original's digest before anything is written.")
    _add_common(decompress_parser)
    decompress_parser.set_defaults(handler=run_decompress)


def _add_common(parser: argparse.ArgumentParser, compressing: bool = False) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="input files; - reads stdin")
    if compressing:
        parser.add_argument("--model", default=BUILTIN, metavar="DIR",
                            help="model folder (a saved model or a training run), or none: a freshly "
                                 f"initialised model (--preset, --arch, --seed) that learns as it codes {BUILTIN_HELP}")
    else:
        parser.add_argument("--model", type=Path, default=None, metavar="DIR",
                            help="the model the streams were made with (not needed for streams made with "
                                 "the built-in model or --model none: they say what to use)")
    add_allow_large_option(parser)
    # no --device means: auto for compress, the stream's own device for decompress
    parser.add_argument("--device", default=None, type=device_name,
                        help="where the model runs: auto, cpu, cuda or cuda:N (default: auto for "
                             "compress, the stream's own device for decompress)")
    parser.add_argument("-o", "--output", default=None, metavar="PATH",
                        help="output file (- for stdout); a folder when there are several inputs (default: "
                             "next to each input, FILE.omb for compress, FILE without .omb for decompress)")
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


def check_inputs(args: argparse.Namespace) -> None:
    """Every input is a readable file (or stdin, named once), before any work."""
    if args.files.count(STDIO) > 1:
        raise OmnibyteError("stdin (-) can be named only once")
    for name in args.files:
        if name == STDIO:
            continue
        path = Path(name)
        if path.is_dir():
            raise OmnibyteError(f"{name} is a folder, not a file")
        if not path.is_file():
            raise OmnibyteError(f"cannot read {name}: " + ("not a regular file" if path.exists()
                                                          else "No such file or directory"))


def plan_outputs(args: argparse.Namespace, compressing: bool) -> list[tuple[str, str]]:
    """(input, output) for every input, every output checked before any work: not a folder, in
    an existing folder, not an input, and (without --force) not an existing file; two inputs
    never share an output."""
    pairs = [(name, output_for(name, args, compressing)) for name in args.files]
    several = len(args.files) > 1
    folder_missing = False
    if several and args.output is not None:
        check_output_folder(args.output, "-o")
        folder_missing = not Path(args.output).is_dir()  # created when the first file is written
    seen: dict[str, str] = {}
    for name, target in pairs:
        if target == STDIO:
            if STDIO in seen:
                raise OmnibyteError(f"{seen[STDIO]} and {name} would both be written to stdout")
            seen[STDIO] = name
            continue
        key = str(Path(target).resolve())
        if key in seen:
            raise OmnibyteError(f"{seen[key]} and {name} would both be written to {target}")
        seen[key] = name
        if Path(target).is_dir():
            raise OmnibyteError(f"output {target} is a folder; name a file")
        check_writable(target, force=args.force, source=name)  # never an input, even with --force
        if not folder_missing:
            check_output_file(target, force=args.force)
    return pairs


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
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise OmnibyteError("this needs a CUDA GPU (streams made on cuda with float numerics decode only on "
                            "one; compress with --numerics integer or --portable for CPU decoding)")
    model = load_cli_model(args, device=device)
    return model, model_fingerprint(model)


def _summary(args: argparse.Namespace, name: str, original: int, compressed: int, seconds: float,
             note: str = "") -> None:
    if args.quiet:
        return
    ratio = original / compressed if compressed else float("inf")
    bits = 8 * compressed / original if original else 0.0
    print(f"{name}: {original:,} -> {compressed:,} bytes ({ratio:.2f}x, {bits:.3f} bits/byte) "
          f"in {seconds:.1f} s ({original / 1024 / max(seconds, 1e-9):.1f} KB/s{note})", file=sys.stderr)


def _ratio_text(done: int, bits: int | None) -> str:
    return f"ratio {8 * done / bits:.2f}x" if bits else ""


SCRATCH = "none"  # --model none: a freshly initialised model


def scratch_options(args: argparse.Namespace):
    """The from-scratch recipe of ``--model none`` (None for a model folder); the options that
    only make sense with one of the two are refused with the other."""
    if args.model != SCRATCH:
        given = [name for name in ("preset", "arch", "seed") if getattr(args, name) is not None]
        if given:
            raise OmnibyteError(f"--{given[0]} builds a model from scratch: use it with --model none, "
                                f"not with a model folder")
        return None
    if args.preset is None:
        raise OmnibyteError("--model none needs --preset NAME (the size of the model to build, e.g. tiny)")
    return scratch_model(args.arch or "flat", args.preset, 0 if args.seed is None else args.seed)


def adapt_options(args: argparse.Namespace, scratch: bool):
    """The adaptation schedule (None without --adapt); a model from scratch always adapts."""
    if not (args.adapt or scratch):
        for option in ("adapt_lr", "adapt_block", "adapt_always"):
            if getattr(args, option) not in (None, False):
                raise OmnibyteError(f"--{option.replace('_', '-')} sets up --adapt: add --adapt")
        if args.mix is not None:
            raise OmnibyteError(f"--{'' if args.mix else 'no-'}mix sets up --adapt: add --adapt")
        return None
    return adapt_settings(args.adapt_lr, args.adapt_block, scratch=scratch)


def trained_seq_len(directory: Path) -> int | None:
    """The sequence length a run was trained with: ``train_config.json`` in the run folder (or,
    for its ``best/`` model, the run folder above it), or a model's ``PROVENANCE.json`` (the
    built-in model); None when unknown."""
    import json

    directory = Path(directory)
    recorded = provenance_seq_len(directory)
    if recorded is not None:
        return recorded
    folders = [directory, directory.parent] if directory.name == "best" else [directory]
    for folder in folders:
        try:
            value = json.loads((folder / "train_config.json").read_text()).get("seq_len")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def run_compress(args: argparse.Namespace) -> int:
    device = "cpu" if args.portable else (args.device or "auto")
    if args.portable and args.device not in (None, "cpu"):
        raise OmnibyteError("--portable codes on the CPU; drop --device")
    if args.portable and args.dtype not in ("auto", "float32"):
        raise OmnibyteError("--portable codes in float32; drop --dtype")
    dtype = "float32" if args.portable else args.dtype
    if args.numerics == "integer":
        if args.portable:
            raise OmnibyteError("--portable is float numerics on the CPU; --numerics integer streams decode on "
                                "any device already: drop --portable")
        if args.dtype != "auto":
            raise OmnibyteError(f"--dtype {args.dtype} applies to float numerics; --numerics integer has no dtype")
        if args.adapt or args.model == SCRATCH:
            raise OmnibyteError("--numerics integer does not adapt: drop --adapt (and --model none, which "
                                "always adapts)")
    recipe = scratch_options(args)
    adapt = adapt_options(args, scratch=recipe is not None)
    check_inputs(args)
    pairs = plan_outputs(args, compressing=True)
    stdin = read_input(STDIO) if STDIO in args.files else None  # a closed stdin fails here, before the model
    if recipe is not None:  # built by compress from the recipe, which the container records
        model, fingerprint, seq_len = recipe, None, None
        device = _scratch_device(device)
    else:
        args.model = Path(args.model)
        model, fingerprint = _load_coding_model(args, device)
        seq_len = trained_seq_len(args.model)
    builtin = BUILTIN_NAME if recipe is None and is_builtin_dir(args.model) else None  # the stream names it
    numerics = resolve_numerics(args.numerics, builtin, adapt)
    if numerics == "integer" and recipe is None:  # quantized once for every file
        model = integer_model(model)
    both_ways = adapt is not None and recipe is None and not args.adapt_always
    for name, target in pairs:
        data = stdin if name == STDIO else read_input(name)
        options = dict(chunk_size=args.chunk_size, batch_size=args.batch_size, dtype=dtype, train_seq_len=seq_len,
                       device=device, builtin=builtin, mix=args.mix)
        start = time.perf_counter()
        kept = ""
        if both_ways:  # the plain stream first, then the adapted one; the smaller is kept
            plain_bar, plain_update = _progress_bar(args, f"{name} (without adapting)", len(data), _ratio_text)
            bar, update = _progress_bar(args, f"{name} (adapting)", len(data), _ratio_text)
            with plain_bar, bar:
                blob, adapted = compress_adapted_or_plain(data, model, adapt, plain_progress=plain_update,
                                                          progress=update, fingerprint=fingerprint,
                                                          numerics=args.numerics, **options)
            kept = "; adapted" if adapted else "; kept without adapting: smaller than adapted"
        else:
            bar, update = _progress_bar(args, name, len(data), _ratio_text)
            with bar:
                blob = compress(data, model, progress=update, fingerprint=fingerprint, adapt=adapt,
                                numerics=numerics, **options)
        write_output(target, blob, force=args.force, source=name)
        _summary(args, name, len(data), len(blob), time.perf_counter() - start, kept)
    return 0


def _scratch_device(device: str) -> torch.device:
    from omnibyte.devices import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise OmnibyteError("this needs a CUDA GPU")
    return resolved


def run_decompress(args: argparse.Namespace) -> int:
    check_inputs(args)
    blobs = [read_input(name) for name in args.files]
    for blob in blobs:  # "not an omnibyte stream" says more than any complaint about its name
        container.read_version(blob)
    pairs = plan_outputs(args, compressing=False)
    headers = [container.unpack(blob) for blob in blobs]  # reject bad streams before loading anything
    # integer streams decode on any device; a float stream only on the device type it was made on
    devices = {header.settings.device for header in headers if not header.settings.integer}
    device = args.device or (devices.pop() if len(devices) == 1 else "auto")
    needs_model = [(name, header) for name, header in zip(args.files, headers) if header.fresh is None]
    model = fingerprint = None
    if needs_model:
        if args.model is None:  # streams made with the built-in model name it
            for name, header in needs_model:
                if header.builtin is None:
                    raise OmnibyteError(f"{name} was compressed with a trained model: name it with --model")
                check_builtin_name(header)
            args.model = require_builtin_model_dir()
        model, fingerprint = _load_coding_model(args, device)
    integer = integer_model(model) if any(h.settings.integer and h.fresh is None for h in headers) else None
    for header in headers:  # every stream's device before the first output is written
        check_device(header, model.device.type if header.fresh is None else _stream_device(args.device, header).type)
    for (name, target), blob, header in zip(pairs, blobs, headers):
        ratio = f"ratio {header.original_size / max(len(blob), 1):.2f}x"
        bar, update = _progress_bar(args, name, header.original_size, lambda done, bits: ratio)
        start = time.perf_counter()
        with bar:
            if header.fresh is not None:
                data = decompress(blob, progress=update, device=_stream_device(args.device, header))
            else:
                data = decompress(blob, integer if header.settings.integer else model, progress=update,
                                  fingerprint=fingerprint)
        write_output(target, data, force=args.force, source=name)
        _summary(args, name, len(data), len(blob), time.perf_counter() - start)
    return 0


def _stream_device(requested: str | None, header: container.Container) -> torch.device:
    """Where a from-scratch stream decodes: ``--device`` or its own device type (checked by ``scratch_for``)."""
    from omnibyte.devices import resolve_device

    if requested is None and header.settings.device == "cuda" and not torch.cuda.is_available():
        raise OmnibyteError("this needs a CUDA GPU (the stream was made on cuda)")
    return resolve_device(requested or header.settings.device)

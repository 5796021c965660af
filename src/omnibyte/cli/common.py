"""What the subcommands share: the parser (one-line errors, defaults in ``--help``), option
types that check every value at parse time, output-path checks made before any work, the
model options and the one model loader, ``--set`` parsing, and turning errors into one line
on stderr with an exit code."""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

import torch

from omnibyte.devices import resolve_device
from omnibyte.errors import OmnibyteError
from omnibyte.fileio import STDIO
from omnibyte.models.base import ByteModel
from omnibyte.models.builtin import BUILTIN_NAME, require_builtin_model_dir
from omnibyte.models.serialization import CONFIG_FILE, load_model
from omnibyte.models.validation import DEFAULT_MAX_PARAMETERS, MAX_PARAMETERS_ENV, model_size_limit

# ``subparsers.add_parser`` is all a subcommand module needs from its caller
Subparsers = argparse._SubParsersAction
Handler = Callable[[argparse.Namespace], int]

EXIT_USAGE = 2  # bad input: argparse's code for bad options, ours for every OmnibyteError
EXIT_IO = 1  # stdout or stdin failed (broken pipe, full disk, closed stream)
EXIT_INTERRUPTED = 130

SEED_MAX = 2**63 - 1  # seeds are int64 on the device
DEVICE_NAMES = "auto, cpu, cuda, cuda:N or mps"

# One meaning per option name: the subcommands that share a name share its help text.
BATCH_SIZE_HELP = "sequences run through the model at once (more is faster and needs more memory)"
CONTEXT_HELP = "bytes the model sees at once when scoring (at most the model's context; default: the model's)"


# ---- the parser -------------------------------------------------------------------------

class HelpFormatter(argparse.HelpFormatter):
    """argparse's help plus "(default: X)" after every option whose default means something
    (not for flags, ``None`` or help that already names its default)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "default" in text or default in (None, False, argparse.SUPPRESS)
                or default == []):
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (argparse prints the usage first)
    and whose help shows defaults; ``add_subparsers`` makes subcommand parsers of this class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"omnibyte: error: {' '.join(message.split())} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


# ---- option types: each raises ArgumentTypeError, which argparse turns into one line --------

def int_in(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An option type for integers in [minimum, maximum]."""
    bound = f"at least {minimum}" if maximum is None else f"an integer in {minimum}..{maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def real_in(
    low: float, high: float = math.inf, *, include_low: bool = True, include_high: bool = True
) -> Callable[[str], float]:
    """An option type for finite numbers between ``low`` and ``high`` (NaN and inf refused)."""
    if high == math.inf:
        bound = f"a number {'>=' if include_low else '>'} {low:g}"
    else:
        bound = f"a number in {'[' if include_low else '('}{low:g}, {high:g}{']' if include_high else ')'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        inside = (value >= low if include_low else value > low) and (value <= high if include_high else value < high)
        if not math.isfinite(value) or not inside:
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


positive_int = int_in(1)
non_negative_int = int_in(0)
seed_int = int_in(0, SEED_MAX)
non_negative_real = real_in(0.0)
positive_real = real_in(0.0, include_low=False)


def checked_by(check: Callable[[str], object]) -> Callable[[str], str]:
    """An option type that keeps the text once ``check(text)`` accepts it, and turns its
    ``OmnibyteError`` into argparse's one-line usage error."""
    def parse(text: str) -> str:
        try:
            check(text)
        except OmnibyteError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return text

    return parse


device_name = checked_by(resolve_device)  # ``--device``: checked at once against what this machine has


# ---- outputs, checked before any work -----------------------------------------------------

def check_output_file(target: str | Path, *, force: bool, option: str = "output") -> None:
    """Refuse an output file that cannot or should not be written: a folder, a parent that is
    missing or not a folder, no permission, or an existing file without ``--force``."""
    if str(target) == STDIO:
        return
    path = Path(target)
    if path.is_dir():
        raise OmnibyteError(f"{option} {path} is a folder; name a file")
    parent = path.parent
    if not parent.is_dir():
        state = "is not a folder" if parent.exists() else "does not exist"
        raise OmnibyteError(f"cannot write {path}: {parent} {state}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OmnibyteError(f"cannot write {path}: permission denied in {parent}")
    if path.exists() and not force:
        raise OmnibyteError(f"{path} exists (use --force to overwrite)")


def check_run_folder(folder: Path, option: str = "--out") -> None:
    """A run folder may exist (as a folder) or will be created with its parents: refuse a
    file, a path below a file, or a place without write permission."""
    if folder.exists() and not folder.is_dir():
        raise OmnibyteError(f"{option} {folder} is a file, not a folder")
    existing = next(p for p in [folder, *folder.parents] if p.exists())  # "." or "/" exist at worst
    if not existing.is_dir():
        raise OmnibyteError(f"{option} {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OmnibyteError(f"{option} {folder}: permission denied in {existing}")


# ---- the model options and the one model loader ------------------------------------------

class BuiltinModel:
    """The value of ``--model`` when it was not given in a command whose default is the built-in
    model (or given without a folder, in ``detect``); ``run_handler`` puts the built-in model's
    folder in its place before the command runs, or fails in one line when it is missing."""

    def __repr__(self) -> str:
        return f"the built-in {BUILTIN_NAME} model"


BUILTIN = BuiltinModel()
BUILTIN_HELP = f"(default: the built-in {BUILTIN_NAME} model shipped with omnibyte)"


def resolve_builtin_model(args: argparse.Namespace) -> None:
    """``args.model``: the built-in model's folder in place of ``BUILTIN`` (one-line error when
    its weights are not installed)."""
    if getattr(args, "model", None) is BUILTIN:
        args.model = require_builtin_model_dir()


def add_model_options(
    parser: argparse.ArgumentParser,
    *,
    required: bool = True,
    device_default: str | None = "auto",
    model_help: str = "model folder: a saved model or a training run (--out of omnibyte train)",
    device_help: str = f"where the model runs: {DEVICE_NAMES}",
    device: bool = True,
    builtin: bool = False,
    bare_is_builtin: bool = False,
) -> None:
    """``--model DIR`` and ``--device`` (unless ``device`` is False), the same in every
    subcommand that loads a model; with ``builtin`` the model defaults to the built-in one,
    with ``bare_is_builtin`` (an optional model) ``--model`` without a folder names it."""
    if builtin:
        parser.add_argument("--model", type=Path, default=BUILTIN, metavar="DIR", help=f"{model_help} {BUILTIN_HELP}")
    elif bare_is_builtin:
        parser.add_argument("--model", type=Path, nargs="?", const=BUILTIN, default=None, metavar="DIR",
                            help=f"{model_help}; --model alone (last, or before another option): the built-in "
                                 f"{BUILTIN_NAME} model")
    else:
        parser.add_argument("--model", required=required, type=Path, default=None, metavar="DIR", help=model_help)
    add_allow_large_option(parser)
    if device:
        parser.add_argument("--device", default=device_default, type=device_name, help=device_help)


def add_allow_large_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-large", action="store_true",
                        help=f"allow models above the size limit ({DEFAULT_MAX_PARAMETERS:,} parameters, or "
                             f"${MAX_PARAMETERS_ENV}), which keeps a typo in a config from filling the memory")


def add_scoring_options(parser: argparse.ArgumentParser) -> None:
    """``--context`` and ``--batch-size`` of the commands that score bytes (eval, anomaly)."""
    parser.add_argument("--context", type=positive_int, default=None, metavar="BYTES", help=CONTEXT_HELP)
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help=BATCH_SIZE_HELP)


def check_context(context: int | None, model: ByteModel) -> None:
    """A scoring window longer than the model's context would silently be cut: refuse it."""
    if context is not None and context > model.max_seq_len:
        raise OmnibyteError(f"--context {context} exceeds the model's context of {model.max_seq_len} bytes")


def load_cli_model(args: argparse.Namespace, device: str | None = None, announce: bool = True) -> ByteModel:
    """The model in ``args.model`` on ``device`` (default ``args.device``; None means auto),
    ready for inference. Every subcommand loads its model here; with ``announce`` it says on
    stderr when a run's folder holds its best model rather than its last."""
    model = load_model(args.model, resolve_device(device or args.device or "auto"))  # unknown devices: one line
    note = saved_step_note(args.model) if announce else None
    if note:
        _notes.append(note)  # printed when the command succeeds: an error stays one line
    return model


def saved_step(directory: Path) -> int | None:
    """The training step of the model saved in ``directory`` (``"step"`` in config.json), if recorded."""
    try:
        step = json.loads((Path(directory) / CONFIG_FILE).read_text()).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def trained_steps(directory: Path) -> int | None:
    """The step a run stopped at, from its trainer state's metadata (the tensors, three times
    the model's size, are not read); None when ``directory`` is not a run."""
    from omnibyte.train.sharded_checkpoint import latest

    found = latest(Path(directory))  # the single file or a DCP checkpoint folder, whichever is newer
    if found is None or found.step < 0:  # a damaged state: the model itself loaded, only the note is lost
        return None
    return found.step


def saved_step_note(directory: Path) -> str | None:
    """Says that a run's folder holds its best model by validation, not its last, when they differ."""
    step = saved_step(directory)
    if step is None:
        return None
    last = trained_steps(directory)
    if last is None or last == step:
        return None
    return f"using the best model by validation, from step {step:,} of {last:,} ({directory})"


# ---- training ---------------------------------------------------------------------------------

def show_validation(trainer: Any) -> None:
    """Trainer callback (``trainer.callbacks``): one line above the progress bar after every
    validation, so validation bits/byte shows while training, not only at the end."""
    from tqdm import tqdm

    config = trainer.config
    if not trainer.is_main or not config.eval_every or trainer.best_val is None:
        return
    if trainer.step % config.eval_every and trainer.step != config.steps:
        return  # the trainer validates at these steps only
    unit = "bits/byte" if trainer.task.objective == "bits_per_byte" else trainer.task.objective
    if trainer.evals_without_improvement == 0:
        text = f"validation {trainer.best_val:.4f} {unit} (best so far)"
    else:
        text = f"validation {trainer.last_val:.4f} {unit} (best {trainer.best_val:.4f})"
    tqdm.write(f"step {trainer.step}: {text}")


# ---- --set ----------------------------------------------------------------------------------

def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as a dict; values are JSON when they parse, else strings."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise OmnibyteError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


# ---- running a subcommand -------------------------------------------------------------------

def fail(message: str, code: int) -> int:
    print(f"omnibyte: error: {message}", file=sys.stderr)
    return code


def _settle_stdout() -> None:
    """Flush stdout; if that fails too (it is what broke), point it at /dev/null, so the flush
    at exit does not fail again (Python would print a second, multi-line error)."""
    try:
        sys.stdout.flush()
        return
    except OSError:
        pass
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # not a real file (a test's capture)
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, descriptor)
    os.close(null)


_notes: list[str] = []  # said on stderr after a command succeeded (see load_cli_model)


def run_handler(handler: Handler, args: argparse.Namespace) -> int:
    """Run a subcommand; user errors become ``omnibyte: error: ...`` and exit code 2, failures
    of stdout or stdin one such line and exit code 1, never a traceback."""
    size_limit = model_size_limit(None) if getattr(args, "allow_large", False) else contextlib.nullcontext()
    try:
        _notes.clear()
        with size_limit:
            resolve_builtin_model(args)
            code = int(handler(args) or 0)
        sys.stdout.flush()  # a full disk shows here, not at exit as a traceback
        for note in _notes:
            print(f"omnibyte: {note}", file=sys.stderr)
        return code
    except OmnibyteError as error:
        return fail(str(error), EXIT_USAGE)
    except KeyboardInterrupt:
        print("omnibyte: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except torch.OutOfMemoryError:
        return fail("out of memory on the device: lower --batch-size (or --seq-len, --context)", EXIT_IO)
    except BrokenPipeError:  # e.g. `omnibyte generate ... | head`
        _settle_stdout()
        return fail("output closed before everything was written (broken pipe)", EXIT_IO)
    except OSError as error:  # e.g. stdout on a full disk
        _settle_stdout()
        where = f" ({error.filename})" if error.filename else ""
        return fail(f"input/output error: {error.strerror or error}{where}", EXIT_IO)


class ClosedStream:
    """Stands in for ``sys.stdin``/``sys.stdout`` when the process started with that stream
    closed (``<&-``, ``>&-``; Python then sets it to None): using it is a one-line error
    (``run_handler``), not an AttributeError on None."""

    def __init__(self, name: str):
        self.name = name

    @property
    def buffer(self) -> "ClosedStream":
        return self

    def _closed(self, *_: Any) -> NoReturn:
        raise OSError(errno.EBADF, f"{self.name} is closed")  # a failed stream, like a full disk: exit 1

    read = readline = write = _closed

    def flush(self) -> None:  # called at exit: nothing to flush
        pass

    def isatty(self) -> bool:
        return False

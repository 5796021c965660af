"""Reading inputs and writing outputs, shared by the apps, the CLI, training and the model files.

Every file omnibyte writes goes through ``atomic_write``: the bytes land in a temporary file
in the target's folder, are fsynced and renamed into place, so a crash or a full disk never
leaves a torn file behind (and never clobbers the previous version). Every input the user
names goes through ``read_input``, so a missing file, a folder or a permission problem is one
``OmnibyteError`` line with the same wording in every command, and ``-`` always means stdin.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

from omnibyte.errors import OmnibyteError

STDIO = "-"  # the name that means stdin for inputs and stdout for outputs


def atomic_write(path: str | Path, write_fn: Callable[[Path], None]) -> Path:
    """Call ``write_fn(tmp_path)`` and rename the finished file onto ``path``.

    The temporary file sits next to ``path`` (same file system, so the rename is atomic) and
    is removed if ``write_fn`` fails. Missing parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp_path = Path(tmp_name)
    try:
        write_fn(tmp_path)
        with open(tmp_path, "rb") as file:
            os.fsync(file.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def read_input(name_or_path: str | Path) -> bytes:
    """The bytes of a file the user named; ``-`` reads all of stdin.

    Errors are one line naming the file: missing, a folder, no permission, or any other
    ``OSError`` (with its message).
    """
    name = str(name_or_path)
    if name == STDIO:
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except IsADirectoryError:
        raise OmnibyteError(f"{name} is a folder, not a file") from None
    except OSError as error:
        raise OmnibyteError(f"cannot read {name}: {error.strerror or error}") from None


def write_stdout(data: bytes) -> None:
    """Write raw bytes to stdout and flush (so interleaved stderr stays in order)."""
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def check_writable(target: str | Path, *, force: bool, source: str | Path | None = None) -> None:
    """Refuse, before any work is done, to overwrite an input or (without ``force``) any file."""
    if str(target) == STDIO:
        return
    path = Path(target)
    if not path.exists():
        return
    if source is not None and str(source) != STDIO and path.resolve() == Path(source).resolve():
        raise OmnibyteError(f"output {target} would overwrite its input")
    if not force:
        raise OmnibyteError(f"{target} exists (use --force to overwrite)")


def write_output(target: str | Path, data: bytes, *, force: bool = False, source: str | Path | None = None) -> None:
    """Write ``data`` to ``target`` (``-`` is stdout) atomically, after ``check_writable``."""
    if str(target) == STDIO:
        write_stdout(data)
        return
    check_writable(target, force=force, source=source)
    save_bytes(target, data)


def save_bytes(path: str | Path, data: bytes) -> Path:
    """``atomic_write_bytes`` for a file the user named: failures are one-line errors."""
    try:
        return atomic_write_bytes(path, data)
    except OSError as error:
        raise OmnibyteError(f"cannot write {path}: {error.strerror or error}") from None


def numbered_path(path: str | Path, index: int) -> Path:
    """``out.txt`` -> ``out-3.txt`` (``out`` -> ``out-3``): one file per item of a series."""
    path = Path(path)
    return path.with_name(f"{path.stem}-{index}{path.suffix}")


def with_default_suffix(path: str | Path, suffix: str) -> Path:
    """``path`` unchanged when it has a suffix, else ``path`` + ``suffix``."""
    path = Path(path)
    return path if path.suffix else path.with_name(path.name + suffix)

"""Reading inputs and writing outputs, shared by the apps, the CLI, training and the model files.

Every file omnibyte writes goes through ``atomic_write``: the bytes land in a temporary file
in the target's folder, are fsynced and renamed into place, so a crash or a full disk never
leaves a torn file behind (and never clobbers the previous version). Every input the user
names goes through ``read_input``, so a missing file, a folder or a permission problem is one
``OmnibyteError`` line with the same wording in every command, and ``-`` always means stdin.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; stale temporaries are told by age alone
    fcntl = None  # type: ignore[assignment]

from omnibyte.errors import OmnibyteError

STDIO = "-"  # the name that means stdin for inputs and stdout for outputs


# mkstemp's names in atomic_write: "." + target name + "." + 8 random characters + ".tmp"
TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
STALE_AFTER_S = 60.0  # a temporary untouched for this long, held by no process, was abandoned
_last_sweep: dict[str, float] = {}  # folder -> when its temporaries were last looked at


def atomic_write(path: str | Path, write_fn: Callable[[Path], None]) -> Path:
    """Call ``write_fn(tmp_path)`` and rename the finished file onto ``path``.

    The temporary file sits next to ``path`` (same file system, so the rename is atomic) and
    is removed if ``write_fn`` fails. While it is written it is locked (``flock``), so that
    ``remove_stale_temporaries`` can tell it from one a killed process left behind; those are
    swept from the folder here too. The finished file gets the mode any new file gets
    (0666 minus the umask), not mkstemp's private 0600. Missing parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_now_and_then(path.parent)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp_path = Path(tmp_name)
    try:
        _lock(handle)
        write_fn(tmp_path)
        with open(tmp_path, "rb") as file:
            os.fsync(file.fileno())
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        os.close(handle)  # releases the lock
        tmp_path.unlink(missing_ok=True)
    return path



def save_png(figure, path: str | Path, dpi: int | None = None) -> Path:
    """Write a matplotlib ``figure`` to ``path`` as PNG, atomically (a crash mid-plot leaves the
    previous file, never a torn one), and close it."""
    import matplotlib.pyplot as plt  # matplotlib loads only when a plot is asked for

    try:
        return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi))
    finally:
        plt.close(figure)

def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (``os.umask`` can only
    be read by setting it, which races with other threads creating files)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _lock(handle: int) -> None:
    """Mark a temporary file as being written by a live process (released when it closes or
    the process dies, even by kill -9)."""
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _held_by_a_process(path: str) -> bool:
    """True when a live ``atomic_write`` holds ``path`` (or when that cannot be told)."""
    if fcntl is None:
        return False  # no locks here: the age rule alone decides
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:  # BlockingIOError: a writer holds it; anything else: be careful
        return True
    finally:
        os.close(handle)


def remove_stale_temporaries(folder: str | Path, min_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Delete the temporaries of interrupted ``atomic_write``s in ``folder``; returns them.

    Only files named as ``atomic_write`` names its temporaries (``.NAME.xxxxxxxx.tmp``), not
    modified for ``min_age_s`` seconds and locked by no live process are removed, so a user's
    file and a save in progress (in this or another process) are never touched."""
    folder = Path(folder)
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not TEMP_NAME.match(entry.name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False) or now - entry.stat().st_mtime < min_age_s:
                continue
            if _held_by_a_process(entry.path):
                continue
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            continue  # gone already, or not ours to remove
    _last_sweep[str(folder)] = now
    return removed


def _sweep_now_and_then(folder: Path) -> None:
    """Sweep ``folder`` at most once per ``STALE_AFTER_S``: a process that saves often (the
    trainer) cleans up after a killed predecessor without listing the folder at every save."""
    if time.time() - _last_sweep.get(str(folder), float("-inf")) >= STALE_AFTER_S:
        remove_stale_temporaries(folder)


def check_output_folder(path: str | Path, name: str = "output folder") -> Path:
    """``path`` as a folder to write into: refused in one line when it is an existing file or
    lies below one (a missing folder is fine; it is created when the first file is written)."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return path
        if candidate.exists() or candidate.is_symlink():
            if candidate == path:
                raise OmnibyteError(f"{name} {path} is a file, not a folder")
            raise OmnibyteError(f"{name} {path} is below {candidate}, which is a file, not a folder")
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

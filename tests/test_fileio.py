"""Shared file I/O: one-line read errors, atomic writes that leave nothing behind on failure,
respect the umask, and clean up after saves that were killed."""
import io
import os
import stat
import sys
import time

import pytest

from omnibyte import fileio
from omnibyte.errors import OmnibyteError
from omnibyte.fileio import (
    atomic_write,
    atomic_write_bytes,
    check_output_folder,
    check_writable,
    current_umask,
    fcntl,
    remove_stale_temporaries,
    numbered_path,
    read_input,
    with_default_suffix,
    write_output,
)


def test_read_input_reads_files_and_stdin(tmp_path, monkeypatch):
    (tmp_path / "a.bin").write_bytes(b"\x00\x01")
    assert read_input(tmp_path / "a.bin") == b"\x00\x01"
    assert read_input(str(tmp_path / "a.bin")) == b"\x00\x01"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"piped")))
    assert read_input("-") == b"piped"


def test_read_input_errors_are_one_line_and_name_the_file(tmp_path):
    with pytest.raises(OmnibyteError, match="^cannot read .*nope: No such file or directory$"):
        read_input(tmp_path / "nope")
    with pytest.raises(OmnibyteError, match="is a folder, not a file$"):
        read_input(tmp_path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads everything")
def test_read_input_permission_denied(tmp_path):
    locked = tmp_path / "locked"
    locked.write_bytes(b"x")
    locked.chmod(0)
    with pytest.raises(OmnibyteError, match="Permission denied"):
        read_input(locked)


def test_atomic_write_replaces_whole_files_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    atomic_write_bytes(target, b"first")
    assert target.read_bytes() == b"first"

    def fail(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_bytes() == b"first"  # the old version survives
    assert [path.name for path in target.parent.iterdir()] == ["out.bin"]  # no temporary left


def test_write_output_refuses_to_clobber(tmp_path):
    source = tmp_path / "in.txt"
    source.write_bytes(b"in")
    with pytest.raises(OmnibyteError, match="would overwrite its input"):
        write_output(source, b"x", force=True, source=source)
    with pytest.raises(OmnibyteError, match="exists \\(use --force"):
        check_writable(source, force=False)
    write_output(source, b"new", force=True)
    assert source.read_bytes() == b"new"


def test_output_names():
    assert numbered_path("out.txt", 3).name == "out-3.txt"
    assert numbered_path("dir/out", 0).as_posix() == "dir/out-0"
    assert with_default_suffix("out", ".wav").name == "out.wav"
    assert with_default_suffix("out.raw", ".wav").name == "out.raw"


# ---- file hygiene: the umask, and temporaries of interrupted saves -------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_respect_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write_bytes(tmp_path / "out.bin", b"x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out.bin").stat().st_mode) == mode


def age(path, seconds: float) -> None:
    os.utime(path, (time.time() - seconds, time.time() - seconds))


def test_abandoned_temporaries_are_removed_and_nothing_else(tmp_path):
    abandoned = tmp_path / ".model.safetensors.k2j4h5_a.tmp"
    fresh = tmp_path / ".config.json.abcdefgh.tmp"
    users = [tmp_path / name for name in (".notes.txt.swp", "notes.tmp", ".x.tmp", ".model.ABCDEFGH.tmp",
                                          "model.safetensors.k2j4h5_a.tmp")]
    for path in (abandoned, fresh, *users):
        path.write_bytes(b"data")
    for path in (abandoned, *users):
        age(path, 3600)
    (tmp_path / ".folder.abcdefgh.tmp").mkdir()
    age(tmp_path / ".folder.abcdefgh.tmp", 3600)
    assert remove_stale_temporaries(tmp_path) == [abandoned]
    assert fresh.exists() and all(path.exists() for path in users) and (tmp_path / ".folder.abcdefgh.tmp").is_dir()


@pytest.mark.skipif(fcntl is None, reason="no advisory locks on this platform")
def test_a_temporary_being_written_is_never_removed(tmp_path):
    in_progress = tmp_path / ".big.safetensors.abcd1234.tmp"
    in_progress.write_bytes(b"half")
    age(in_progress, 3600)  # a slow writer that has not touched it for an hour, but lives
    with open(in_progress, "rb+") as writer:
        fcntl.flock(writer.fileno(), fcntl.LOCK_EX)
        assert remove_stale_temporaries(tmp_path) == []
    assert remove_stale_temporaries(tmp_path) == [in_progress]  # its writer is gone


def test_the_next_atomic_write_sweeps_its_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "_last_sweep", {})
    left = tmp_path / ".out.bin.zzzzzzzz.tmp"
    left.write_bytes(b"killed mid-save")
    age(left, 120)
    atomic_write_bytes(tmp_path / "out.bin", b"whole")
    assert not left.exists() and (tmp_path / "out.bin").read_bytes() == b"whole"


def test_check_output_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    assert check_output_folder(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    assert check_output_folder(tmp_path) == tmp_path
    with pytest.raises(OmnibyteError, match="^--out .*file is a file, not a folder$"):
        check_output_folder(tmp_path / "file", "--out")
    with pytest.raises(OmnibyteError, match="is below .*file, which is a file"):
        check_output_folder(tmp_path / "file" / "a" / "b")

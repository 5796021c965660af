"""Shared file I/O: one-line read errors, atomic writes that leave nothing behind on failure."""
import io
import os
import sys

import pytest

from omnibyte.errors import OmnibyteError
from omnibyte.fileio import (
    atomic_write,
    atomic_write_bytes,
    check_writable,
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

"""Segmentation of concatenated pieces: exact structured boundaries, byte-precise statistical ones."""
import gzip
import io
import os
import random
import tarfile
from pathlib import Path

import pytest

from omnibyte.apps.segment import segment, structured_spans, text_byte_mask
from tests.test_detect import bmp_bytes, wav_bytes

DATA = Path(os.environ.get("OMNIBYTE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

PROSE = b"".join(f"Line {i}: the quick brown fox jumps over the lazy dog, again and again.\n".encode()
                 for i in range(60))
C_SOURCE = b"".join(f"static int f{i}(int x)\n{{\n\treturn x * {i} + (x >> 2);\n}}\n\n".encode() for i in range(40))
ABC = b"X: 1\nT:Test Jig\nM:6/8\nL:1/8\nK:G\n|:GAB c2d|e2f g3|\"D\"fed cBA|\"G\"G3 G3:|\n" * 6


def layout(pieces):
    return [(piece.start, piece.kind) for piece in pieces]


def assert_boundaries(found, expected, tolerance=0):
    assert len(found) == len(expected), layout(found)
    for piece, (start, kind) in zip(found, expected):
        assert abs(piece.start - start) <= tolerance and piece.kind == kind, layout(found)
    assert found[0].start == 0 and all(a.end == b.start for a, b in zip(found, found[1:]))


def test_empty_input_has_no_segments():
    assert segment(b"") == []


def test_structured_pieces_get_exact_boundaries():
    rng = random.Random(0)
    noise = rng.randbytes(3000)
    pieces = [PROSE, bmp_bytes(), wav_bytes(), noise]
    data = b"".join(pieces)
    starts = [0, len(PROSE), len(PROSE) + len(pieces[1]), len(PROSE) + len(pieces[1]) + len(pieces[2])]
    found = segment(data)
    assert_boundaries(found, list(zip(starts, ["text", "bmp", "wav", "random"])))
    assert found[-1].end == len(data)
    assert found[1].structured and found[2].structured and not found[3].structured


def test_text_with_a_stray_binary_block():
    block = random.Random(1).randbytes(200)
    data = PROSE + block + PROSE
    found = segment(data)
    assert_boundaries(found, [(0, "text"), (len(PROSE), "random"), (len(PROSE) + 200, "text")], tolerance=3)


def test_text_random_boundary_is_byte_precise():
    rng = random.Random(2)
    errors = []
    for _ in range(8):
        noise = rng.randbytes(rng.randrange(500, 3000))
        found = segment(PROSE + noise)
        assert [kind for _, kind in layout(found)] == ["text", "random"]
        errors.append(abs(found[1].start - len(PROSE)))  # random bytes may start with a few text bytes
    assert max(errors) <= 16 and sum(errors) / len(errors) <= 3, errors


def test_kinds_of_text_split_at_line_starts():
    data = PROSE + C_SOURCE + ABC + PROSE
    starts = [0, len(PROSE), len(PROSE) + len(C_SOURCE), len(PROSE) + len(C_SOURCE) + len(ABC)]
    assert_boundaries(segment(data), list(zip(starts, ["text", "code", "abc", "text"])))


def test_back_to_back_files_of_one_kind_stay_separate():
    wav = wav_bytes()
    found = segment(wav + wav)
    assert layout(found) == [(0, "wav"), (len(wav), "wav")]


def test_headers_inside_a_file_are_part_of_it():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, payload in (("a.wav", wav_bytes()), ("b.bmp", bmp_bytes())):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    tar = buffer.getvalue()
    found = segment(PROSE + tar + gzip.compress(PROSE))
    assert layout(found) == [(0, "text"), (len(PROSE), "tar"), (len(PROSE) + len(tar), "gzip")]


def test_unmeasured_weak_magic_in_text_is_ignored():
    text = PROSE + b"P1 2 3\n%PDF-1.4 appears in prose about PDF files.\n" + PROSE
    assert layout(segment(text)) == [(0, "text")]
    assert structured_spans(text) == []


def test_text_mask_accepts_utf8_and_rejects_control_bytes():
    import numpy as np

    data = "aé€😀\n".encode() + b"\x00\x01\xc3"
    mask = text_byte_mask(np.frombuffer(data, np.uint8))
    assert mask[:len("aé€😀\n".encode())].all() and not mask[-3:].any()


def test_real_pieces_from_shared_data():
    wav_path = DATA / "fsdd" / "recordings" / "3_theo_10.wav"
    abc_path = DATA / "nottingham" / "ABC_cleaned" / "reelsa-c.abc"
    if not (wav_path.exists() and abc_path.exists()):
        pytest.skip("real data not available")
    tune = abc_path.read_bytes().split(b"\n\n\n")[0].strip() + b"\n"
    wav = wav_path.read_bytes()
    noise = random.Random(5).randbytes(2048)
    pieces = [(tune, "abc"), (wav, "wav"), (C_SOURCE, "code"), (noise, "random"), (PROSE, "text")]
    data = b"".join(piece for piece, _ in pieces)
    expected, position = [], 0
    for piece, kind in pieces:
        expected.append((position, kind))
        position += len(piece)
    assert_boundaries(segment(data), expected, tolerance=4)

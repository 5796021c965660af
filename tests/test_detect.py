"""Modality detection: real files of every kind in ../shared/data, signature edge cases, CLI."""
import gzip
import io
import json
import lzma
import os
import random
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest

from omnibyte.apps.detect import Detection, ModalityDetector, detect, extension_for
from omnibyte.cli import main
from omnibyte.cli.generate import output_path_with_kind

DATA = Path(os.environ.get("OMNIBYTE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
SAMPLES = DATA / "format-samples"
SAMPLE_KINDS = {".bmp": "bmp", ".gif": "gif", ".jpg": "jpeg", ".png": "png", ".tiff": "tiff", ".webp": "webp",
                ".pbm": "pnm", ".pgm": "pnm", ".ppm": "pnm", ".ras": "ras", ".sgi": "sgi", ".exr": "exr",
                ".xbm": "xbm", ".wav": "wav", ".aiff": "aiff", ".aifc": "aiff", ".au": "au"}


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


def wav_bytes(samples: int = 400, form: bytes = b"WAVE") -> bytes:
    pcm = bytes(random.Random(0).randrange(256) for _ in range(2 * samples))
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 8000, 16000, 2, 16)
    body = form + fmt + struct.pack("<4sI", b"data", len(pcm)) + pcm
    return b"RIFF" + struct.pack("<I", len(body)) + body


def bmp_bytes(width: int = 4, height: int = 3, declared_size: int | None = None) -> bytes:
    row = (width * 24 + 31) // 32 * 4
    size = 54 + row * height
    header = struct.pack("<2sIHHI", b"BM", declared_size or size, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, row * height, 2835, 2835, 0, 0)
    return header + info + bytes(range(row * height))


# ---- real files -----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SAMPLE_KINDS))
def test_every_format_sample_is_recognised_with_a_validated_header(name):
    paths = sorted(need(SAMPLES).glob(f"*/*{name}"))
    assert paths
    for path in paths:
        found = detect(path.read_bytes())
        assert found.kind == SAMPLE_KINDS[name], (path.name, found.evidence)
        assert found.confidence >= 0.9


def test_real_recordings_tunes_and_midi():
    wav = need(DATA / "fsdd" / "recordings" / "7_jackson_32.wav").read_bytes()
    found = detect(wav)
    assert (found.kind, found.extension) == ("wav", ".wav")
    assert any("ends exactly" in item for item in found.evidence if isinstance(item, str))
    tunes = need(DATA / "nottingham" / "ABC_cleaned" / "jigs.abc").read_bytes()
    assert detect(tunes).kind == "abc"
    assert detect(b"X:" + tunes.split(b"\nX:")[5]).kind == "abc"  # a single tune
    midi = need(DATA / "nottingham" / "MIDI" / "jigs1.mid").read_bytes()
    assert detect(midi).kind == "midi"


def test_real_text_code_and_compressed_files():
    gcide = need(DATA / "text" / "gcide.txt.gz").read_bytes()
    assert detect(gcide).kind == "gzip"
    text = gzip.open(io.BytesIO(gcide)).read(200_000)
    excerpt = text[100_000:text.index(b"\n\n", 110_000) + 1]
    assert detect(excerpt).kind == "text"
    archive = need(DATA / "code" / "linux-6.1-core.tar.xz").read_bytes()
    found = detect(archive)
    assert (found.kind, found.extension) == ("xz", ".tar.xz")
    sources = []
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r|xz") as members:
        for member in members:
            if member.isfile() and member.name.endswith(".c"):
                sources.append(members.extractfile(member).read())
            if len(sources) == 5:
                break
    for source in sources:
        found = detect(source)
        assert (found.kind, found.extension) == ("code", ".c"), found.evidence


def test_fashion_mnist_images_written_by_pillow():
    image_module = pytest.importorskip("PIL.Image")
    import numpy as np

    raw = gzip.open(need(DATA / "fashion-mnist" / "t10k-images-idx3-ubyte.gz")).read(16 + 28 * 28 * 3)
    for index in range(3):
        pixels = np.frombuffer(raw, np.uint8, 28 * 28, 16 + 28 * 28 * index).reshape(28, 28)
        for fmt, kind in (("BMP", "bmp"), ("PNG", "png"), ("JPEG", "jpeg"), ("GIF", "gif")):
            buffer = io.BytesIO()
            image_module.fromarray(pixels, "L").save(buffer, fmt)
            assert detect(buffer.getvalue()).kind == kind


# ---- synthetic content and signature edge cases -----------------------------------------

def test_empty_input():
    found = detect(b"")
    assert (found.kind, found.confidence, found.extension) == ("empty", 1.0, "")


def test_random_bytes_and_text_are_told_apart():
    rng = random.Random(3)
    for size in (64, 1000, 100_000):
        found = detect(rng.randbytes(size))
        assert found.kind == "random", (size, found.evidence)
    assert detect(b"hello there, plain words.\n" * 20).kind == "text"
    assert detect("naïve café déjà vu, ça va très bien.\n".encode() * 10).kind == "text"
    assert detect("8-bit text: café\n".encode("latin-1") * 10).kind == "text"


def test_structured_binary_without_signature_is_unknown_binary():
    data = struct.pack("<256I", *range(256)) * 4  # little-endian counters: many NULs, not uniform
    assert detect(data).kind == "binary"


def test_compressed_streams_and_archives():
    payload = b"some text to pack\n" * 200
    assert detect(gzip.compress(payload)).kind == "gzip"
    assert detect(lzma.compress(payload)).kind == "xz"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.txt", payload)
    assert detect(buffer.getvalue()).kind == "zip"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        info = tarfile.TarInfo("a.txt")
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))
    tar = buffer.getvalue()
    assert detect(tar).kind == "tar"
    assert extension_for(gzip.compress(tar)) == ".tar.gz"


def test_riff_that_is_not_wave_is_rejected_with_a_reason():
    avi = wav_bytes(form=b"AVI ")
    found = detect(avi)
    assert found.kind != "wav"
    assert any("not WAVE" in item for item in found.evidence if isinstance(item, str))
    assert detect(wav_bytes()).kind == "wav"


def test_bmp_with_inconsistent_sizes_is_rejected():
    assert detect(bmp_bytes()).kind == "bmp"
    found = detect(bmp_bytes(declared_size=60))  # smaller than header + pixels
    assert found.kind != "bmp"
    assert any("BMP" in item and "size" in item for item in found.evidence if isinstance(item, str))


def test_truncated_headers():
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00"
    found = detect(png)
    assert found.kind != "png"
    assert any("truncated" in item for item in found.evidence if isinstance(item, str))
    wav = wav_bytes()
    cut = detect(wav[:200])
    assert cut.kind == "wav" and cut.confidence < 0.9
    assert any("truncated" in item for item in cut.evidence if isinstance(item, str))
    longer = detect(wav + b"trailing bytes")
    assert longer.kind == "wav" and any("more bytes follow" in item for item in longer.evidence
                                        if isinstance(item, str))


def test_magic_inside_prose_does_not_fool_detection():
    assert detect(b"%PDF-1.7 is a version of the portable document format.\n" * 5).kind == "text"
    assert detect(b"MZ is the DOS header; BM starts bitmaps.\n" * 5).kind == "text"


def test_text_sub_kinds():
    assert detect(json.dumps({"a": [1, 2, {"b": None}], "c": "d"}).encode()).kind == "json"
    assert detect(b'{"a": 1}\n{"a": 2}\n{"a": 3}\n').extension == ".jsonl"
    page = b"<!DOCTYPE html>\n<html><head><title>x</title></head><body><p>hi</p></body></html>\n"
    assert detect(page).kind == "html"
    svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"><rect width="1"/></svg>\n'
    found = detect(svg)
    assert (found.kind, found.extension) == ("xml", ".svg")
    python = b"import os\n\n\ndef main(argv):\n    for item in argv:\n        print(item)\n    return 0\n" * 3
    found = detect(python)
    assert (found.kind, found.extension) == ("code", ".py")
    abc = b"X: 1\nT:Tune\nM:6/8\nK:G\n|:GAB c2d|e2f g3|\"D\"fed cBA:|\n"
    assert detect(abc).kind == "abc"


def test_model_surprisal_is_added_as_evidence():
    import torch

    from omnibyte.models import build_model

    torch.manual_seed(0)
    model = build_model("flat", "tiny").eval()
    found = ModalityDetector().detect(random.Random(1).randbytes(3000), model)
    assert found.kind == "random"
    bits = [item["model_bits_per_byte"] for item in found.evidence if isinstance(item, dict)
            and "model_bits_per_byte" in item]
    assert len(bits) == 1 and 5.0 < bits[0] < 12.0


# ---- extension and CLI ------------------------------------------------------------------

def test_generate_output_names_get_the_detected_extension(tmp_path):
    assert extension_for(wav_bytes()) == ".wav"
    assert extension_for(b"plain words here.\n") == ".txt"
    assert output_path_with_kind(str(tmp_path / "sample"), wav_bytes()).name == "sample.wav"
    assert output_path_with_kind(str(tmp_path / "sample.raw"), wav_bytes()).name == "sample.raw"
    assert output_path_with_kind(str(tmp_path / "empty"), b"").name == "empty"


def test_cli_table_json_and_segments(tmp_path, capsys):
    (tmp_path / "a.wav").write_bytes(wav_bytes())
    (tmp_path / "mixed").write_bytes(b"some words in a line.\n" * 30 + wav_bytes())
    assert main(["detect", str(tmp_path / "a.wav"), str(tmp_path / "mixed")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["file", "kind", "conf", "size"]
    assert table[1].split()[1] == "wav" and table[2].split()[1] == "binary"  # text then binary, as a whole
    assert main(["detect", str(tmp_path / "mixed"), "--json", "--segments"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report[0]["detection"]["kind"] == "binary"
    assert [(piece["start"], piece["kind"]) for piece in report[0]["segments"]] == [(0, "text"), (660, "wav")]


def test_cli_missing_file_is_a_one_line_error(tmp_path, capsys):
    assert main(["detect", str(tmp_path / "nope.bin")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("omnibyte: error:") and "nope.bin" in error[0]


def test_detection_is_a_serialisable_dataclass():
    found = detect(wav_bytes())
    assert isinstance(found, Detection)
    assert json.loads(json.dumps(found.to_dict()))["kind"] == "wav"


def test_cli_folders_recursively_and_stdin(tmp_path, capsys, monkeypatch):
    import io

    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "a.wav").write_bytes(wav_bytes())
    (tmp_path / "in" / "sub" / "b.txt").write_bytes(b"some words in a line.\n" * 30)
    (tmp_path / "in" / ".hidden").write_bytes(b"skipped")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(wav_bytes())))
    assert main(["detect", str(tmp_path / "in"), "-", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(Path(entry["file"]).name, entry["detection"]["kind"]) for entry in report] == [
        ("a.wav", "wav"), ("b.txt", "text"), ("stdin", "wav")]
    (tmp_path / "empty").mkdir()
    assert main(["detect", str(tmp_path / "empty")]) == 2
    assert "holds no files" in capsys.readouterr().err


def test_cli_model_adds_a_surprisal_column(tmp_path, capsys):
    import torch

    from omnibyte.models import build_model
    from omnibyte.models.serialization import save_model

    torch.manual_seed(0)
    save_model(build_model("flat", "tiny"), tmp_path / "model")
    (tmp_path / "r.bin").write_bytes(random.Random(1).randbytes(3000))
    (tmp_path / "e.bin").write_bytes(b"")
    assert main(["detect", str(tmp_path / "r.bin"), str(tmp_path / "e.bin")]) == 0
    assert "bits/B" not in capsys.readouterr().out
    assert main(["detect", str(tmp_path / "r.bin"), str(tmp_path / "e.bin"), "--model", str(tmp_path / "model"),
                 "--device", "cpu"]) == 0
    header, first, empty = capsys.readouterr().out.splitlines()
    assert header.split()[4] == "bits/B" and 5.0 < float(first.split()[4]) < 12.0 and empty.split()[4] == "-"
    assert main(["detect", str(tmp_path / "r.bin"), "--model", str(tmp_path / "model"), "--json"]) == 0
    assert 5.0 < json.loads(capsys.readouterr().out)[0]["detection"]["model_bits_per_byte"] < 12.0

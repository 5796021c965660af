"""Media adapters (omnibyte.media, ``omnibyte media``) and the Fashion-MNIST / FSDD / Nottingham
loaders: outputs read back with Pillow and ``wave``."""
from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omnibyte.cli import main
from omnibyte.errors import OmnibyteError
from omnibyte.media import BMP_BYTES, WAV_BYTES, audio_to_wav, delay_wav, image_to_bmp, mirror_bmp, pixels_to_bmp, shift_bmp

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def png_bytes(pixels: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def wav_bytes(samples: np.ndarray, rate: int, width: int, channels: int = 1) -> bytes:
    """``samples`` [frames, channels] in [-1, 1] as PCM of ``width`` bytes (8-bit unsigned)."""
    if width == 1:
        pcm = np.round(samples * 127 + 128).astype(np.uint8).tobytes()
    elif width == 3:  # the low 3 bytes of each little-endian int32
        wide = np.round(samples * (2**23 - 1)).astype("<i4").reshape(-1, 1).view(np.uint8)
        pcm = wide[:, :3].tobytes()
    else:
        pcm = np.round(samples * (2 ** (8 * width - 1) - 1)).astype(f"<i{width}").tobytes()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(pcm)
    return buffer.getvalue()


def read_wav(data: bytes) -> tuple[tuple[int, int, int, int], np.ndarray]:
    with wave.open(io.BytesIO(data), "rb") as source:
        params = (source.getnchannels(), source.getsampwidth(), source.getframerate(), source.getnframes())
        return params, np.frombuffer(source.readframes(source.getnframes()), np.uint8)


def assert_bmp_32(data: bytes) -> Image.Image:
    assert len(data) == BMP_BYTES == 3126
    assert data[:2] == b"BM" and int.from_bytes(data[28:30], "little") == 24  # bits per pixel
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.size, image.mode) == ("BMP", (32, 32), "RGB")
    return image


def test_any_image_becomes_a_32x32_24_bit_bmp():
    solid = np.zeros((20, 50, 4), np.uint8)
    solid[..., 0], solid[..., 3] = 200, 255  # opaque red, RGBA, not square
    image = assert_bmp_32(image_to_bmp(png_bytes(solid, "RGBA")))
    assert np.all(np.asarray(image) == [200, 0, 0])
    grey = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    image = assert_bmp_32(image_to_bmp(png_bytes(grey, "L")))  # already 32x32: pixels kept
    assert np.array_equal(np.asarray(image), np.repeat(grey[..., None], 3, axis=2))
    assert np.array_equal(np.asarray(assert_bmp_32(pixels_to_bmp(grey))), np.asarray(image))


def test_a_mirrored_bmp_holds_each_row_reversed():
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    original = pixels_to_bmp(pixels)
    mirrored = mirror_bmp(original)
    assert np.array_equal(np.asarray(assert_bmp_32(mirrored)), pixels[:, ::-1])
    assert mirrored != original and mirror_bmp(mirrored) == original
    with pytest.raises(OmnibyteError, match="not a BMP"):
        mirror_bmp(b"BM not really")


def test_a_shifted_bmp_moves_the_picture_and_fills_the_edge():
    pixels = np.random.default_rng(1).integers(1, 256, (32, 32, 3), dtype=np.uint8)
    moved = np.asarray(assert_bmp_32(shift_bmp(pixels_to_bmp(pixels), 2, -1)))
    assert np.array_equal(moved[:31, 2:], pixels[1:, :30])  # right 2, up 1
    assert (moved[:, :2] == 0).all() and (moved[31] == 0).all()
    assert shift_bmp(pixels_to_bmp(pixels), 0, 0) == pixels_to_bmp(pixels)
    with pytest.raises(OmnibyteError, match="cannot shift"):
        shift_bmp(pixels_to_bmp(pixels), 32, 0)


def test_audio_becomes_8khz_mono_8_bit_and_exactly_one_second():
    times = np.arange(8000) / 16000  # half a second at 16 kHz, stereo, 16-bit
    tone = 0.5 * np.sin(2 * np.pi * 440 * times)
    params, samples = read_wav(audio_to_wav(wav_bytes(np.stack([tone, tone], axis=1), 16000, 2, 2)))
    assert params == (1, 1, 8000, 8000)
    expected = np.round(0.5 * np.sin(2 * np.pi * 440 * np.arange(4000) / 8000) * 128 + 128)
    assert np.abs(samples[:4000].astype(int) - expected).max() <= 1  # every second sample, resampled
    assert np.all(samples[4000:] == 128)  # padded with silence
    long = np.random.default_rng(0).uniform(-1, 1, (3 * 8000, 1))  # 3 s at 8 kHz, 8-bit: cut to 1 s
    source = wav_bytes(long, 8000, 1)
    data = audio_to_wav(source)
    params, samples = read_wav(data)
    assert len(data) == WAV_BYTES and params == (1, 1, 8000, 8000)
    assert np.array_equal(samples, np.frombuffer(source[44 : 44 + 8000], np.uint8))  # same format: unchanged


def test_a_delayed_wav_starts_later_and_keeps_its_length():
    rng = np.random.default_rng(3)
    original = audio_to_wav(wav_bytes(rng.uniform(-0.9, 0.9, (8000, 1)), 8000, 1))
    _, samples = read_wav(original)
    params, delayed = read_wav(delay_wav(original, 300))
    assert params == (1, 1, 8000, 8000) and len(delay_wav(original, 300)) == WAV_BYTES
    assert (delayed[:300] == 128).all() and np.array_equal(delayed[300:], samples[:-300])
    assert delay_wav(original, 0) == original
    with pytest.raises(OmnibyteError, match="8-bit mono"):
        delay_wav(wav_bytes(rng.uniform(-0.5, 0.5, (100, 1)), 8000, 2), 10)
    with pytest.raises(OmnibyteError, match="cannot delay"):
        delay_wav(original, 8001)


def test_pcm_widths_give_the_same_audio():
    times = np.arange(4410) / 44100
    tone = (0.8 * np.sin(2 * np.pi * 300 * times))[:, None]
    outputs = [read_wav(audio_to_wav(wav_bytes(tone, 44100, width)))[1].astype(int) for width in (1, 2, 3, 4)]
    for output in outputs[1:]:
        assert np.abs(output - outputs[1]).max() <= 1
    assert np.abs(outputs[0] - outputs[1]).max() <= 2  # 8-bit input is coarser


def test_unreadable_media_is_one_line_error(tmp_path):
    with pytest.raises(OmnibyteError, match="not an image"):
        image_to_bmp(b"plain text")
    with pytest.raises(OmnibyteError, match="not a PCM WAV file"):
        audio_to_wav(b"FORM....AIFF")
    with pytest.raises(OmnibyteError, match="cannot read"):
        audio_to_wav(tmp_path / "missing.wav")


def test_media_command_writes_one_file_per_input_and_never_overwrites(tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8), "RGB"))
    (tmp_path / "b.wav").write_bytes(wav_bytes(np.zeros((100, 1)), 22050, 2))
    out = tmp_path / "out"
    assert main(["media", "to-bmp", str(tmp_path / "a.png"), "-o", str(out)]) == 0
    assert main(["media", "to-wav", str(tmp_path / "b.wav"), "-o", str(out)]) == 0
    assert_bmp_32((out / "a.bmp").read_bytes())
    assert read_wav((out / "b.wav").read_bytes())[0] == (1, 1, 8000, 8000)
    (out / "a.bmp").write_bytes(b"mine")
    assert main(["media", "to-bmp", str(tmp_path / "a.png"), "-o", str(out)]) == 2
    assert "exists (use --force" in capsys.readouterr().err and (out / "a.bmp").read_bytes() == b"mine"
    assert main(["media", "to-bmp", str(tmp_path / "a.png"), "-o", str(out), "--force"]) == 0
    assert_bmp_32((out / "a.bmp").read_bytes())


@pytest.mark.skipif(not (DATA / "fashion-mnist").is_dir(), reason="needs ../shared/data/fashion-mnist")
def test_fashion_mnist_images_become_labelled_bmps():
    from omnibyte.data.fashion_mnist import CLASSES, fashion_mnist_documents, read_idx

    documents = fashion_mnist_documents(DATA / "fashion-mnist", "test", limit=3)
    images = read_idx(DATA / "fashion-mnist" / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(DATA / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz")
    for index, document in enumerate(documents):
        pixels = np.asarray(assert_bmp_32(bytes(document.data)))
        assert np.array_equal(pixels[2:30, 2:30, 1], images[index]) and not pixels[:2].any()  # 2-pixel border
        assert document.label == CLASSES[labels[index]]


@pytest.mark.skipif(not (DATA / "fsdd").is_dir(), reason="needs ../shared/data/fsdd")
def test_fsdd_official_test_split_becomes_one_second_wavs():
    from omnibyte.data.fsdd import fsdd_documents

    documents = fsdd_documents(DATA / "fsdd" / "recordings", "test")
    assert len(documents) == 300
    assert {int(Path(d.name).stem.split("_")[2]) for d in documents} == set(range(5))
    assert sorted({d.label for d in documents}) == [str(digit) for digit in range(10)]
    assert read_wav(bytes(documents[0].data))[0] == (1, 1, 8000, 8000)


@pytest.mark.skipif(not (DATA / "nottingham").is_dir(), reason="needs ../shared/data/nottingham")
def test_nottingham_tunes_are_labelled_by_tune_type_and_split_by_tune():
    from omnibyte.data.nottingham import nottingham_documents

    folder = DATA / "nottingham" / "ABC_cleaned"
    train, test = nottingham_documents(folder, "train"), nottingham_documents(folder, "test")
    assert 1000 <= len(train) + len(test) <= 1040 and 0.1 < len(test) / (len(train) + len(test)) < 0.3
    assert not {d.name for d in train} & {d.name for d in test}
    assert {"jigs", "reels", "hpps", "waltzes"} <= {d.label for d in train}
    assert all(bytes(d.data).startswith(b"X:") for d in train + test)


@pytest.mark.skipif(not (DATA / "nottingham").is_dir(), reason="needs ../shared/data/nottingham")
def test_a_dataset_spec_is_read_from_the_data_root(monkeypatch):
    from omnibyte.data.labelled import read_labelled
    from omnibyte.data.nottingham import nottingham_documents

    monkeypatch.setenv("OMNIBYTE_DATA", str(DATA))
    corpus = read_labelled(["nottingham:test"])
    expected = nottingham_documents(DATA / "nottingham" / "ABC_cleaned", "test")
    assert corpus.names == [d.name for d in expected] and corpus.labels == [d.label for d in expected]
    monkeypatch.setenv("OMNIBYTE_DATA", str(DATA / "absent"))
    with pytest.raises(OmnibyteError, match="OMNIBYTE_DATA"):
        read_labelled(["nottingham:test"])

"""Media adapters: files standardised the way bGPT feeds media to a byte model.

* ``image_to_bmp``: any image Pillow reads -> a 32x32, 24-bit RGB BMP (54-byte header +
  32*32*3 pixel bytes = 3,126 bytes). The image is resized to exactly 32x32 (aspect ratio
  not kept, as bGPT does for CIFAR) with Pillow's bilinear filter.
* ``audio_to_wav``: a WAV file (read with the ``wave`` module; PCM of 8, 16, 24 or 32 bits,
  any rate, any channels) -> WAV at 8,000 Hz, mono, 8-bit unsigned PCM, exactly 1 second
  (8,000 frames; 44-byte header + 8,000 = 8,044 bytes). Channels are averaged, the rate is
  changed by linear interpolation with numpy (no anti-aliasing filter: fine for speech at
  these rates, not a studio resampler), longer audio is cut at 1 s, shorter is padded with
  silence (128, the 8-bit zero level).

Both accept bytes or a path; unreadable input is a one-line ``OmnibyteError``. Other audio
formats (MP3, FLAC, ...) are refused: convert them to WAV first.
"""
from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from omnibyte.errors import OmnibyteError

IMAGE_SIZE = 32
BMP_BYTES = 54 + IMAGE_SIZE * IMAGE_SIZE * 3
SAMPLE_RATE = 8000
DURATION_FRAMES = SAMPLE_RATE  # exactly one second
WAV_BYTES = 44 + DURATION_FRAMES
SILENCE = 128  # unsigned 8-bit PCM's zero level


def _read(data_or_path: bytes | str | Path) -> tuple[bytes, str]:
    """The bytes of the input and a name for error messages."""
    if isinstance(data_or_path, (bytes, bytearray, memoryview)):
        return bytes(data_or_path), "input"
    try:
        return Path(data_or_path).read_bytes(), str(data_or_path)
    except OSError as error:
        raise OmnibyteError(f"cannot read {data_or_path}: {error.strerror or error}") from None


def image_to_bmp(data_or_path: bytes | str | Path, size: int = IMAGE_SIZE) -> bytes:
    """Any image Pillow can read -> ``size`` x ``size`` 24-bit RGB BMP bytes."""
    data, name = _read(data_or_path)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            rgb = image.convert("RGB")
    except UnidentifiedImageError:
        raise OmnibyteError(f"{name}: not an image Pillow can read (unknown or unsupported format)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise OmnibyteError(f"{name}: not an image Pillow can read ({' '.join(str(error).split())[:120]})") from None
    return pixels_to_bmp(np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR)))


def _bmp_pixels(data: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise OmnibyteError(f"not a BMP Pillow can read ({' '.join(str(error).split())[:120]})") from None


def mirror_bmp(data: bytes) -> bytes:
    """A BMP (as ``pixels_to_bmp`` writes them) mirrored left to right: the usual training-set
    augmentation for images whose classes do not depend on the side (clothes, not digits)."""
    return pixels_to_bmp(_bmp_pixels(data)[:, ::-1])


def shift_bmp(data: bytes, right: int, down: int, fill: int = 0) -> bytes:
    """A BMP with its picture moved ``right`` and ``down`` pixels (negative: left, up), the
    uncovered edge filled with ``fill``: a translation for training-set augmentation."""
    pixels = _bmp_pixels(data)
    height, width = pixels.shape[:2]
    if abs(right) >= width or abs(down) >= height:
        raise OmnibyteError(f"cannot shift a {width}x{height} image by ({right}, {down}) pixels")
    moved = np.full_like(pixels, fill)
    moved[max(down, 0):height + min(down, 0), max(right, 0):width + min(right, 0)] = \
        pixels[max(-down, 0):height + min(-down, 0), max(-right, 0):width + min(-right, 0)]
    return pixels_to_bmp(moved)


def pixels_to_bmp(pixels: np.ndarray) -> bytes:
    """An ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB) uint8 array -> 24-bit BMP bytes."""
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="BMP")
    return buffer.getvalue()


def _pcm_to_float(frames: bytes, sample_width: int, channels: int) -> np.ndarray:
    """Interleaved PCM -> mono float samples in [-1, 1)."""
    if sample_width == 1:  # WAV's 8-bit samples are unsigned
        samples = np.frombuffer(frames, np.uint8).astype(np.float64) / 128.0 - 1.0
    elif sample_width == 3:  # 24-bit: widen to 32 by putting the 3 bytes in the top of an int32
        raw = np.frombuffer(frames, np.uint8).reshape(-1, 3)
        wide = np.zeros((len(raw), 4), np.uint8)
        wide[:, 1:] = raw
        samples = wide.view("<i4").reshape(-1).astype(np.float64) / 2.0**31
    elif sample_width in (2, 4):
        samples = np.frombuffer(frames, f"<i{sample_width}").astype(np.float64) / 2.0 ** (8 * sample_width - 1)
    else:
        raise ValueError(f"{8 * sample_width}-bit samples")
    usable = len(samples) - len(samples) % channels
    return samples[:usable].reshape(-1, channels).mean(axis=1)


def resample_linear(samples: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """``samples`` at ``rate`` Hz -> ``new_rate`` Hz by linear interpolation."""
    if rate == new_rate or len(samples) == 0:
        return samples
    count = max(int(round(len(samples) * new_rate / rate)), 1)
    times = np.arange(count) * (rate / new_rate)
    return np.interp(times, np.arange(len(samples)), samples)


def samples_to_wav(samples: np.ndarray, rate: int = SAMPLE_RATE, frames: int = DURATION_FRAMES) -> bytes:
    """Mono float samples in [-1, 1] at ``rate`` -> 8-bit unsigned WAV of exactly ``frames``
    frames at ``rate`` (cut, or padded with silence)."""
    levels = np.clip(np.round(np.asarray(samples, np.float64)[:frames] * 128.0 + 128.0), 0, 255).astype(np.uint8)
    padded = np.full(frames, SILENCE, np.uint8)
    padded[: len(levels)] = levels
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(rate)
        out.writeframes(padded.tobytes())
    return buffer.getvalue()


def delay_wav(data: bytes, frames: int) -> bytes:
    """A standardised WAV (8-bit mono, as ``audio_to_wav`` writes them) with ``frames`` of
    silence put before the sound and as many cut from its end: the same length, the sound
    starting later. A training-set augmentation for recordings that start at different times."""
    try:
        with wave.open(io.BytesIO(data), "rb") as source:
            shape = (source.getnchannels(), source.getsampwidth())
            rate, samples = source.getframerate(), source.readframes(source.getnframes())
    except (wave.Error, EOFError) as error:
        raise OmnibyteError(f"not a WAV file the wave module can read ({error})") from None
    if shape != (1, 1):
        raise OmnibyteError(f"delay_wav takes 8-bit mono WAV (as audio_to_wav writes), not {shape[0]} channels "
                            f"of {8 * shape[1]} bits")
    if not 0 <= frames <= len(samples):
        raise OmnibyteError(f"cannot delay {len(samples)} frames by {frames}")
    levels = np.frombuffer(bytes([SILENCE]) * frames + samples[:len(samples) - frames], np.uint8)
    return samples_to_wav(levels.astype(np.float64) / 128.0 - 1.0, rate, len(levels))


def audio_to_wav(data_or_path: bytes | str | Path) -> bytes:
    """A WAV file -> WAV at 8,000 Hz, mono, 8-bit unsigned, exactly 1 second."""
    data, name = _read(data_or_path)
    try:
        with wave.open(io.BytesIO(data), "rb") as source:
            channels, width, rate = source.getnchannels(), source.getsampwidth(), source.getframerate()
            frames = source.readframes(source.getnframes())
        samples = _pcm_to_float(frames, width, channels)
    except (wave.Error, EOFError, ValueError) as error:
        raise OmnibyteError(f"{name}: not a PCM WAV file the wave module can read ({error}); "
                            "convert other audio formats to WAV first") from None
    if rate <= 0:
        raise OmnibyteError(f"{name}: WAV header gives a sample rate of {rate}")
    return samples_to_wav(resample_linear(samples, rate, SAMPLE_RATE))

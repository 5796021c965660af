"""Augmented training copies: more training files made from the given ones, for classes that
survive the change (a mirrored coat is still a coat, a spoken digit started later is still
that digit; a mirrored handwritten digit may not be).

A copy is a pipeline of named augmentations applied in order (``"mirror+shift"``), and a list
of pipelines makes one copy each: ``omnibyte train --augment mirror,shift,mirror+shift`` adds
three copies of every training file. Only the training part gets copies, after the
validation split, so validation never holds a copy of a training file. The random draws (how
far to move or delay) come from the seed, the file's place and the copy's number, so a run
makes the same files every time.

| name | takes | does |
|---|---|---|
| mirror | 24-bit BMP (``omnibyte media to-bmp``) | mirrors the picture left to right |
| shift | 24-bit BMP | moves the picture up to ``MAX_SHIFT`` pixels each way, filling with black |
| delay | 8-bit mono WAV (``omnibyte media to-wav``) | starts the sound up to ``MAX_DELAY`` frames later, cutting only trailing silence; a recording with no trailing silence gets no copy |
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from omnibyte.data.corpus import ByteCorpus
from omnibyte.data.sources import Document
from omnibyte.errors import OmnibyteError
from omnibyte.media import SILENCE, delay_wav, mirror_bmp, shift_bmp

MAX_SHIFT = 2  # pixels: Fashion-MNIST's 28x28 garments sit in 2 pixels of background in 32x32
MAX_DELAY = 1200  # frames: 0.15 s at 8 kHz
WAV_HEADER = 44

Augmentation = Callable[[bytes, np.random.Generator], "bytes | None"]


def _bmp(data: bytes) -> bytes:
    """``data`` if it is a 24-bit BMP (the kind ``mirror_bmp``/``shift_bmp`` write back)."""
    if data[:2] != b"BM" or len(data) < 30 or int.from_bytes(data[28:30], "little") != 24:
        raise OmnibyteError("not a 24-bit BMP (make one with `omnibyte media to-bmp`)")
    return data


def _wav(data: bytes) -> bytes:
    """``data`` if it is a WAV file (``delay_wav`` checks that it is 8-bit mono)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise OmnibyteError("not a WAV file (make one with `omnibyte media to-wav`)")
    return data


def _mirror(data: bytes, rng: np.random.Generator) -> bytes:
    return mirror_bmp(_bmp(data))


def _shift(data: bytes, rng: np.random.Generator) -> bytes:
    right, down = (int(value) for value in rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, 2))
    return shift_bmp(_bmp(data), right, down)


def _delay(data: bytes, rng: np.random.Generator) -> bytes | None:
    _wav(data)
    trailing_silence = len(data) - max(len(data.rstrip(bytes([SILENCE]))), WAV_HEADER)
    room = min(MAX_DELAY, trailing_silence)
    return delay_wav(data, int(rng.integers(1, room + 1))) if room > 0 else None


AUGMENTATIONS: dict[str, Augmentation] = {"mirror": _mirror, "shift": _shift, "delay": _delay}


def parse_augment(text: str) -> tuple[tuple[str, ...], ...]:
    """``"mirror,shift,mirror+shift"`` -> one pipeline of names per copy; "" -> none."""
    pipelines = tuple(tuple(name.strip() for name in item.split("+")) for item in text.split(",") if item.strip())
    for pipeline in pipelines:
        for name in pipeline:
            if name not in AUGMENTATIONS:
                raise OmnibyteError(f"unknown augmentation {name!r} in {text!r} (choose from "
                                    f"{', '.join(AUGMENTATIONS)}; join them with + in one copy, "
                                    "separate copies with commas)")
    return pipelines


def augment_file(data: bytes, pipeline: Sequence[str], rng: np.random.Generator) -> bytes | None:
    """One copy of ``data`` through ``pipeline``, or None where an augmentation has no room."""
    for name in pipeline:
        data = AUGMENTATIONS[name](data, rng)
        if data is None:
            return None
    return data


def augmented(corpus: ByteCorpus, pipelines: Sequence[Sequence[str]], seed: int = 0) -> ByteCorpus:
    """``corpus`` plus one copy of each document per pipeline, named ``NAME[augmented K]``
    and labelled like it; copies come after all originals."""
    if not pipelines:
        return corpus
    originals = [corpus.document(index) for index in range(corpus.num_documents)]
    copies: list[Document] = []
    for index, document in enumerate(originals):
        for number, pipeline in enumerate(pipelines):
            rng = np.random.default_rng((seed, index, number))
            try:
                copy = augment_file(bytes(document.data), pipeline, rng)
            except OmnibyteError as error:
                raise OmnibyteError(f"--augment {'+'.join(pipeline)}: {document.name}: {error}") from None
            if copy is not None:
                copies.append(Document(f"{document.name}[augmented {number}]", copy, document.label))
    return ByteCorpus(originals + copies, corpus.skipped)

"""Answering questions about images with a model trained for the ``answer`` task, and scoring it.

``answer_question`` turns a user's image into the bytes the model was trained on (Pillow reads
any image; it is resized to the recorded size and written in the recorded encoding, see
``omnibyte.data.shapes_vqa.encode_image``), appends the question and decodes the answer greedily
with the cache, through ``omnibyte.apps.convert.convert_sources`` (the conversion decoder).

``answer_accuracy`` is the measure of the task: exact match of the answer, overall and per
question type (the type is read from the record name that ``datasets shapes-vqa`` gives).
"""
from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, UnidentifiedImageError

from omnibyte.apps.convert import convert_sources
from omnibyte.data.pairs import PairRecord
from omnibyte.data.shapes_vqa import encode_image, parse_record_name, question_source
from omnibyte.errors import OmnibyteError
from omnibyte.models.base import ByteModel
from omnibyte.tasks import AnswerTask, load_task_of

MAX_ANSWER_BYTES = 32  # the longest answer ("triangle") and its end marker fit many times over


def answer_task(directory: str | Path) -> AnswerTask:
    """The answer task a saved model was trained for; any other model is refused in one line."""
    return load_task_of(directory, AnswerTask, "question answering")


def image_bytes_for(task: AnswerTask, data: bytes, name: str = "image") -> bytes:
    """Image file bytes as the model saw images in training: its encoding, at its size."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return encode_image(image, task.encoding, task.image_size)
    except UnidentifiedImageError:
        raise OmnibyteError(f"{name}: not an image Pillow can read (unknown or unsupported format)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise OmnibyteError(f"{name}: not an image Pillow can read ({' '.join(str(error).split())[:120]})") from None


def check_question(question: str) -> bytes:
    """The question as the ASCII bytes the records hold; empty or non-ASCII is one line."""
    text = question.strip()
    if not text:
        raise OmnibyteError("the question is empty")
    if not text.isascii() or not text.isprintable():
        raise OmnibyteError("the question must be printable ASCII text (the questions the model learnt are)")
    return text.encode("ascii")


def answer_sources(model: ByteModel, sources: Sequence[bytes], batch_size: int = 16,
                   fast: bool = False) -> list[str | None]:
    """Greedy answers to record sources (image + question); None where the model never ended one."""
    results = convert_sources(model, sources, MAX_ANSWER_BYTES, batch_size, fast)
    return [result.output.decode("latin-1") if result.finished else None for result in results]


def answer_question(model: ByteModel, task: AnswerTask, image: bytes, question: str, fast: bool = False,
                    name: str = "image") -> str:
    """The model's answer to ``question`` about the image file bytes ``image``."""
    text = check_question(question).decode("ascii")
    source = question_source(image_bytes_for(task, image, name), text)
    (result,) = answer_sources(model, [source], batch_size=1, fast=fast)
    if result is None:
        raise OmnibyteError(f"the model did not finish an answer within {MAX_ANSWER_BYTES} bytes")
    return result


def answer_accuracy(records: Sequence[PairRecord], answers: Sequence[str | None]) -> dict[str, Any]:
    """Exact-match accuracy of ``answers`` (None: no answer, wrong) against the records'
    targets, overall and per question type (``by_type``: records and accuracy)."""
    if len(records) != len(answers):
        raise ValueError(f"{len(records)} records but {len(answers)} answers")
    by_type: dict[str, list[bool]] = defaultdict(list)
    for record, answer in zip(records, answers):
        parsed = parse_record_name(record.name)
        kind = parsed[0] if parsed else "other"
        by_type[kind].append(answer is not None and answer.encode("latin-1") == record.target)
    right = [flag for flags in by_type.values() for flag in flags]
    return {"records": len(right), "accuracy": sum(right) / len(right) if right else None,
            "by_type": {kind: {"records": len(flags), "accuracy": sum(flags) / len(flags)}
                        for kind, flags in sorted(by_type.items())}}


def evaluate_answers(model: ByteModel, records: Sequence[PairRecord], batch_size: int = 16,
                     fast: bool = False) -> tuple[dict[str, Any], list[str | None]]:
    """``answer_accuracy`` of the model's greedy answers to ``records``, and the answers."""
    answers = answer_sources(model, [record.source for record in records], batch_size, fast)
    return answer_accuracy(records, answers), answers

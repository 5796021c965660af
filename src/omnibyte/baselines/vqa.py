"""A CNN + LSTM classifier for Shapes-VQA: the non-byte baseline of the visual Q&A benchmark.

MBLM compares its byte models on CLEVR with this kind of model: a small CNN reads the decoded
image, an LSTM reads the question as words, and an MLP over both picks one answer of the
answer vocabulary (a classification head, never a generated string). It trains on the same
records as ``omnibyte train --task answer`` (the folders ``omnibyte datasets shapes-vqa``
writes), reading the pixels of the ``pixels`` (raw RGB) or ``bmp`` encoding, and is scored with
``omnibyte.apps.answer.answer_accuracy``, the byte models' measure, so both are comparable.

* ``AnswerVocabulary``: the answers of the training records, sorted; an answer never seen in
  training has no class (the model can never give it: it counts as wrong);
* ``QuestionVocabulary``: the words of the training questions (0: padding, 1: unknown word);
* ``CnnLstm``: 3x3 convolutions with two coordinate channels (so "left of" can be read from
  where features are), pooled to a 4x4 map, an LSTM over word embeddings, concatenation and a
  two-layer MLP;
* ``train_baseline``: AdamW with warmup and a cosine decay whose progress is the larger of
  steps done / ``steps`` and seconds spent / ``seconds``, so a wall-clock budget ends the
  schedule as a step budget would (the byte models' bench does the same by recalibrating);
  given validation records it keeps the weights of the best validation accuracy.
"""
from __future__ import annotations

import dataclasses
import io
import math
import re
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from omnibyte.apps.answer import answer_accuracy
from omnibyte.data.pairs import PairRecord
from omnibyte.data.shapes_vqa import parse_record_name
from omnibyte.devices import resolve_device
from omnibyte.errors import OmnibyteError

PIXEL_ENCODINGS = ("pixels", "bmp")  # encodings whose pixels are read back exactly
PAD_WORD, UNKNOWN_WORD = 0, 1
WORD_PATTERN = re.compile(r"[a-z0-9]+|\?")
MIN_LR_RATIO = 0.1
POOLED_SIDE = 4  # the CNN's feature map is pooled to 4x4 cells before the MLP


# ---- reading records ---------------------------------------------------------------------------

def image_length(source: bytes, encoding: str, size: int) -> int:
    """Bytes of the image at the start of a record's source (the question follows)."""
    if encoding == "pixels":
        return size * size * 3
    if encoding == "bmp":
        return int.from_bytes(source[2:6], "little")  # the BMP header's file size
    raise OmnibyteError(f"the baseline reads the pixels of {' or '.join(PIXEL_ENCODINGS)} records, "
                        f"not {encoding}")


def record_parts(record: PairRecord) -> tuple[bytes, str, int, str]:
    """(image bytes, encoding, size, question text) of a Shapes-VQA record's source."""
    parsed = parse_record_name(record.name)
    if parsed is None:
        raise OmnibyteError(f"record {record.name or '(unnamed)'} is not a question record "
                            "(write them with omnibyte datasets shapes-vqa)")
    _, encoding, size = parsed
    length = image_length(record.source, encoding, size)
    if not 0 < length <= len(record.source):
        raise OmnibyteError(f"record {record.name}: its source of {len(record.source)} bytes does not start with "
                            f"a {encoding} image of {size}x{size}")
    return record.source[:length], encoding, size, record.source[length:].decode("ascii")


def split_source(record: PairRecord) -> tuple[np.ndarray, str]:
    """(RGB pixels [size, size, 3] uint8, question text) of a Shapes-VQA record."""
    image, encoding, size, question = record_parts(record)
    if encoding == "pixels":
        pixels = np.frombuffer(image, dtype=np.uint8).reshape(size, size, 3)
    else:
        with Image.open(io.BytesIO(image)) as opened:
            pixels = np.asarray(opened.convert("RGB"))
    if pixels.shape != (size, size, 3):
        raise OmnibyteError(f"record {record.name}: its image is {pixels.shape}, not {size}x{size} RGB")
    return pixels, question


def question_words(question: str) -> list[str]:
    return WORD_PATTERN.findall(question.lower())


class AnswerVocabulary:
    """The answers a classifier can give: class ``i`` is ``answers[i]``."""

    def __init__(self, answers: Sequence[str]):
        self.answers = tuple(sorted(set(answers)))
        self.index = {answer: number for number, answer in enumerate(self.answers)}

    @classmethod
    def of_records(cls, records: Sequence[PairRecord]) -> AnswerVocabulary:
        return cls([record.target.decode("latin-1") for record in records])

    def __len__(self) -> int:
        return len(self.answers)

    def label(self, answer: str) -> int:
        """The class of ``answer``; -1 for an answer no class gives."""
        return self.index.get(answer, -1)

    def answer(self, label: int) -> str:
        return self.answers[label]


class QuestionVocabulary:
    """Word ids of the questions: 0 pads, 1 stands for a word never seen in training."""

    def __init__(self, words: Sequence[str]):
        self.words = tuple(sorted(set(words)))
        self.index = {word: number + 2 for number, word in enumerate(self.words)}

    @classmethod
    def of_records(cls, records: Sequence[PairRecord]) -> QuestionVocabulary:
        return cls([word for record in records for word in question_words(record_parts(record)[3])])

    def __len__(self) -> int:
        return len(self.words) + 2

    def encode(self, question: str) -> list[int]:
        return [self.index.get(word, UNKNOWN_WORD) for word in question_words(question)] or [UNKNOWN_WORD]


@dataclasses.dataclass
class Examples:
    """Records as tensors: each distinct image once, and per record its image, words and label."""

    images: torch.Tensor  # [images, 3, size, size] uint8
    image_index: torch.Tensor  # [records]
    words: torch.Tensor  # [records, longest question] word ids, 0-padded
    lengths: torch.Tensor  # [records]
    labels: torch.Tensor  # [records]; -1: an answer outside the vocabulary

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> Examples:
        return Examples(*(getattr(self, field.name).to(device) for field in dataclasses.fields(self)))


def make_examples(records: Sequence[PairRecord], questions: QuestionVocabulary,
                  answers: AnswerVocabulary) -> Examples:
    if not records:
        raise OmnibyteError("no question records to read")
    images: dict[bytes, int] = {}
    pictures, image_index, encoded, labels = [], [], [], []
    for record in records:
        pixels, question = split_source(record)
        key = pixels.tobytes()
        if key not in images:  # a scene's questions share its image
            images[key] = len(pictures)
            pictures.append(pixels)
        image_index.append(images[key])
        encoded.append(questions.encode(question))
        labels.append(answers.label(record.target.decode("latin-1")))
    words = torch.zeros(len(encoded), max(len(row) for row in encoded), dtype=torch.long)
    for row, ids in enumerate(encoded):
        words[row, : len(ids)] = torch.tensor(ids)
    return Examples(torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).contiguous(),
                    torch.tensor(image_index), words, torch.tensor([len(row) for row in encoded]),
                    torch.tensor(labels))


# ---- the model ---------------------------------------------------------------------------------

def conv_block(channels_in: int, channels_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False),
                         nn.BatchNorm2d(channels_out), nn.ReLU(inplace=True))


class CnnLstm(nn.Module):
    """CNN image features and the LSTM's last question state, concatenated, into an MLP head."""

    def __init__(self, words: int, answers: int, width: int = 64, hidden: int = 256, embedding: int = 64):
        super().__init__()
        self.cnn = nn.Sequential(conv_block(3 + 2, width, 1), conv_block(width, width, 2),
                                 conv_block(width, 2 * width, 2), conv_block(2 * width, 2 * width, 1),
                                 nn.AdaptiveAvgPool2d(POOLED_SIDE))
        self.image_projection = nn.Linear(2 * width * POOLED_SIDE**2, hidden)
        self.embedding = nn.Embedding(words, embedding, padding_idx=PAD_WORD)
        self.lstm = nn.LSTM(embedding, hidden, batch_first=True)
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, answers))

    def forward(self, images: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits [batch, answers] of uint8 images [batch, 3, H, W] and word ids [batch, T]."""
        pixels = images.float() / 127.5 - 1.0
        batch, _, height, width = pixels.shape
        shape = (batch, 1, height, width)
        rows = torch.linspace(-1, 1, height, device=pixels.device).view(1, 1, height, 1).expand(shape)
        columns = torch.linspace(-1, 1, width, device=pixels.device).view(1, 1, 1, width).expand(shape)
        seen = self.cnn(torch.cat([pixels, rows, columns], dim=1)).flatten(1)
        packed = nn.utils.rnn.pack_padded_sequence(self.embedding(words), lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        _, (state, _) = self.lstm(packed)
        return self.head(torch.cat([F.relu(self.image_projection(seen)), state[-1]], dim=1))


# ---- training and answering --------------------------------------------------------------------

@dataclasses.dataclass
class BaselineConfig:
    width: int = 64  # channels of the first convolutions (twice that after the second stride)
    hidden: int = 256  # LSTM state and MLP width
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    steps: int = 100_000  # the schedule's length in steps
    seconds: float = 0.0  # and in wall-clock seconds (0: no limit); whichever ends first
    warmup_steps: int = 100
    eval_every: int = 0  # steps between validations keeping the best model (0: keep the last)
    seed: int = 0
    device: str = "auto"


@dataclasses.dataclass
class TrainedBaseline:
    model: CnnLstm
    questions: QuestionVocabulary
    answers: AnswerVocabulary
    stats: dict[str, Any]


def learning_rate(config: BaselineConfig, step: int, elapsed: float) -> float:
    """Linear warmup, then a cosine from ``lr`` to ``MIN_LR_RATIO * lr`` over steps or seconds."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
    if config.seconds:
        progress = max(progress, elapsed / config.seconds)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * cosine)


def train_baseline(records: Sequence[PairRecord], config: BaselineConfig = BaselineConfig(),
                   validation: Sequence[PairRecord] = ()) -> TrainedBaseline:
    """A ``CnnLstm`` trained on ``records`` for ``config.steps`` steps or ``config.seconds``.
    With ``validation`` records and ``config.eval_every``, the weights of the best validation
    accuracy (checked every ``eval_every`` steps and at the end) are the ones returned, as the
    byte models' trainer keeps its best model by validation loss."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    questions, answers = QuestionVocabulary.of_records(records), AnswerVocabulary.of_records(records)
    examples = make_examples(records, questions, answers).to(device)
    model = CnnLstm(len(questions), len(answers), config.width, config.hidden).to(device)
    trained = TrainedBaseline(model, questions, answers, {})
    checked = make_examples(validation, questions, answers).to(device) if validation and config.eval_every else None
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    order = torch.Generator(device="cpu").manual_seed(config.seed)
    started, step, loss = time.time(), 0, None
    while True:
        done = step >= config.steps or bool(config.seconds and time.time() - started >= config.seconds)
        if checked is not None and step > 0 and (done or step % config.eval_every == 0):
            accuracy = float((predicted_labels(model, checked) == checked.labels).float().mean())
            if best is None or accuracy > best[0]:
                best = (accuracy, step, {name: value.detach().clone() for name, value in model.state_dict().items()})
        if done:
            break
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step, time.time() - started)
        chosen = torch.randint(len(examples), (config.batch_size,), generator=order).to(device)
        logits = model(examples.images[examples.image_index[chosen]], examples.words[chosen],
                       examples.lengths[chosen])
        loss = F.cross_entropy(logits, examples.labels[chosen])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
    trained_seconds = time.time() - started
    if best is not None:
        model.load_state_dict(best[2])
    trained.stats = {"steps": step, "train_seconds": round(trained_seconds, 1),
                     "last_loss": None if loss is None else float(loss.detach()),
                     "best_step": best[1] if best else step, "val_accuracy": best[0] if best else None,
                     "parameters": sum(p.numel() for p in model.parameters()), "train_records": len(examples),
                     "train_images": len(examples.images), "answers": len(answers)}
    return trained


@torch.no_grad()
def predicted_labels(model: CnnLstm, examples: Examples, batch_size: int = 256) -> torch.Tensor:
    """The class the model picks for each example (in eval mode), on the examples' device."""
    model.eval()
    labels = []
    for first in range(0, len(examples), batch_size):
        rows = torch.arange(first, min(first + batch_size, len(examples)), device=examples.labels.device)
        logits = model(examples.images[examples.image_index[rows]], examples.words[rows], examples.lengths[rows])
        labels.append(logits.argmax(-1))
    return torch.cat(labels)


def predict_answers(trained: TrainedBaseline, records: Sequence[PairRecord], batch_size: int = 256) -> list[str]:
    """The answer the classifier picks for each record."""
    device = next(trained.model.parameters()).device
    examples = make_examples(records, trained.questions, trained.answers).to(device)
    return [trained.answers.answer(label) for label in predicted_labels(trained.model, examples, batch_size).tolist()]


def evaluate_baseline(trained: TrainedBaseline, records: Sequence[PairRecord],
                      batch_size: int = 256) -> tuple[dict[str, Any], list[str]]:
    """``answer_accuracy`` (the byte models' measure) of the classifier's answers, and the answers."""
    answers = predict_answers(trained, records, batch_size)
    return answer_accuracy(records, answers), answers

"""Helpers shared by the model tests."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from omnibyte.data import ByteCorpus, Document
from omnibyte.models import BOS


def random_tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Random byte ids with a start-of-document token in front, reproducible from ``seed``."""
    tokens = torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))
    tokens[:, 0] = BOS
    return tokens


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, above all on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fox_corpus() -> ByteCorpus:
    """One small, very repetitive document: a model learns it within a few steps."""
    return ByteCorpus([Document("fox.txt", b"the quick brown fox jumps over the lazy dog. " * 200)])


def word_text(size: int, seed: int = 0, words_per_line: int = 8) -> bytes:
    """English-like lines from a small vocabulary: data a briefly trained model knows well."""
    rng = np.random.default_rng(seed)
    words = b"the quick brown fox jumps over lazy dog and cat runs far away from home".split()
    out = bytearray()
    while len(out) < size:
        out += b" ".join(words[i] for i in rng.integers(0, len(words), words_per_line)) + b".\n"
    return bytes(out[:size])


def train_briefly(model, data: bytes, steps: int = 120, window: int = 64, seed: int = 0, lr: float = 3e-3):
    """A few Adam steps on random windows of ``data``; returns the model in eval mode."""
    torch.manual_seed(seed)
    tokens = torch.tensor(list(data))
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(tokens) - window, (16,), generator=generator)
        targets = torch.stack([tokens[start : start + window] for start in starts])
        inputs = torch.cat([torch.full((16, 1), BOS), targets[:, :-1]], dim=1)
        loss = model.loss(inputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


class Crash(Exception):
    """What a test raises inside training to stand for ``kill -9``."""


def crash_at(step: int):
    """A trainer callback that crashes once the trainer reaches ``step``."""
    def callback(trainer) -> None:
        if trainer.step == step:
            raise Crash()
    return callback

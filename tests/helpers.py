"""Helpers shared by the model tests."""
from __future__ import annotations

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

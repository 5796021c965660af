"""The speed and memory options of training against the default path: chunked cross-entropy,
activation checkpointing (per block, selective), the attention backend, building on meta.
Each must give the default's loss and gradients (to float32 rounding)."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from omnibyte.devices import attention_backend
from omnibyte.errors import OmnibyteError
from omnibyte.models import build_model
from omnibyte.models.base import chunked_cross_entropy, masked_cross_entropy
from omnibyte.models.validation import ConfigError
from omnibyte.train import parallel
from omnibyte.train.trainer import TrainConfig
from helpers import random_tokens, one_thread  # noqa: F401 (one_thread is a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def loss_and_gradients(model, tokens, targets, mask=None):
    model.zero_grad(set_to_none=True)
    loss = model.loss(tokens, targets, mask)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same(actual, expected, atol=1e-6):
    loss, grads = actual
    torch.testing.assert_close(loss, expected[0], atol=atol, rtol=0)
    assert grads.keys() == expected[1].keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected[1][name], atol=atol, rtol=1e-5, msg=name)


@pytest.fixture
def batch():
    tokens = random_tokens(2, 40, seed=1)
    targets = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 40)))
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[0, :9] = False
    return tokens, targets, mask


@pytest.mark.parametrize("masked", [False, True], ids=["all", "masked"])
@pytest.mark.parametrize("chunk", [7, 80, 1000])  # uneven, exact, larger than the batch
def test_chunked_cross_entropy_equals_the_plain_loss(batch, masked, chunk):
    tokens, targets, mask = batch
    mask = mask if masked else None
    model = build_model("flat", "tiny", seed=0).train()
    plain = loss_and_gradients(model, tokens, targets, mask)
    model.loss_chunk = chunk
    assert_same(loss_and_gradients(model, tokens, targets, mask), plain)
    with torch.no_grad():  # without autograd nothing is checkpointed
        hidden = model.encode(tokens)
        torch.testing.assert_close(chunked_cross_entropy(hidden, model.head, targets, mask, chunk),
                                   masked_cross_entropy(model.head(hidden), targets, mask), atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["block", "selective"])
@pytest.mark.parametrize("arch,preset", [("flat", "tiny"), ("multiscale", "tiny-mamba")])
def test_activation_checkpointing_gives_the_same_gradients(batch, mode, arch, preset):
    tokens, targets, mask = batch
    model = build_model(arch, preset, seed=0).train()
    reference = loss_and_gradients(model, tokens, targets, mask)
    checkpointed = copy.deepcopy(model)
    parallel.apply_activation_checkpointing(checkpointed.shard_units(), mode)
    assert all(unit.forward.__name__ == "forward" for unit in checkpointed.shard_units())  # wrapped in place
    assert list(checkpointed.state_dict()) == list(model.state_dict())  # names (checkpoints) unchanged
    assert_same(loss_and_gradients(checkpointed, tokens, targets, mask), reference)
    with torch.no_grad():  # validation and decoding run the plain forward
        torch.testing.assert_close(checkpointed.eval()(tokens), model.eval()(tokens), atol=0, rtol=0)


def test_math_attention_backend_gives_the_default_loss(batch):
    tokens, targets, mask = batch
    model = build_model("flat", "tiny", seed=0).train()
    reference = loss_and_gradients(model, tokens, targets, mask)
    with attention_backend("math"):
        assert_same(loss_and_gradients(model, tokens, targets, mask), reference, atol=1e-5)
    with pytest.raises(OmnibyteError, match="unknown attention backend"):
        attention_backend("fast")


def test_build_on_device_equals_an_eager_seeded_build():
    eager = build_model("patch", "tiny", seed=4)
    lazy = parallel.build_on_device(lambda: build_model("patch", "tiny"), "cpu", seed=4)
    state = lazy.state_dict()
    assert all(torch.equal(tensor, state[name]) for name, tensor in eager.state_dict().items())
    before = torch.get_rng_state()
    parallel.build_on_device(lambda: build_model("flat", "tiny"), "cpu", seed=5)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's generator is left alone


@pytest.mark.parametrize("field,value", [("parallel", "zero3"), ("activation_checkpointing", "all"),
                                         ("attention_backend", "fa3"), ("loss_chunk", -1)])
def test_bad_parallel_options_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig.from_dict({field: value})


def test_a_sharded_checkpoint_inside_the_data_is_not_read(tmp_path):
    """A ddp/fsdp run killed before it saved a model still holds checkpoints/step-N folders:
    their shards are never training data."""
    from omnibyte.data import ByteCorpus

    (tmp_path / "notes.txt").write_bytes(b"some text " * 20)
    step = tmp_path / "runs" / "x" / "checkpoints" / "step-0000000003"
    step.mkdir(parents=True)
    for name in ("trainer.json", ".metadata", "__0_0.distcp"):
        (step / name).write_bytes(b"{}" if name == "trainer.json" else bytes(range(256)) * 4)
    corpus = ByteCorpus.from_paths([tmp_path])
    assert [Path(name).name for name in corpus.names] == ["notes.txt"]
    assert corpus.skipped.counts["omnibyte run or model folder"] == 1

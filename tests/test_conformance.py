"""Every check on every registered family: a new family is tested by registering it.

The families come from ``omnibyte.models.registry.ARCHITECTURES`` (their ``tiny`` preset), plus
variants that reach other code paths (3 stages, Mamba stages, multi-query attention). Each
check compares a path with a simple reference: decoder = full forward (at ragged per-row
positions, eager and fast), batched = one by one = speculative (or its plain fallback), saved =
loaded, compressed -> decompressed = input, ``head(encode)`` = forward.
"""
import json
import warnings

import numpy as np
import pytest
import torch

from omnibyte.apps.compress import compress, decompress
from omnibyte.models import ARCHITECTURES, build_model
from omnibyte.models.base import BOS, ByteModel, Decoder
from omnibyte.models.graphs import StepCompileWarning
from omnibyte.models.serialization import load_model, save_model
from helpers import random_tokens, one_thread  # noqa: F401 (one_thread is a fixture)

VARIANTS = {
    **{arch: (arch, "tiny", {}) for arch in ARCHITECTURES},
    "flat-mqa": ("flat", "tiny", {"num_key_value_heads": 1}),
    "multiscale-3": ("multiscale", "tiny-3", {}),
    "multiscale-mamba": ("multiscale", "tiny-mamba", {}),  # Mamba at the top
    "multiscale-mamba-inner": ("multiscale", "tiny-mamba", {"stages": [  # Mamba in the byte stage
        dict(patch_size=16, hidden_size=32, num_layers=1, num_query_heads=2, num_key_value_heads=1),
        dict(patch_size=4, hidden_size=32, num_layers=2, block="mamba")]}),
    # BLT: gated patch memory beside a windowed latent; the entropy patcher with a tiny random
    # flat entropy model (its threshold and min/max sizes make rows close patches at varying bytes)
    "blt-memory": ("blt", "tiny", {"latent": {"hidden_size": 48, "num_layers": 2, "num_query_heads": 2,
                                               "num_key_value_heads": 2, "window": 2, "memory_slots": 3}}),
    "blt-entropy": ("blt", "tiny", {"patching": {"scheme": "entropy", "threshold": 0.0, "min_patch_size": 2,
                                                 "max_patch_size": 5},
                                    "entropy_config": {"hidden_size": 32, "num_layers": 1, "num_query_heads": 2,
                                                       "num_key_value_heads": 1, "max_sequence_length": 16}}),
    "blt-differential": ("blt", "tiny", {"differential_attention": True}),
    "flat-differential": ("flat", "tiny", {"differential_attention": True}),  # layers.DifferentialHeads
    "multiscale-differential": ("multiscale", "tiny", {"stages": [
        dict(patch_size=256, hidden_size=64, num_layers=2, num_query_heads=4, num_key_value_heads=2,
             differential_attention=True),
        dict(patch_size=4, hidden_size=32, num_layers=1, num_query_heads=2, num_key_value_heads=2,
             differential_attention=True)]}),
}
RAGGED = [7, 1, 13]  # prompt lengths of three rows: unit boundaries fall at different steps

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=list(VARIANTS))
def model(request) -> ByteModel:
    arch, preset, overrides = VARIANTS[request.param]
    torch.manual_seed(0)
    return build_model(arch, preset, **overrides).eval()


def close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=2e-5, rtol=2e-5)


def test_every_registered_family_has_a_tiny_preset():
    for arch, (model_class, presets) in ARCHITECTURES.items():
        assert model_class.arch == arch and "tiny" in presets


@pytest.mark.parametrize("fast", [False, True], ids=["eager", "fast"])
def test_decoder_equals_full_forward_at_ragged_positions(model, fast):
    check_decoder_against_full_forward(model, fast=fast)


@pytest.mark.slow  # torch.compile of every piece takes 10-30 s a family on 2 CPU cores
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_compiled_decoder_equals_full_forward(arch):
    torch.manual_seed(0)
    with warnings.catch_warnings():  # a piece that fell back to running uncompiled fails the test
        warnings.simplefilter("error", StepCompileWarning)
        check_decoder_against_full_forward(build_model(arch, "tiny").eval(), fast=True, compile=True)


def check_decoder_against_full_forward(model: ByteModel, **options) -> None:
    tokens = random_tokens(3, 48, seed=1)
    with torch.no_grad():
        full = model(tokens)
        decoder = model.decoder(3, 48, **options)
        assert isinstance(decoder, Decoder)
        logits = decoder.prefill(tokens[:, :max(RAGGED)], RAGGED)
        close(logits, torch.stack([full[row, length - 1] for row, length in enumerate(RAGGED)]))
        for k in range(40 - max(RAGGED)):
            column = torch.stack([tokens[row, length + k] for row, length in enumerate(RAGGED)])
            logits = decoder.step(column)
            close(logits, torch.stack([full[row, length + k] for row, length in enumerate(RAGGED)]))
        assert decoder.lengths.tolist() == [length + 40 - max(RAGGED) for length in RAGGED]
        # restart row 1 alone; rows 0 and 2 keep their context
        decoder.reset([1])
        logits = decoder.prefill(tokens[:, :9], [0, 9, 0])
        close(logits[1], full[1, 8])
        logits = decoder.step(torch.stack([tokens[0, 34], tokens[1, 9], tokens[2, 40]]))
        close(logits, torch.stack([full[0, 34], full[1, 9], full[2, 40]]))


def test_no_position_sees_a_later_token(model):
    tokens = random_tokens(1, 24, seed=2)
    with torch.no_grad():
        reference = model(tokens)
        for t in (1, 5, 8, 16, 23):
            changed = tokens.clone()
            changed[0, t] = (changed[0, t] + 1) % 256
            logits = model(changed)
            torch.testing.assert_close(logits[:, :t], reference[:, :t], atol=0, rtol=0)
            assert not torch.allclose(logits[:, t:], reference[:, t:])


@pytest.mark.parametrize("options", [dict(temperature=0), dict(temperature=0.9, top_k=40, top_p=0.95)],
                         ids=["greedy", "sampled"])
def test_batched_generation_equals_one_by_one(model, options):
    prompts = [b"def f(x):", b"", b"abc", b"the quick brown fox"]
    batched = model.generate(prompts, max_new_bytes=20, seed=7, **options)
    assert isinstance(batched, list) and [len(sample) for sample in batched] == [20] * 4
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt, max_new_bytes=20, seed=7 + row, **options)
        assert isinstance(alone, bytes) and alone == batched[row]
    assert model.generate(prompts, max_new_bytes=20, seed=7, fast=True, **options) == batched
    streamed = b"".join(model.stream(prompts[0], max_new_bytes=20, seed=7, **options))
    assert streamed == batched[0]
    # speculative decoding where the decoder supports it, plain decoding otherwise: same bytes
    for fast in (False, True):
        assert model.generate(prompts, max_new_bytes=20, seed=7, fast=fast, speculative=True, **options) == batched
    assert b"".join(model.stream(prompts[0], max_new_bytes=20, seed=7, speculative=True, **options)) == batched[0]


def test_greedy_generation_follows_the_full_forward(model):
    sample = model.generate(b"hello", max_new_bytes=6, temperature=0)
    tokens = torch.tensor([[BOS, *b"hello", *sample]])
    with torch.no_grad():
        expected = model(tokens)[0, 5:-1].argmax(-1)
    assert list(sample) == expected.tolist()


def test_save_load_round_trip(model, tmp_path):
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.config == model.config
    tokens = random_tokens(2, 20, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), model(tokens), atol=0, rtol=0)


def test_compress_decompress_round_trip(model):
    data = b"".join(bytes([i % 7 + 97]) * (i % 5 + 1) for i in range(60)) + bytes(range(0, 256, 9))
    blob = compress(data, model, chunk_size=48, batch_size=3)
    assert decompress(blob, model) == data


def test_config_round_trips_through_json(model):
    text = model.config.to_json()
    assert type(model.config).from_dict(json.loads(text)) == model.config
    with pytest.raises(ValueError, match="unknown"):
        type(model.config).from_dict({**json.loads(text), "no_such_field": 1})


def test_encode_agrees_with_forward_and_pools(model):
    tokens = random_tokens(2, 20, seed=4)
    with torch.no_grad():
        hidden = model.encode(tokens)
        assert hidden.shape == (2, 20, model.hidden_size)
        torch.testing.assert_close(model.head(hidden), model(tokens), atol=0, rtol=0)
        mask = torch.zeros(2, 20, dtype=torch.bool)
        mask[0, :5], mask[1, :] = True, True
        pooled = model.pool(hidden, mask)
        close(pooled[0], hidden[0, :5].mean(0))
        close(pooled[1], hidden[1].mean(0))


def test_loss_is_the_mean_cross_entropy_of_forward(model):
    tokens = random_tokens(2, 20, seed=5)
    targets = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 20)))
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(tokens).reshape(-1, 256), targets.reshape(-1))
        close(model.loss(tokens, targets), expected)


def _block_like(module: torch.nn.Module) -> bool:
    """A repeated block: has parameters of its own and is neither the whole model nor a leaf."""
    return any(True for _ in module.parameters()) and any(True for _ in module.children())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_meta_build_then_init_weights_equals_an_eager_build(variant):
    """The parallel layer builds on the meta device, materialises and calls init_weights under
    the run's seed: the weights (and buffers: rotary tables, offsets) must be an eager build's."""
    arch, preset, overrides = VARIANTS[variant]
    eager = build_model(arch, preset, seed=11, **overrides)
    with torch.device("meta"):
        lazy = build_model(arch, preset, **overrides)
    assert all(p.is_meta for p in lazy.parameters())
    lazy = lazy.to_empty(device="cpu")
    torch.manual_seed(11)
    lazy.init_weights()
    expected, actual = eager.state_dict(), lazy.state_dict()
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    for (name, a), (_, b) in zip(eager.named_buffers(), lazy.named_buffers()):
        assert torch.equal(a, b), name
    tokens = random_tokens(2, 16, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(lazy.eval()(tokens), eager.eval()(tokens), atol=0, rtol=0)
    # init_weights draws from the generator: another seed gives other weights
    torch.manual_seed(12)
    lazy.init_weights()
    assert not all(torch.equal(expected[n], lazy.state_dict()[n]) for n in expected)


def test_shard_units_are_the_blocks(model):
    units = model.shard_units()
    assert units and all(_block_like(unit) for unit in units)
    assert all(unit is not model for unit in units)
    modules = set(map(id, model.modules()))
    assert all(id(unit) in modules for unit in units)
    unit_parameters = {id(p) for unit in units for p in unit.parameters()}
    # the blocks hold most of the weights; no two units share a parameter
    assert sum(p.numel() for unit in units for p in unit.parameters()) == sum(
        p.numel() for p in model.parameters() if id(p) in unit_parameters)

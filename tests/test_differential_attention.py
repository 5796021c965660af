"""Differential attention (``StackConfig.differential_attention``, ``layers.DifferentialHeads``).

It reuses the ordinary layer's projections and KV cache, so the references are the ordinary
layer itself: with lambda = 0 and the pair norm neutral (replaced by the identity, and
``lambda_init`` = 0 so the output scale 1 - lambda_init is 1) a differential layer is ordinary
attention whose odd heads' queries and keys are the even heads' (each pair then has one map,
and its two value heads are the two halves of the pair's value). Cached = full forward is the
conformance suite's (``flat-differential``, ``multiscale-differential``) and checked here on
the layer alone."""
import pytest
import torch
import torch.nn as nn

import omnibyte
from omnibyte.models.layers import Attention, DifferentialHeads, KVCache, RotaryEmbedding, StackConfig
from omnibyte.models.serialization import load_model, save_model
from omnibyte.models.validation import ConfigError


def stack_config(differential: bool, kv_heads: int = 4) -> StackConfig:
    return StackConfig(hidden_size=64, num_layers=1, num_query_heads=4, num_key_value_heads=kv_heads,
                       intermediate_size=128, max_sequence_length=32, differential_attention=differential)


def layers_sharing_weights(kv_heads: int = 4) -> tuple[Attention, Attention]:
    torch.manual_seed(0)
    ordinary, differential = Attention(stack_config(False, kv_heads)), Attention(stack_config(True, kv_heads), 3)
    for layer in (ordinary, differential):
        nn.init.normal_(layer.qkv_proj.weight, std=0.2)
        nn.init.normal_(layer.q_norm.weight, mean=1.0, std=0.2)
        nn.init.normal_(layer.k_norm.weight, mean=1.0, std=0.2)
    differential.load_state_dict({**differential.state_dict(), **ordinary.state_dict()})
    return ordinary, differential


def neutralise(heads: DifferentialHeads) -> None:
    """lambda = exp(0) - exp(0) + 0 = 0, output scale 1, no pair norm."""
    with torch.no_grad():
        for vector in (heads.lambda_q1, heads.lambda_k1, heads.lambda_q2, heads.lambda_k2):
            vector.zero_()
    heads.lambda_init = 0.0
    heads.norm = nn.Identity()


def tie_odd_heads_to_even(layer: Attention) -> None:
    """Odd query heads get the even heads' projections, odd key heads likewise."""
    heads, kv_heads, head_dim = layer.num_heads, layer.num_kv_heads, layer.config.head_dim
    with torch.no_grad():
        weight = layer.qkv_proj.weight.view(heads + 2 * kv_heads, head_dim, -1)
        for first in range(0, heads, 2):
            weight[first + 1] = weight[first]
        for first in range(heads, heads + kv_heads, 2):
            weight[first + 1] = weight[first]


def run_cached(layer: Attention, x: torch.Tensor, rope: RotaryEmbedding, split: int) -> torch.Tensor:
    """Prefill ``split`` positions, then one step at a time."""
    cache = KVCache(layer.config, x.shape[0], max_len=x.shape[1])
    outputs = []
    for start, end in [(0, split), *((t, t + 1) for t in range(split, x.shape[1]))]:
        write = cache.prepare(torch.ones(x.shape[0], end - start, dtype=torch.bool))
        write.rotation = rope.tables(end - start, write.positions)
        outputs.append(layer(x[:, start:end], rope, write, 0))
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("cached", [False, True], ids=["full", "cached"])
def test_lambda_zero_with_a_neutral_norm_is_ordinary_attention(cached):
    ordinary, differential = layers_sharing_weights()
    rope = RotaryEmbedding(16, 32)
    x = torch.randn(2, 12, 64)
    with torch.no_grad():
        neutralise(differential.differential)
        assert float(differential.differential.weight()) == 0.0
        tie_odd_heads_to_even(ordinary)
        # only the even heads' queries and keys matter to a differential layer at lambda = 0
        run = (lambda layer: run_cached(layer, x, rope, 5)) if cached else (lambda layer: layer(x, rope))
        expected, actual = run(ordinary), run(differential)
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
        # and lambda really weighs the second map in
        differential.differential.lambda_init = 0.5
        assert not torch.allclose(run(differential), expected, atol=1e-3)


def test_cached_equals_full_forward_with_grouped_heads():
    _, differential = layers_sharing_weights(kv_heads=2)
    rope = RotaryEmbedding(16, 32)
    x = torch.randn(3, 16, 64)
    with torch.no_grad():
        torch.testing.assert_close(run_cached(differential, x, rope, 7), differential(x, rope), atol=1e-5, rtol=1e-5)


def test_lambda_is_reparameterised_and_starts_from_its_layer_depth():
    heads = DifferentialHeads(8, layer_index=2)
    expected_init = 0.8 - 0.6 * torch.exp(torch.tensor(-0.6)).item()
    assert heads.lambda_init == pytest.approx(expected_init)
    lam = torch.exp(heads.lambda_q1 @ heads.lambda_k1) - torch.exp(heads.lambda_q2 @ heads.lambda_k2) + expected_init
    torch.testing.assert_close(heads.weight(), lam)


def test_option_off_keeps_parameters_documents_and_outputs():
    torch.manual_seed(0)
    plain = omnibyte.build_model("flat", "tiny", seed=0)
    off = omnibyte.build_model("flat", "tiny", seed=0, differential_attention=False)
    on = omnibyte.build_model("flat", "tiny", seed=0, differential_attention=True)
    assert "differential_attention" not in plain.config.to_dict()  # old documents and fingerprints unchanged
    assert off.config.to_dict() == plain.config.to_dict()
    assert on.config.to_dict()["differential_attention"] is True
    assert plain.state_dict().keys() == off.state_dict().keys()
    added = set(on.state_dict()) - set(plain.state_dict())
    assert added and all(".attn.differential." in name for name in added)
    assert on.num_parameters() == on.config.estimate_size().parameters
    assert plain.num_parameters() == plain.config.estimate_size().parameters
    tokens = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(off(tokens), plain(tokens), atol=0, rtol=0)
    assert on.flops_per_byte(1024) > plain.flops_per_byte(1024)


def test_a_differential_model_trains_its_lambdas_and_round_trips(tmp_path):
    model = omnibyte.build_model("flat", "tiny", seed=0, differential_attention=True)
    tokens = torch.randint(0, 256, (2, 24))
    model.loss(tokens[:, :-1], tokens[:, 1:]).backward()
    lambdas = [p for name, p in model.named_parameters() if "lambda_" in name]
    assert lambdas and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lambdas)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config.differential_attention
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), model.eval()(tokens), atol=0, rtol=0)


def test_pairs_need_an_even_number_of_heads():
    with pytest.raises(ConfigError, match="differential_attention pairs heads"):
        omnibyte.build_model("flat", "tiny", differential_attention=True, num_key_value_heads=1)
    with pytest.raises(ConfigError, match="stages\\[1\\].differential_attention"):
        omnibyte.build_model("multiscale", "tiny", stages=[
            dict(patch_size=256, hidden_size=64, num_layers=2, num_query_heads=4, num_key_value_heads=2),
            dict(patch_size=4, hidden_size=32, num_layers=1, num_query_heads=2, num_key_value_heads=1,
                 differential_attention=True)])

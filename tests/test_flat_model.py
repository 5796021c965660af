"""The flat model against simple references."""
import math

import pytest
import torch
import torch.nn.functional as F

from omnibyte.models import BOS, BytePredictor, ModelConfig, build_model, make_config
from omnibyte.models.flat import FLAT_PRESETS
from helpers import random_tokens


def tiny(**overrides) -> BytePredictor:
    torch.manual_seed(0)
    return build_model("flat", "tiny", **overrides).eval()


def test_reference_spec_defaults():
    config = ModelConfig()
    assert (config.vocab_size, config.hidden_size, config.num_layers) == (256, 1024, 12)
    assert (config.num_query_heads, config.num_key_value_heads, config.max_sequence_length) == (16, 4, 8192)
    assert make_config("flat", "base") == config
    # the head layout changed from 32 x 32 (8 key-value heads) to 16 x 64 (4) for speed; the size did not
    narrow_heads = ModelConfig(num_query_heads=32, num_key_value_heads=8)
    assert abs(config.estimate_size().parameters - narrow_heads.estimate_size().parameters) <= 12 * 64


def test_preset_sizes():
    small = BytePredictor(make_config("flat", "small"))
    assert 20e6 < small.num_parameters() < 30e6
    # counted without building the 1B model: the stack's formula is checked against `small`
    stack = make_config("flat", "small").stack()
    embeddings = 257 * 512 + 512 * 256 + 512  # input table, head, final norm
    norms = stack.num_layers * (2 * 512 + 2 * stack.head_dim)
    assert small.num_parameters() == stack.num_parameters() + embeddings + norms
    assert 0.9e9 < make_config("flat", "1b").stack().num_parameters() < 1.2e9


@pytest.mark.parametrize("preset", sorted(FLAT_PRESETS))
def test_cached_logits_equal_full_forward(preset):
    # bigger presets are shrunk in depth/context to keep CPU time low, keeping their widths and heads
    shrink = {} if preset == "tiny" else {"num_layers": 1, "max_sequence_length": 64}
    torch.manual_seed(0)
    model = build_model("flat", preset, **shrink).eval()
    tokens = random_tokens(2, 24)
    with torch.no_grad():
        full = model(tokens)
        decoder = model.decoder(2, 24)
        cached = [decoder.prefill(tokens[:, :7])]
        cached += [decoder.step(tokens[:, t]) for t in range(7, 24)]
    torch.testing.assert_close(torch.stack(cached, 1), full[:, 6:], atol=1e-4, rtol=1e-4)


def test_no_future_leakage():
    model = tiny()
    tokens = random_tokens(1, 40)
    with torch.no_grad():
        reference = model(tokens)
        for t in range(1, 40):
            changed = tokens.clone()
            changed[0, t] = (changed[0, t] + 1) % 256
            logits = model(changed)
            torch.testing.assert_close(logits[:, :t], reference[:, :t], atol=0, rtol=0)
            assert not torch.allclose(logits[:, t], reference[:, t])


def plain_attention_forward(model: BytePredictor, tokens: torch.Tensor) -> torch.Tensor:
    """A hand-written multi-head attention transformer with the model's weights."""
    config = model.config
    heads, head_dim = config.num_query_heads, config.hidden_size // config.num_query_heads
    h = model.embed(tokens)
    length = tokens.shape[1]
    rope = model.transformer.rope
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    for block in model.transformer.layers:
        x = block.attn_norm(h)
        attn = block.attn

        def split(weight):  # [1, T, heads, head_dim]
            return F.linear(x, weight).view(1, length, heads, head_dim)

        q_weight, k_weight, v_weight = attn.qkv_proj.weight.chunk(3)  # all heads: three equal parts
        q = rope.apply(attn.q_norm(split(q_weight))).transpose(1, 2)
        k = rope.apply(attn.k_norm(split(k_weight))).transpose(1, 2)
        v = split(v_weight).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
        weights = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        h = h + attn.o_proj((weights @ v).transpose(1, 2).reshape(1, length, -1))
        h = h + block.mlp(block.mlp_norm(h))
    return model.head(model.transformer.norm(h))


def test_gqa_with_all_heads_equals_plain_multi_head_attention():
    model = tiny(num_key_value_heads=4)  # tiny has 4 query heads
    tokens = random_tokens(1, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), plain_attention_forward(model, tokens), atol=1e-5, rtol=1e-5)


def test_gqa_equals_multi_head_attention_with_repeated_kv_heads():
    grouped = tiny(num_key_value_heads=2)
    full = tiny(num_key_value_heads=4)
    state = grouped.state_dict()
    head_dim = 16
    for name, tensor in state.items():
        if name.endswith("qkv_proj.weight"):  # rows: 4 query heads, then 2 key and 2 value heads
            q, k, v = tensor.split([4 * head_dim, 2 * head_dim, 2 * head_dim])
            repeat = [part.view(2, head_dim, -1).repeat_interleave(2, dim=0).reshape(4 * head_dim, -1)
                      for part in (k, v)]
            state[name] = torch.cat([q, *repeat])
    full.load_state_dict(state)
    tokens = random_tokens(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(grouped(tokens), full(tokens), atol=1e-5, rtol=1e-5)


def test_config_json_round_trip_and_validation():
    config = make_config("flat", "tiny", num_layers=3)
    assert ModelConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="divide"):
        ModelConfig.from_dict({"num_query_heads": 32, "num_key_value_heads": 5})
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({"hidden": 5})


def test_flops_per_byte_counts_matmuls_and_attention():
    model = tiny()
    non_embedding = model.config.stack().num_parameters() + 64 * 256
    assert model.flops_per_byte(0) == 6 * non_embedding
    assert model.flops_per_byte(1024) - model.flops_per_byte(0) == 12 * 2 * 64 * 1024  # PaLM: 12*L*d*T


def test_generate_is_seeded_and_respects_context():
    model = tiny()
    first = model.generate(b"abc", max_new_bytes=30, seed=3)
    assert len(first) == 30
    assert first == model.generate(b"abc", max_new_bytes=30, seed=3)
    assert first != model.generate(b"abc", max_new_bytes=30, seed=4)
    greedy = model.generate(b"abc", max_new_bytes=10, temperature=0)
    logits = model(torch.tensor([[BOS, *b"abc"]]))[0, -1]
    assert greedy[0] == int(logits.argmax())
    with pytest.raises(ValueError, match="context"):
        model.generate(b"x" * 1000, max_new_bytes=100)


def test_loss_mask_ignores_masked_positions():
    model = tiny()
    tokens = random_tokens(1, 16)
    targets = torch.randint(0, 256, (1, 16))
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, :8] = True
    expected = F.cross_entropy(model(tokens)[0, :8], targets[0, :8])
    torch.testing.assert_close(model.loss(tokens, targets, mask), expected)

"""The static-shape decoding step (the body of the CUDA graph) against the eager paths, on CPU."""
import pytest
import torch

from omnibyte.models import build_model
from omnibyte.models.decode import FastDecoder
from helpers import random_tokens


def tiny(**overrides):
    torch.manual_seed(0)
    return build_model("flat", "tiny", **overrides).eval()


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])  # multi-query, grouped, full multi-head (tiny: 4 heads)
def test_static_step_matches_eager_step_and_full_forward(batch, kv_heads):
    model = tiny(num_key_value_heads=kv_heads)
    tokens = random_tokens(batch, 40, seed=kv_heads)
    prompt = 5
    with torch.no_grad():
        full = model(tokens)
        state = model.init_state(batch)
        decoder = FastDecoder(model, batch, max_len=64)
        eager = [model.prefill(tokens[:, :prompt], state)]
        fast = [decoder.prefill(tokens[:, :prompt])]
        for t in range(prompt, tokens.shape[1]):
            eager.append(model.step(tokens[:, t], state))
            fast.append(decoder.step(tokens[:, t]))
    fast, eager = torch.stack(fast, 1), torch.stack(eager, 1)
    torch.testing.assert_close(fast, eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast, full[:, prompt - 1:], atol=1e-5, rtol=1e-5)
    assert decoder.length == tokens.shape[1] and int(decoder.position) == tokens.shape[1]


def test_step_from_empty_cache_and_reset():
    model = tiny()
    tokens = random_tokens(2, 12, seed=7)
    decoder = FastDecoder(model, 2, max_len=16)
    with torch.no_grad():
        full = model(tokens)
        for _ in range(2):  # the second pass runs over the stale cache left by the first
            decoder.reset()
            logits = torch.stack([decoder.step(tokens[:, t]) for t in range(12)], 1)
            torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-5)


def test_capacity_and_batch_are_checked():
    model = tiny()
    decoder = FastDecoder(model, 1, max_len=4)
    decoder.prefill(random_tokens(1, 3))
    decoder.step(torch.tensor([1]))
    with pytest.raises(ValueError, match="context"):
        decoder.step(torch.tensor([1]))
    with pytest.raises(ValueError, match="batch"):
        FastDecoder(model, 2, max_len=4).prefill(random_tokens(1, 3))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            FastDecoder(model, 1, graph=True)


@pytest.mark.parametrize("options", [dict(temperature=1.0), dict(temperature=0.8, top_k=20, top_p=0.9),
                                     dict(temperature=0)])
def test_fast_generation_equals_eager_generation(options):
    model = tiny()
    eager = model.generate(b"def ", max_new_bytes=60, seed=11, **options)
    fast = model.generate(b"def ", max_new_bytes=60, seed=11, fast=True, **options)
    assert len(fast) == 60 and fast == eager
    streamed = b"".join(model.stream(b"def ", max_new_bytes=60, seed=11, fast=True, **options))
    assert streamed == eager


def test_decoder_follows_in_place_weight_updates_at_prefill():
    model = tiny()
    decoder = FastDecoder(model, 1, max_len=32)
    tokens = random_tokens(1, 10, seed=5)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(1.5)  # as an optimizer step would, in place
        decoder.prefill(tokens[:, :4])
        logits = torch.stack([decoder.step(tokens[:, t]) for t in range(4, 10)], 1)
        torch.testing.assert_close(logits, model(tokens)[:, 4:], atol=1e-5, rtol=1e-5)

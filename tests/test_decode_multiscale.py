"""The multiscale/patch decoder's own behaviour: stage scheduling, the context edge, the top
cache bound, capture fallback. (Decoder = full forward at ragged positions, batched = one by
one, for every family: test_conformance.py.)"""
import pytest
import torch

from omnibyte.models import build_model, graphs
from omnibyte.models.graphs import GraphCaptureWarning, GraphSteps
from omnibyte.models.multiscale import MultiscaleDecoder
from helpers import random_tokens, one_thread  # noqa: F401 (one_thread is a fixture)

# 3 stages over a 16-byte context (4 x 2 x 2): the very last byte and every boundary are reachable
SHORT_3_STAGE = ("multiscale", "tiny-3", {"stages": [
    dict(patch_size=4, hidden_size=32, num_layers=1, num_query_heads=2, num_key_value_heads=1),
    dict(patch_size=2, hidden_size=32, num_layers=1, num_query_heads=2, num_key_value_heads=2),
    dict(patch_size=2, hidden_size=16, num_layers=1, num_query_heads=2, num_key_value_heads=1)]})
SHORT_PATCH = ("patch", "tiny", {"stages": [
    dict(patch_size=8, hidden_size=32, num_layers=1, num_query_heads=2, num_key_value_heads=1),
    dict(patch_size=4, hidden_size=16, num_layers=1, num_query_heads=2, num_key_value_heads=1)]})

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(arch: str, preset: str, overrides: dict | None = None):
    torch.manual_seed(0)
    return build_model(arch, preset, **(overrides or {})).eval()


def close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("spec", [SHORT_3_STAGE, SHORT_PATCH], ids=["3-stage", "patch"])
def test_steps_reach_the_last_context_byte_then_stop(spec, fast):
    model = tiny(*spec)
    context = model.max_seq_len
    tokens = random_tokens(2, context, seed=3)
    with torch.no_grad():
        decoder = model.decoder(2, context, fast=fast)
        logits = torch.stack([decoder.step(tokens[:, t]) for t in range(context)], 1)
        close(logits, model(tokens))
        with pytest.raises(ValueError, match="context"):
            decoder.step(tokens[:, 0])


def test_max_len_bounds_the_top_cache_and_the_steps():
    model = tiny("multiscale", "tiny")  # 256 patches of 4 bytes
    tokens = random_tokens(1, 13, seed=4)
    with torch.no_grad():
        decoder = model.decoder(1, 13, fast=True)
        assert decoder.caches[0].capacity < model.core.patch_sizes[0]  # 4 entries, padded to 16
        logits = torch.stack([decoder.step(tokens[:, t]) for t in range(13)], 1)
        close(logits, model(tokens))  # the 12th token completes a 3rd unit: stage 0 reads a 4th entry
        with pytest.raises(ValueError, match="context of 13 tokens"):
            decoder.step(tokens[:, 0])


def counting(decoder: MultiscaleDecoder) -> dict:
    calls = {name: 0 for name in decoder.steps.pieces}

    def counted(name, piece):
        def run():
            calls[name] += 1
            return piece()
        return run

    decoder.steps.pieces = {name: counted(name, piece) for name, piece in decoder.steps.pieces.items()}
    return calls


def test_upper_stages_advance_only_when_a_unit_completes():
    model = tiny("multiscale", "tiny-3")  # units: 16 bytes (stage 0), 4 bytes (stage 1)
    decoder = model.decoder(1, 64, fast=True)
    calls = counting(decoder)
    for token in random_tokens(1, 32)[0]:
        decoder.step(token.view(1))
    # 32 bytes: the byte piece each; stage 1 at 4, 8, 12, 20, 24, 28; stage 0 (restarting stage 1)
    # at 16 and 32; nothing restarts the decoder
    assert calls == {"begin": 0, "byte": 32, 0: 2, 1: 6}


def test_rows_at_different_lengths_advance_their_own_stages():
    model = tiny("multiscale", "tiny-3")
    tokens = random_tokens(2, 40, seed=6)
    with torch.no_grad():
        full = model(tokens)
        decoder = model.decoder(2, 40)
        calls = counting(decoder)
        logits = decoder.prefill(tokens[:, :20], [3, 20])  # row 1 passed 4, 8, 12, 16 and 20
        close(logits, torch.stack([full[0, 2], full[1, 19]]))
        assert calls["byte"] == 20 and calls[0] == 1 and calls[1] == 4
        for k in range(12):  # row 0 completes units at 4, 8, 12; row 1 at 24, 28, 32
            logits = decoder.step(torch.stack([tokens[0, 3 + k], tokens[1, 20 + k]]))
            close(logits, torch.stack([full[0, 3 + k], full[1, 20 + k]]))


def test_batch_and_device_are_checked():
    model = tiny("multiscale", "tiny")
    decoder = model.decoder(2, 16, fast=True)
    with pytest.raises(ValueError, match="batch"):
        decoder.prefill(random_tokens(1, 3))
    with pytest.raises(ValueError, match="batch"):
        decoder.step(torch.tensor([1]))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            MultiscaleDecoder(model, 1, graph=True)


def test_failed_capture_falls_back_to_eager_with_a_warning(monkeypatch):
    model = tiny("multiscale", "tiny")
    decoder = MultiscaleDecoder(model, 1)

    def broken_capture(step, prepare=None):
        prepare()
        step()  # as a warm-up would: the decoder must reset the state it leaves behind
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs, "capture_graph", broken_capture)
    steps = GraphSteps(decoder.steps.pieces, graph=True)
    with pytest.warns(GraphCaptureWarning, match="not permitted"):
        steps.capture(prepare=decoder._rewind)
    assert "not permitted" in steps.error and not steps.graphs and not steps.use_graph
    decoder.steps = steps
    decoder.reset()
    tokens = random_tokens(1, 10, seed=2)
    with torch.no_grad():
        close(torch.stack([decoder.step(tokens[:, t]) for t in range(10)], 1), model(tokens))

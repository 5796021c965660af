"""The multiscale/patch fast decoder's static pieces (the bodies of its CUDA graphs) against the
eager step and the full forward, on CPU."""
import pytest
import torch

from omnibyte.models import build_model
from omnibyte.models import multiscale_decode
from omnibyte.models.multiscale_decode import GraphCaptureWarning, MultiscaleDecoder
from helpers import random_tokens, one_thread  # noqa: F401 (one_thread is a fixture)

MODELS = {  # (arch, preset, overrides): small patches so short sequences cross every boundary
    "2-stage": ("multiscale", "tiny", {}),
    "3-stage": ("multiscale", "tiny-3", {}),
    "patch": ("patch", "tiny", {}),
    "mamba": ("multiscale", "tiny-mamba", {}),  # Mamba at the top
    "mamba-inner": ("multiscale", "tiny-mamba", {"stages": [  # Mamba in the restarted byte stage
        dict(patch_size=16, hidden_size=32, num_layers=1, num_query_heads=2, num_key_value_heads=1),
        dict(patch_size=4, hidden_size=32, num_layers=2, block="mamba")]}),
}
# 3 stages over a 16-byte context (4 x 2 x 2): the very last byte and every boundary are reachable
SHORT_3_STAGE = ("multiscale", "tiny-3", {"stages": [
    dict(patch_size=4, hidden_size=32, num_layers=1, num_query_heads=2, num_key_value_heads=1),
    dict(patch_size=2, hidden_size=32, num_layers=1, num_query_heads=2, num_key_value_heads=2),
    dict(patch_size=2, hidden_size=16, num_layers=1, num_query_heads=2, num_key_value_heads=1)]})


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(arch: str, preset: str, overrides: dict):
    torch.manual_seed(0)
    return build_model(arch, preset, **overrides).eval()


def close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", list(MODELS))
def test_fast_steps_match_eager_steps_and_full_forward(name, batch):
    model = tiny(*MODELS[name])
    tokens = random_tokens(batch, 3 * model.core.unit_sizes[0] + 2, seed=batch)  # > 3 coarsest units
    prompt = 7
    with torch.no_grad():
        full = model(tokens)
        state = model.init_state(batch)
        decoder = model.decoder(batch, tokens.shape[1], fast=True)
        assert isinstance(decoder, MultiscaleDecoder) and not decoder.graphs  # CPU: eager pieces
        eager = [model.prefill(tokens[:, :prompt], state)]
        fast = [decoder.prefill(tokens[:, :prompt])]
        for t in range(prompt, tokens.shape[1]):
            eager.append(model.step(tokens[:, t], state))
            fast.append(decoder.step(tokens[:, t]))
        fast, eager = torch.stack(fast, 1), torch.stack(eager, 1)
        close(fast, eager)
        close(fast, full[:, prompt - 1:])
        assert decoder.length == tokens.shape[1]
        # reset: the second pass runs over the stale caches, contexts and states of the first
        decoder.reset()
        again = torch.stack([decoder.step(tokens[:, t]) for t in range(tokens.shape[1])], 1)
        close(again, full)


@pytest.mark.parametrize("spec", [SHORT_3_STAGE, ("patch", "tiny", {"max_sequence_length": 32})],
                         ids=["3-stage", "patch"])
def test_fast_steps_reach_the_last_context_byte_then_stop(spec):
    model = tiny(*spec)
    context = model.max_seq_len
    tokens = random_tokens(2, context, seed=3)
    with torch.no_grad():
        decoder = model.decoder(2, context, fast=True)
        logits = torch.stack([decoder.step(tokens[:, t]) for t in range(context)], 1)
        close(logits, model(tokens))
        with pytest.raises(ValueError, match="context"):
            decoder.step(tokens[:, 0])


def test_max_len_bounds_the_top_cache_and_the_steps():
    model = tiny(*MODELS["2-stage"])  # 256 patches of 4 bytes
    tokens = random_tokens(1, 13, seed=4)
    with torch.no_grad():
        decoder = model.decoder(1, 13, fast=True)
        assert decoder.caches[0].capacity < model.core.patch_sizes[0]  # 4 entries, padded to 16
        logits = torch.stack([decoder.step(tokens[:, t]) for t in range(13)], 1)
        close(logits, model(tokens))  # the 12th token completes a 3rd unit: stage 0 reads a 4th entry
        with pytest.raises(ValueError, match="context of 13 tokens"):
            decoder.step(tokens[:, 0])


def test_upper_stages_advance_only_when_a_unit_completes():
    model = tiny(*MODELS["3-stage"])  # units: 16 bytes (stage 0), 4 bytes (stage 1)
    decoder = model.decoder(1, 64, fast=True)
    calls = {name: 0 for name in decoder.pieces}

    def counted(name, piece):
        def run():
            calls[name] += 1
            return piece()
        return run

    decoder.pieces = {name: counted(name, piece) for name, piece in decoder.pieces.items()}
    for token in random_tokens(1, 32)[0]:
        decoder.step(token.view(1))
    # 32 bytes: the byte piece each; stage 1 at 4, 8, 12, 20, 24, 28; stage 0 (restarting stage 1)
    # at 16 and 32; nothing restarts the decoder
    assert calls == {"begin": 0, "byte": 32, 0: 2, 1: 6}


@pytest.mark.parametrize("name", ["3-stage", "patch", "mamba"])
@pytest.mark.parametrize("options", [dict(temperature=1.0), dict(temperature=0.8, top_k=20, top_p=0.9)])
def test_fast_generation_equals_eager_generation(name, options):
    model = tiny(*MODELS[name])
    eager = model.generate(b"abc", max_new_bytes=40, seed=11, **options)
    fast = model.generate(b"abc", max_new_bytes=40, seed=11, fast=True, **options)
    assert len(fast) == 40 and fast == eager
    assert b"".join(model.stream(b"abc", max_new_bytes=40, seed=11, fast=True, **options)) == eager


def test_decoder_follows_in_place_weight_updates_at_prefill():
    model = tiny(*MODELS["2-stage"])
    decoder = model.decoder(1, 32, fast=True)
    tokens = random_tokens(1, 14, seed=5)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(1.5)  # as an optimizer step would, in place
        decoder.prefill(tokens[:, :6])
        logits = torch.stack([decoder.step(tokens[:, t]) for t in range(6, 14)], 1)
        close(logits, model(tokens)[:, 6:])


def test_batch_and_device_are_checked():
    model = tiny(*MODELS["2-stage"])
    decoder = model.decoder(2, 16, fast=True)
    with pytest.raises(ValueError, match="batch"):
        decoder.prefill(random_tokens(1, 3))
    with pytest.raises(ValueError, match="batch"):
        decoder.step(torch.tensor([1]))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            MultiscaleDecoder(model, 1, graph=True)


def test_failed_capture_falls_back_to_eager_with_a_warning(monkeypatch):
    model = tiny(*MODELS["2-stage"])
    decoder = MultiscaleDecoder(model, 1, graph=False)

    def broken_capture(step, prepare=None):
        prepare()
        step()  # as a warm-up would: the decoder must reset the state it leaves behind
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(multiscale_decode, "capture_graph", broken_capture)
    with pytest.warns(GraphCaptureWarning, match="not permitted"):
        decoder._capture()
    assert "not permitted" in decoder.graph_error and not decoder.graphs and not decoder.use_graph
    decoder.reset()
    tokens = random_tokens(1, 10, seed=2)
    with torch.no_grad():
        close(torch.stack([decoder.step(tokens[:, t]) for t in range(10)], 1), model(tokens))

"""The flat decoder: per-row KV cache, eager and static (graph-body) steps, on CPU.

Family-agnostic checks (decoder = full forward at ragged positions, batched = one by one) live
in test_conformance.py; these are the flat decoder's own."""
import pytest
import torch

from omnibyte.models import build_model
from omnibyte.models import flat
from omnibyte.models.flat import CACHE_ALIGNMENT, FlatDecoder
from helpers import random_tokens


def tiny(**overrides):
    torch.manual_seed(0)
    return build_model("flat", "tiny", **overrides).eval()


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])  # multi-query, grouped, full multi-head (tiny: 4 heads)
def test_steps_match_full_forward_for_every_head_layout(kv_heads, fast):
    model = tiny(num_key_value_heads=kv_heads)
    tokens = random_tokens(3, 40, seed=kv_heads)
    with torch.no_grad():
        full = model(tokens)
        decoder = model.decoder(3, 64, fast=fast)
        logits = [decoder.prefill(tokens[:, :5])]
        logits += [decoder.step(tokens[:, t]) for t in range(5, 40)]
    torch.testing.assert_close(torch.stack(logits, 1), full[:, 4:], atol=1e-5, rtol=1e-5)
    assert decoder.lengths.tolist() == [40, 40, 40]
    assert decoder.cache.lengths.tolist() == [40, 40, 40]


def test_fast_cache_is_aligned_and_eager_cache_is_exact():
    model = tiny()
    assert model.decoder(1, 40, fast=True).cache.capacity == CACHE_ALIGNMENT
    assert model.decoder(1, 40).cache.capacity == 40
    assert model.decoder(1, 40).capacity == model.decoder(1, 40, fast=True).capacity == 40


def test_reset_reuses_the_stale_cache():
    model = tiny()
    tokens = random_tokens(2, 12, seed=7)
    decoder = model.decoder(2, 16, fast=True)
    with torch.no_grad():
        full = model(tokens)
        for _ in range(2):  # the second pass runs over the stale cache left by the first
            decoder.reset()
            logits = torch.stack([decoder.step(tokens[:, t]) for t in range(12)], 1)
            torch.testing.assert_close(logits, full, atol=1e-5, rtol=1e-5)


def test_padding_of_a_ragged_prefill_never_reaches_a_real_slot():
    model = tiny()
    tokens = random_tokens(2, 8, seed=3)
    decoder = model.decoder(2, 8)
    with torch.no_grad():
        decoder.prefill(tokens, [8, 2])  # row 1's six padding tokens go to the sink slot
        before = decoder.cache.keys[:, 0, :, :8].clone()
        decoder.prefill(tokens, [0, 6])  # row 1 fills up to the capacity; row 0 takes nothing
        torch.testing.assert_close(decoder.cache.keys[:, 0, :, :8], before, atol=0, rtol=0)
        assert decoder.lengths.tolist() == [8, 8]


@pytest.mark.parametrize("fast", [False, True])
def test_a_long_prompt_is_written_in_pieces_with_the_same_logits(fast, monkeypatch):
    # rows end in different pieces (and one row is longer than several pieces), so each row's
    # logits must come from the piece that holds its last token
    model = tiny()
    tokens = random_tokens(3, 23, seed=11)
    lengths = [23, 4, 11]
    with torch.no_grad():
        full = model(tokens)
        monkeypatch.setattr(flat, "PREFILL_CHUNK", 5)
        decoder = model.decoder(3, 40, fast=fast)
        pieces = []
        hook = model.transformer.register_forward_hook(lambda module, args, output: pieces.append(args[0].shape[1]))
        logits = decoder.prefill(tokens, lengths)
        hook.remove()
        assert pieces == [5, 5, 5, 5, 3]
        expected = torch.stack([full[row, length - 1] for row, length in enumerate(lengths)])
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
        assert decoder.cache.lengths.tolist() == lengths
        # the cache holds what one piece would have written: a step continues every row exactly
        step = decoder.step(tokens[:, 0])
        for row, length in enumerate(lengths):
            reference = model(torch.cat([tokens[row, :length], tokens[row, :1]]).unsqueeze(0))[0, -1]
            torch.testing.assert_close(step[row], reference, atol=1e-5, rtol=1e-5)


def test_capacity_batch_and_lengths_are_checked():
    model = tiny()
    decoder = model.decoder(1, 4)
    decoder.prefill(random_tokens(1, 3))
    decoder.step(torch.tensor([1]))
    with pytest.raises(ValueError, match="context"):
        decoder.step(torch.tensor([1]))
    with pytest.raises(ValueError, match="batch"):
        model.decoder(2, 4).prefill(random_tokens(1, 3))
    with pytest.raises(ValueError, match="lengths"):
        model.decoder(2, 4).prefill(random_tokens(2, 3), [1, 4])
    with pytest.raises(ValueError, match="at least one token"):
        model.decoder(2, 4).prefill(random_tokens(2, 3), [0, 0])
    with pytest.raises(ValueError, match="rows"):
        model.decoder(2, 4).reset([2])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            FlatDecoder(model, 1, graph=True)


def test_decoder_follows_in_place_weight_updates():
    model = tiny()
    decoder = model.decoder(1, 32, fast=True)
    tokens = random_tokens(1, 10, seed=5)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(1.5)  # as an optimizer step would, in place
        decoder.prefill(tokens[:, :4])
        logits = torch.stack([decoder.step(tokens[:, t]) for t in range(4, 10)], 1)
        torch.testing.assert_close(logits, model(tokens)[:, 4:], atol=1e-5, rtol=1e-5)


# ---- compiled steps (issue 13): the same block code through torch.compile --------------------

def test_compile_needs_a_fast_decoder_and_exact_numerics_refuse_it():
    model = tiny()
    with pytest.raises(ValueError, match="compile needs fast=True"):
        model.decoder(1, 16, compile=True)
    with pytest.raises(ValueError, match="compile needs fast=True"):
        model.generate(b"a", max_new_bytes=2, compile=True)
    from omnibyte.models.integer import IntegerFlatModel
    with pytest.raises(ValueError, match="integer numerics do not compile"):
        IntegerFlatModel.from_float(model).decoder(1, 16, fast=True, compile=True)


def test_a_piece_that_fails_to_compile_warns_and_runs_as_written(monkeypatch):
    from omnibyte.models import graphs

    def broken_compile(function, **options):
        def compiled():
            raise RuntimeError("no compiler here\nsecond line")
        return compiled

    monkeypatch.setattr(graphs.torch, "compile", broken_compile)
    counter = torch.zeros(1)
    prepared = []

    def piece():
        counter.add_(1)
        return counter.clone()

    steps = graphs.GraphSteps({"step": piece}, graph=False, compile=True)
    with pytest.warns(graphs.StepCompileWarning, match="'step'.*no compiler here"):
        steps.capture(prepare=lambda: prepared.append(1))
    assert steps.compile_errors == {"step": "RuntimeError: no compiler here"} and prepared == [1]
    assert steps.pieces["step"] is piece and steps.run("step").item() == 1.0


@pytest.mark.slow  # compiles the tiny model's step (about 15 s on 2 CPU cores)
def test_compiled_generation_gives_the_same_bytes():
    model = tiny()
    prompts = [b"hello world", b"", b"abc"]
    for options in (dict(temperature=0), dict(temperature=0.8, top_k=50)):
        plain = model.generate(prompts, max_new_bytes=24, seed=3, fast=True, **options)
        assert model.generate(prompts, max_new_bytes=24, seed=3, fast=True, compile=True, **options) == plain
    decoder = model.decoder(1, 32, fast=True, compile=True)
    assert decoder.steps.compile_errors == {} and decoder.steps.pieces["step"] != decoder._static_step


@pytest.mark.parametrize("kv_heads", [1, 2])
def test_a_dense_step_without_mask_equals_the_masked_step_bit_for_bit(kv_heads):
    """Rows of equal length step without an attention mask (``KVCache.prepare(dense=True)``):
    the same float results as with the all-zero mask, so float CPU streams made before still
    decode; and the eager decoder takes that path only while the rows are of equal length."""
    model = tiny(num_key_value_heads=kv_heads)
    tokens = random_tokens(3, 30, seed=kv_heads)
    stack = model.transformer
    with torch.no_grad():
        caches = [stack.new_cache(3, max_len=40) for _ in range(2)]
        for cache in caches:
            stack(model.embed(tokens[:, :20]), cache)
        one_each = torch.ones(3, 1, dtype=torch.bool)
        for t in range(20, 30):
            x = model.embed(tokens[:, t : t + 1])
            masked = stack(x, caches[0], one_each, t + 1, dense=False)
            dense = stack(x, caches[1], one_each, t + 1, dense=True)
            assert torch.equal(masked, dense)
        decoder = model.decoder(3, 40)
        decoder.prefill(tokens[:, :10])
        decoder.step(tokens[:, 10])
        assert decoder.dense
        decoder.reset([1])
        decoder.step(tokens[:, 11])  # rows of 12, 1 and 12 tokens: masked
        assert not decoder.dense
        assert not model.decoder(3, 40, fast=True).dense

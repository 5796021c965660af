"""Speculative decoding: the context drafter, the decoder's extend/rewind, and generation that
samples exactly the bytes plain decoding samples (same seed), batched and ragged."""
import numpy as np
import pytest
import torch

from omnibyte.models import build_model
from omnibyte.models.speculative import (
    DeviceRounds, SpeculationStats, accepted_lengths, device_drafts, draft_bytes, draft_from_context,
)
from helpers import one_thread, random_tokens, train_briefly  # noqa: F401 (one_thread is a fixture)

FOX = b"the quick brown fox jumps over the lazy dog. "


# ---- the drafter ------------------------------------------------------------------------------

def test_draft_copies_what_followed_the_most_recent_match():
    # "dog" occurs twice before the end; the later occurrence is followed by "!!"
    assert draft_from_context(b"dog1 dog!! xdog", max_ngram=4, max_draft=2) == b"!!"
    assert draft_from_context(b"hello world. hello", max_draft=7) == b" world."


def test_draft_prefers_the_longest_suffix():
    # "ab" alone last occurs before "Z", but "cab" (longer) occurs before "Y"
    assert draft_from_context(b"cabY abZ cab", max_ngram=3, max_draft=1) == b"Y"
    assert draft_from_context(b"cabY abZ cab", max_ngram=2, max_draft=1) == b"Z"


def test_draft_runs_on_past_the_end_of_a_period():
    assert draft_from_context(b"xabcabc", max_draft=8) == b"abcabcab"
    assert draft_from_context(b"aaaa", max_draft=5) == b"aaaaa"


def test_no_draft_without_an_earlier_occurrence():
    assert draft_from_context(b"") == b""
    assert draft_from_context(b"a") == b""
    assert draft_from_context(b"abcdefg") == b""
    assert draft_from_context(b"abab", max_draft=0) == b""


def _device_draft(texts: list[bytes], max_ngram: int, max_draft: int) -> list[bytes]:
    """Each text's draft from ``device_drafts`` (texts padded with junk past their lengths)."""
    width = max(len(text) for text in texts) + 3
    padded = torch.full((len(texts), width), 7, dtype=torch.long)
    for row, text in enumerate(texts):
        padded[row, : len(text)] = torch.tensor(list(text), dtype=torch.long)
    lengths = torch.tensor([len(text) for text in texts])
    source, found = device_drafts(padded, lengths, max_ngram)
    drafts = draft_bytes(padded, lengths, source, max_draft)
    return [bytes(drafts[row].tolist()) if found[row] else b"" for row in range(len(texts))]


def test_device_drafts_equal_the_host_drafter():
    """The tensor drafter against ``draft_from_context`` on short, periodic and random texts of
    a small alphabet (many partial matches), all rows of one batch with different lengths."""
    rng = np.random.default_rng(0)
    texts = [b"dog1 dog!! xdog", b"hello world. hello", b"cabY abZ cab", b"xabcabc", b"aaaa", b"a", b"ab",
             b"abcdefg", b"abab"]
    texts += [bytes(rng.integers(97, 97 + alphabet, size, dtype=np.uint8))
              for alphabet in (2, 3, 5) for size in (2, 3, 7, 30, 90)]
    for max_ngram in (1, 2, 4):
        expected = [draft_from_context(text, max_ngram, 6) for text in texts]
        assert _device_draft(texts, max_ngram, 6) == expected


def test_accepted_lengths_stop_at_the_first_mismatch_and_at_the_draft_end():
    drafts = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3], [5, 0, 0]])
    lengths = np.array([3, 3, 2, 1])
    sampled = np.array([[1, 2, 3, 9], [1, 7, 3, 9], [1, 2, 3, 9], [4, 0, 0, 0]])
    assert accepted_lengths(drafts, lengths, sampled).tolist() == [3, 1, 2, 0]


# ---- extend and rewind --------------------------------------------------------------------------

def tiny():
    torch.manual_seed(0)
    return build_model("flat", "tiny").eval()


@pytest.mark.parametrize("fast", [False, True], ids=["eager", "fast"])
def test_extend_gives_the_full_forward_at_every_appended_position(fast):
    model = tiny()
    tokens = random_tokens(3, 30, seed=1)
    full = model(tokens)
    decoder = model.decoder(3, 40, fast=fast)
    decoder.prefill(tokens[:, :10], [10, 4, 7])  # ragged: rows now hold 10, 4, 7 tokens
    with torch.no_grad():
        pieces = torch.stack([tokens[0, 10:16], tokens[1, 4:10], tokens[2, 7:13]])
        logits = decoder.extend(pieces, [6, 3, 5])
    assert logits.shape == (3, 6, 256)
    torch.testing.assert_close(logits[0], full[0, 10:16], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[1, :3], full[1, 4:7], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[2, :5], full[2, 7:12], atol=1e-5, rtol=1e-5)
    assert decoder.lengths.tolist() == [16, 7, 12]


@pytest.mark.parametrize("fast", [False, True], ids=["eager", "fast"])
def test_rewind_then_continue_equals_never_having_appended(fast):
    model = tiny()
    tokens = random_tokens(2, 24, seed=2)
    junk = random_tokens(2, 5, seed=3)
    reference = model.decoder(2, 32, fast=fast)
    reference.prefill(tokens[:, :12], [12, 9])
    rewound = model.decoder(2, 32, fast=fast)
    rewound.prefill(tokens[:, :12], [12, 9])
    rewound.extend(junk, [5, 2])
    rewound.rewind([5, 2])
    assert rewound.lengths.tolist() == reference.lengths.tolist() == [12, 9]
    assert rewound.cache.lengths.tolist() == [12, 9]
    for column in range(4):  # the stale slots are overwritten, never read
        step = torch.stack([tokens[0, 12 + column], tokens[1, 9 + column]])
        torch.testing.assert_close(rewound.step(step), reference.step(step), atol=1e-5, rtol=1e-5)


def test_rewind_refuses_more_than_a_row_holds():
    decoder = tiny().decoder(2, 16)
    decoder.prefill(random_tokens(2, 4), [4, 2])
    with pytest.raises(ValueError, match="rewind"):
        decoder.rewind([1, 3])
    with pytest.raises(ValueError, match="rewind"):
        decoder.rewind([1])


def test_families_without_support_refuse_extend():
    decoder = build_model("multiscale", "tiny").eval().decoder(1, 32)
    assert not decoder.supports_speculation
    with pytest.raises(NotImplementedError):
        decoder.extend(random_tokens(1, 3), [3])


# ---- speculative generation == plain generation ---------------------------------------------------

@pytest.fixture(scope="module")
def trained(one_thread):
    """A tiny model that knows the fox sentence: at temperature 1 it still repeats it, so
    drafts are accepted at both temperatures."""
    torch.manual_seed(0)
    return train_briefly(build_model("flat", "tiny"), FOX * 40, steps=60)


def _both(model, prompts, temperature, max_new_bytes=80):
    stats = SpeculationStats()
    plain = model.generate(prompts, max_new_bytes, temperature=temperature, seed=11)
    speculative = model.generate(prompts, max_new_bytes, temperature=temperature, seed=11,
                                 speculative=True, stats=stats)
    return plain, speculative, stats


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_speculative_equals_plain_on_repetitive_text(trained, temperature):
    plain, speculative, stats = _both(trained, FOX * 2, temperature)
    assert speculative == plain
    assert stats.accepted > 0 and stats.calls < len(plain)  # drafts were accepted: fewer calls
    assert stats.emitted == len(plain)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_speculative_equals_plain_in_a_ragged_batch(trained, temperature):
    prompts = [FOX * 2, b"", b"the lazy", bytes(range(200, 230))]
    plain, speculative, stats = _both(trained, prompts, temperature, max_new_bytes=60)
    assert speculative == plain
    assert all(len(sample) == 60 for sample in speculative)
    assert stats.accepted > 0


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_speculative_equals_plain_on_random_bytes(temperature):
    model = tiny()  # untrained: drafts are mostly rejected, every row still matches plain
    prompts = [bytes(np.random.default_rng(seed).integers(0, 256, 50, dtype=np.uint8)) for seed in range(3)]
    plain, speculative, stats = _both(model, prompts, temperature, max_new_bytes=40)
    assert speculative == plain
    assert stats.drafted > 0


def test_speculative_stream_yields_the_generated_bytes(trained):
    pieces = list(trained.stream(FOX, 50, temperature=1.0, seed=4, speculative=True))
    assert b"".join(pieces) == trained.generate(FOX, 50, temperature=1.0, seed=4)
    assert len(pieces) < 50  # some pieces hold several verified bytes


def test_a_stream_from_rounds_on_the_device_yields_the_generated_bytes(trained):
    """Greedy on a fast decoder: rounds on the device, read back in pieces of several rounds."""
    pieces = list(trained.stream(FOX, 200, temperature=0.0, fast=True, speculative=True))
    assert b"".join(pieces) == trained.generate(FOX, 200, temperature=0.0)
    assert 1 < len(pieces) < 200


@pytest.mark.parametrize("fast", [False, True])
def test_speculative_with_top_k_and_top_p_and_edge_lengths(trained, fast):
    for max_new_bytes in (0, 1, 2, 9, 10):
        options = dict(temperature=0.8, top_k=20, top_p=0.9, seed=5, fast=fast)
        assert trained.generate([FOX, b"x"], max_new_bytes, speculative=True, **options) == \
            trained.generate([FOX, b"x"], max_new_bytes, **options)


def test_families_without_support_fall_back_to_plain_decoding():
    torch.manual_seed(0)
    model = build_model("multiscale", "tiny").eval()
    stats = SpeculationStats()
    prompts = [b"abcabcabc", b"xy"]
    assert model.generate(prompts, 20, seed=1, speculative=True, stats=stats) == model.generate(prompts, 20, seed=1)
    assert stats.drafted == 0


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_speculative_on_a_fast_decoder_equals_plain(trained, temperature):
    """A fast decoder verifies through its static verify piece (padded to ``VERIFY_WIDTH``),
    a CUDA graph on CUDA; on the CPU the same piece runs eagerly."""
    prompts = [FOX * 2, b"", bytes(range(200, 230))]
    stats = SpeculationStats()
    fast = trained.generate(prompts, 60, temperature=temperature, seed=3, fast=True, speculative=True, stats=stats)
    assert fast == trained.generate(prompts, 60, temperature=temperature, seed=3)
    assert stats.accepted > 0 and stats.calls < 60


def _device_rounds(model, prompts, max_new_bytes, temperature, stats, top_k=None, top_p=None, seed=0):
    """``DeviceRounds`` on a fast decoder (eager on the CPU) at any temperature, as ``generate``
    runs it where it takes them: the samples, and the decoder it leaves."""
    from omnibyte.models.base import _sampler

    sample = _sampler(temperature, top_k, top_p)
    with model._prefilled(prompts, max_new_bytes, seed, True) as (decoder, logits, noise):
        rounds = DeviceRounds(decoder, prompts, sample(logits, noise(0)), max_new_bytes, sample, noise.seeds,
                              noisy=temperature > 0)
        return [b"".join(parts) for parts in zip(*rounds.run(stats))], decoder


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.0, None, None), (1.0, None, None), (0.8, 20, 0.9)])
def test_device_rounds_sample_what_plain_decoding_samples(trained, temperature, top_k, top_p):
    """Rounds on the device at any temperature (``generate`` takes them compiled when sampling):
    the same bytes as plain decoding, ragged rows, drafts accepted."""
    prompts = [FOX * 2, b"", bytes(range(200, 230))]
    stats = SpeculationStats()
    options = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=3)
    samples, _ = _device_rounds(trained, prompts, 60, stats=stats, **options)
    assert samples == trained.generate(prompts, 60, **options)
    assert stats.accepted > 0 and stats.calls < 60 and stats.emitted == 3 * 60


def test_device_rounds_leave_the_decoder_where_plain_decoding_would(trained):
    """After rounds on the device the host's lengths are read back, and the cache holds exactly
    the text plain decoding would have fed (all but the last byte): the next step's logits
    agree with those of an eager decoder prefilled with that text."""
    prompts = [FOX, b"ab"]
    max_new_bytes = 33
    stats = SpeculationStats()
    pieces, decoder = _device_rounds(trained, prompts, max_new_bytes, 0.0, stats)
    assert pieces == trained.generate(prompts, max_new_bytes, temperature=0.0)
    assert list(decoder.lengths) == [1 + len(prompt) + max_new_bytes - 1 for prompt in prompts]
    fed = [prompt + piece[:-1] for prompt, piece in zip(prompts, pieces)]
    tokens = torch.full((2, 1 + max(len(text) for text in fed)), 256, dtype=torch.long)  # BOS first
    for row, text in enumerate(fed):
        tokens[row, 1: 1 + len(text)] = torch.tensor(list(text))
    reference = trained.decoder(2, 128)
    reference.prefill(tokens, [1 + len(text) for text in fed])
    last = torch.tensor([piece[-1] for piece in pieces])
    torch.testing.assert_close(decoder.step(last), reference.step(last), atol=1e-4, rtol=1e-4)


def test_fast_verify_piece_equals_the_eager_extend(trained):
    from omnibyte.models.flat import VERIFY_WIDTH

    prompt, lengths = random_tokens(2, 12), [12, 5]
    extra = random_tokens(2, VERIFY_WIDTH)
    eager, fast = trained.decoder(2, 64), trained.decoder(2, 64, fast=True)
    for decoder in (eager, fast):
        decoder.prefill(prompt, lengths)
    for counts in ([VERIFY_WIDTH, 3], [0, 4]):
        width = max(counts)
        expected, got = eager.extend(extra[:, :width], counts), fast.extend(extra[:, :width], counts)
        for row, count in enumerate(counts):
            torch.testing.assert_close(got[row, :count], expected[row, :count], atol=1e-5, rtol=1e-5)
        eager.rewind([1, 1] if min(counts) else [1, 0])
        fast.rewind([1, 1] if min(counts) else [1, 0])
    assert list(fast.lengths) == list(eager.lengths)
    torch.testing.assert_close(fast.step(extra[:, 0]), eager.step(extra[:, 0]), atol=1e-5, rtol=1e-5)


class TickingClock:
    """A clock that advances one second per reading: every round of drafts and every block of
    plain steps "takes" one second, so the block, which emits many more bytes, is faster."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.mark.parametrize("fast", [False, True])
def test_plain_blocks_while_drafts_are_rejected_give_the_same_bytes(fast, monkeypatch):
    """An untrained model at temperature 1 rejects nearly every draft: speculation on the host
    (uncompiled sampling runs its rounds there, fast or not) tries blocks of plain steps, finds
    them faster (the clock says so) and keeps to them, with one round of drafts between blocks;
    the bytes stay the same."""
    from omnibyte.models import speculative
    from omnibyte.models.speculative import PLAIN_BLOCK

    monkeypatch.setattr(speculative, "CLOCK", TickingClock())
    model = tiny()
    prompts = [FOX * 2, FOX[5:] * 2]
    stats = SpeculationStats()
    speculative = model.generate(prompts, 120, temperature=1.0, seed=9, speculative=True, stats=stats, fast=fast)
    assert speculative == model.generate(prompts, 120, temperature=1.0, seed=9)
    assert stats.plain_steps >= 4 * PLAIN_BLOCK  # it did fall back, and stayed with it
    assert stats.drafted > 0 and stats.emitted == 240


def test_streamed_plain_blocks_yield_the_sample(monkeypatch):
    from omnibyte.models import speculative
    from omnibyte.models.speculative import PLAIN_BLOCK

    monkeypatch.setattr(speculative, "CLOCK", TickingClock())  # plain blocks look faster
    model = tiny()
    pieces = list(model.stream(FOX * 2, 90, temperature=1.5, seed=2, speculative=True))
    assert b"".join(pieces) == model.generate(FOX * 2, 90, temperature=1.5, seed=2)
    assert PLAIN_BLOCK in {len(piece) for piece in pieces}  # a block arrives as one piece


def test_pace_goes_back_to_drafts_when_they_pay():
    from omnibyte.models.speculative import Pace

    pace = Pace()
    assert not pace.plain_next()  # drafts first
    for _ in range(3):  # drafts are rejected: after a few such rounds, plain steps are tried
        pace.round_done(seconds=1.0, emitted=1, accepted=0.0)
    assert pace.plain_next()
    pace.plain_block_done(seconds=1.0, emitted=16)
    assert not pace.plain_next()  # one round of drafts after every block
    pace.round_done(seconds=1.0, emitted=1, accepted=0.0)
    assert pace.plain_next()  # plain steps are faster
    blocks = 0
    while pace.plain_next():  # the text turns predictable: a round now emits 9 bytes in a tenth
        pace.plain_block_done(seconds=1.0, emitted=16)  # of a second, faster than a block
        if not pace.plain_next():  # the probe round
            pace.round_done(seconds=0.1, emitted=9, accepted=8.0)
        blocks += 1
        assert blocks <= 2  # the lost probe above doubled the blocks before the next; one win is enough
    assert pace.round_seconds_per_byte < pace.step_seconds_per_byte
    assert pace.blocks_between_probes == 1


def test_pace_probes_less_often_while_drafts_keep_losing():
    from omnibyte.models.speculative import MAX_BLOCKS_BETWEEN_PROBES, Pace

    pace = Pace()
    for _ in range(3):
        pace.round_done(seconds=1.0, emitted=1, accepted=0.0)
    stretches = []
    for _ in range(7):
        blocks = 0
        while pace.plain_next():
            pace.plain_block_done(seconds=1.0, emitted=16)
            blocks += 1
        stretches.append(blocks)
        pace.round_done(seconds=1.0, emitted=1, accepted=0.0)  # every probe loses
    assert stretches == [1, 2, 4, 8, 16, 16, 16] and MAX_BLOCKS_BETWEEN_PROBES == 16

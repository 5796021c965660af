"""The BLT patchers (batch and incremental), the entropy model and ``omnibyte patches``.

The patchers are checked on hand-made entropy sequences against boundaries worked out by hand,
and the incremental tracker against the batch form; the entropy model's full forward against a
per-position reference, its incremental form against its full forward."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

import omnibyte
from omnibyte.apps.patches import find_patches, model_patcher
from omnibyte.cli import main
from omnibyte.cli.info import model_summary, print_summary
from omnibyte.errors import OmnibyteError
from omnibyte.models.base import BOS
from omnibyte.models.blt.entropy import EntropyModel, entropy_bits, load_entropy_model, window_start
from omnibyte.models.blt.patching import (
    SCHEMES,
    PatchingConfig,
    PatchTracker,
    calibrate_threshold,
    mean_patch_size,
    needs_entropy,
    patch_starts,
)
from omnibyte.models.serialization import save_model
from omnibyte.models.validation import ConfigError
from helpers import one_thread, random_tokens  # noqa: F401 (one_thread is a fixture)


def starts_of(config: PatchingConfig, tokens, entropies=None) -> list[int]:
    """The start positions of one row, from lists."""
    tokens = torch.tensor([tokens])
    entropies = None if entropies is None else torch.tensor([entropies], dtype=torch.float32)
    return torch.nonzero(patch_starts(config, tokens, entropies)[0]).flatten().tolist()


def document(text: bytes) -> list[int]:
    return [BOS, *text]


# ---- the batch form on hand-made sequences -------------------------------------------------

def test_entropy_scheme_starts_where_entropy_exceeds_the_threshold():
    entropies = [0.0, 5.0, 1.0, 1.0, 6.0, 0.5, 0.5, 0.5, 7.0, 1.0]
    config = PatchingConfig(scheme="entropy", threshold=3.0)
    # 0: the BOS, 1: the byte after it (both always), then 4 and 8 (above 3 bits)
    assert starts_of(config, document(b"abcdefghi"), entropies) == [0, 1, 4, 8]
    assert starts_of(dataclasses.replace(config, threshold=5.5), document(b"abcdefghi"), entropies) == [0, 1, 4, 8]
    assert starts_of(dataclasses.replace(config, threshold=6.5), document(b"abcdefghi"), entropies) == [0, 1, 8]


def test_monotonic_scheme_splits_on_rises_not_on_high_plateaus():
    entropies = [0.0, 1.0, 6.0, 6.5, 7.0, 2.0, 2.2, 6.0, 1.0]
    tokens = document(b"abcdefgh")
    assert starts_of(PatchingConfig(scheme="entropy", threshold=3.0), tokens, entropies) == [0, 1, 2, 3, 4, 7]
    # rises: +5 at 2, +3.8 at 7; the plateau 6 -> 6.5 -> 7 stays one patch
    assert starts_of(PatchingConfig(scheme="monotonic", threshold=3.0), tokens, entropies) == [0, 1, 2, 7]


def test_min_patch_size_holds_back_starts():
    entropies = [0.0] + [5.0] * 12  # every byte wants a patch of its own
    tokens = document(b"abcdefghijkl")
    assert starts_of(PatchingConfig(threshold=3.0), tokens, entropies) == list(range(13))
    assert starts_of(PatchingConfig(threshold=3.0, min_patch_size=3), tokens, entropies) == [0, 1, 4, 7, 10]
    # a held-back want is not carried over: after 1, only 5 (3 wants were blocked) and 9 start
    sparse = [0.0, 0.0, 0.0, 5.0, 0.0, 5.0, 5.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0]
    assert starts_of(PatchingConfig(threshold=3.0, min_patch_size=3), tokens, sparse) == [0, 1, 5, 9]


def test_max_patch_size_forces_starts():
    entropies = [0.0] * 13  # nothing wants a patch
    tokens = document(b"abcdefghijkl")
    assert starts_of(PatchingConfig(threshold=3.0, max_patch_size=4), tokens, entropies) == [0, 1, 5, 9]
    # a want restarts the count: 6 starts, so the next forced start is 6 + 4
    entropies[6] = 5.0
    assert starts_of(PatchingConfig(threshold=3.0, max_patch_size=4), tokens, entropies) == [0, 1, 5, 6, 10]
    # min == max: fixed-size patches whatever the entropy says
    assert starts_of(PatchingConfig(threshold=3.0, min_patch_size=3, max_patch_size=3), tokens,
                     [0.0] + [5.0] * 12) == [0, 1, 4, 7, 10]


def test_fixed_scheme_every_stride_bytes_within_the_size_limits():
    tokens = document(b"abcdefghijkl")
    assert starts_of(PatchingConfig(scheme="fixed", stride=4), tokens) == [0, 1, 5, 9]
    assert starts_of(PatchingConfig(scheme="fixed", stride=4, max_patch_size=3), tokens) == [0, 1, 4, 7, 10]
    assert starts_of(PatchingConfig(scheme="fixed", stride=2, min_patch_size=5), tokens) == [0, 1, 6, 11]
    assert starts_of(PatchingConfig(scheme="fixed", stride=1), tokens) == list(range(13))


def test_space_scheme_starts_after_bytes_that_are_not_letters_or_digits():
    text = b"ab cd,e9  f.\xc3\xa9t\xe4\xb8\xad"
    # after ' ' (2), ',' (5), ' ' (8), ' ' (9), '.' (11); UTF-8 bytes count as letters: never cut
    expected_bytes = [0, 3, 6, 9, 10, 12]
    assert starts_of(PatchingConfig(scheme="space"), document(text)) == [0] + [b + 1 for b in expected_bytes]
    # min 2: the double space is one patch; max 3: long words are cut
    assert starts_of(PatchingConfig(scheme="space", min_patch_size=2), document(text)) == \
        [0, 1, 4, 7, 10, 13]
    assert starts_of(PatchingConfig(scheme="space", max_patch_size=3), document(b"abcdefg h")) == [0, 1, 4, 7, 9]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_document_start_is_a_patch_of_its_own_and_starts_the_next(scheme):
    """A BOS in the middle of a row (packed training windows) starts a patch, and so does the
    byte after it, whatever min_patch_size says."""
    tokens = [BOS, *b"abcdef", BOS, *b"ghijkl"]
    config = PatchingConfig(scheme=scheme, threshold=8.0, min_patch_size=5, max_patch_size=16, stride=16)
    starts = starts_of(config, tokens, [0.0] * len(tokens))
    assert {0, 1, 7, 8} <= set(starts)
    assert all(start in (0, 1, 7, 8) or start >= 8 + 5 for start in starts)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_padding_after_a_row_never_changes_its_starts(scheme):
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 257, (4, 60), generator=generator)
    entropies = torch.rand(4, 60, generator=generator) * 8
    config = PatchingConfig(scheme=scheme, threshold=4.0, min_patch_size=2, max_patch_size=6, stride=3)
    whole = patch_starts(config, tokens, entropies)
    for length in (1, 17, 40):
        assert torch.equal(patch_starts(config, tokens[:, :length], entropies[:, :length]), whole[:, :length])


def test_entropy_schemes_need_entropies():
    assert needs_entropy(PatchingConfig(scheme="entropy")) and needs_entropy(PatchingConfig(scheme="monotonic"))
    assert not needs_entropy(PatchingConfig(scheme="fixed")) and not needs_entropy(PatchingConfig(scheme="space"))
    with pytest.raises(ValueError, match="needs entropies"):
        patch_starts(PatchingConfig(), torch.zeros(1, 4, dtype=torch.long))


def test_config_checks_its_fields():
    with pytest.raises(ConfigError, match="min_patch_size must not exceed max_patch_size"):
        PatchingConfig(min_patch_size=8, max_patch_size=4)
    with pytest.raises(ConfigError, match="scheme must be one of"):
        PatchingConfig(scheme="bpe")
    with pytest.raises(ConfigError, match="threshold"):
        PatchingConfig(threshold=9.0)
    with pytest.raises(ConfigError, match="stride"):
        PatchingConfig(stride=0)
    config = PatchingConfig(scheme="monotonic", threshold=1.25, max_patch_size=32)
    assert PatchingConfig.from_json(config.to_json()) == config


# ---- the incremental tracker == the batch form ---------------------------------------------

def reference_starts(config, rows: list[torch.Tensor], entropies: list[torch.Tensor]) -> list[list[bool]]:
    return [patch_starts(config, row.unsqueeze(0), ent.unsqueeze(0))[0].tolist() for row, ent in zip(rows, entropies)]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_tracker_fed_byte_by_byte_reproduces_the_batch_form(scheme):
    """Ragged rows fed at their own pace (rows sit out random steps), with BOS in the middle
    of rows and a row restarted halfway: every row's starts equal the batch form's."""
    generator = torch.Generator().manual_seed(7)
    config = PatchingConfig(scheme=scheme, threshold=4.5, min_patch_size=2, max_patch_size=5, stride=3)
    lengths = [40, 13, 27, 1, 33]
    rows = []
    for index, length in enumerate(lengths):
        row = torch.randint(0, 256, (length,), generator=generator)
        row[0] = BOS
        if index == 0:
            row[10] = BOS  # a second document
        rows.append(row)
    entropies = [torch.rand(length, generator=generator) * 8 for length in lengths]
    expected = reference_starts(config, rows, entropies)

    tracker = PatchTracker(config, len(rows))
    got: list[list[bool]] = [[] for _ in rows]
    fed = [0] * len(rows)
    while any(f < length for f, length in zip(fed, lengths)):
        active = torch.tensor([f < length for f, length in zip(fed, lengths)]) & \
            (torch.rand(len(rows), generator=generator) < 0.7)
        previous = torch.tensor([int(rows[r][fed[r] - 1]) if 0 < fed[r] <= lengths[r] else BOS for r in range(len(rows))])
        current = torch.tensor([int(rows[r][min(fed[r], lengths[r] - 1)]) for r in range(len(rows))])
        entropy = torch.tensor([float(entropies[r][min(fed[r], lengths[r] - 1)]) for r in range(len(rows))])
        starts = tracker.starts(previous, entropy if needs_entropy(config) else None, active, tokens=current)
        for r in range(len(rows)):
            if active[r]:
                got[r].append(bool(starts[r]))
                fed[r] += 1
            else:
                assert not starts[r]
    assert got == expected
    # different rows close patches at different bytes (the case a batched decoder must handle)
    assert len({tuple(row[:13]) for row in expected if len(row) >= 13}) > 1

    # restart row 2 with a new document: its starts follow the new one, the others are untouched
    tracker.reset(torch.tensor([2]))
    new_row, new_entropy = rows[4][:20].clone(), entropies[4][:20]
    only_row_2 = torch.zeros(len(rows), dtype=torch.bool)
    only_row_2[2] = True
    restarted = []
    for t in range(20):
        previous = torch.full((len(rows),), BOS if t == 0 else int(new_row[t - 1]))
        restarted.append(bool(tracker.starts(previous, torch.full((len(rows),), float(new_entropy[t])),
                                             only_row_2, tokens=torch.full((len(rows),), int(new_row[t])))[2]))
    assert restarted == reference_starts(config, [new_row], [new_entropy])[0]


def test_tracker_during_generation_needs_no_current_token():
    """Generated bytes are never BOS: without ``tokens`` the tracker still equals the batch form."""
    generator = torch.Generator().manual_seed(3)
    tokens = random_tokens(3, 50, seed=3)
    entropies = torch.rand(3, 50, generator=generator) * 8
    config = PatchingConfig(scheme="entropy", threshold=5.0, min_patch_size=2, max_patch_size=6)
    tracker = PatchTracker(config, 3)
    got = [tracker.starts(tokens[:, t - 1] if t else torch.full((3,), BOS), entropies[:, t]) for t in range(50)]
    assert torch.equal(torch.stack(got, dim=1), patch_starts(config, tokens, entropies))


def test_tracker_refuses_missing_entropies():
    with pytest.raises(ValueError, match="needs entropies"):
        PatchTracker(PatchingConfig(), 2).starts(torch.zeros(2, dtype=torch.long), None)


# ---- calibration --------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["entropy", "monotonic"])
@pytest.mark.parametrize("target", [2.0, 3.5, 6.0])
def test_calibration_hits_the_target_mean_patch_size(scheme, target):
    generator = torch.Generator().manual_seed(0)
    # bursty, text-like entropies: mostly low, now and then a hard byte
    entropies = torch.distributions.Gamma(torch.tensor(1.2), torch.tensor(0.8)).sample((4, 4000)).clamp_max(8.0)
    del generator
    config = PatchingConfig(scheme=scheme, max_patch_size=16)
    threshold = calibrate_threshold(config, entropies, target)
    tokens = torch.zeros(entropies.shape, dtype=torch.long)
    achieved = mean_patch_size(patch_starts(dataclasses.replace(config, threshold=threshold), tokens, entropies))
    assert abs(achieved - target) / target < 0.02
    # a higher target needs a higher threshold
    if target < 6.0:
        assert calibrate_threshold(config, entropies, target * 1.5) > threshold


def test_calibration_refuses_what_it_cannot_reach():
    entropies = torch.rand(2, 500) * 8
    with pytest.raises(ConfigError, match="must be in"):
        calibrate_threshold(PatchingConfig(max_patch_size=8), entropies, 12.0)
    with pytest.raises(ConfigError, match="entropy or monotonic"):
        calibrate_threshold(PatchingConfig(scheme="space"), entropies, 4.0)


# ---- the entropy model ------------------------------------------------------------------

@pytest.fixture(scope="module")
def entropy_model(one_thread) -> EntropyModel:
    torch.manual_seed(0)
    return EntropyModel(omnibyte.build_model("flat", "tiny", max_sequence_length=16))  # windows at 8 tokens


def test_entropy_model_is_frozen_and_stays_in_eval(entropy_model):
    assert not any(p.requires_grad for p in entropy_model.parameters())
    entropy_model.train()
    assert not entropy_model.training and not entropy_model.model.training


def test_entropies_are_the_bits_of_the_previous_prediction(entropy_model):
    tokens = random_tokens(2, 12, seed=4)
    with torch.no_grad():
        probs = torch.softmax(entropy_model.model(tokens), dim=-1)
    reference = -(probs * torch.log2(probs)).sum(-1)
    entropies = entropy_model.entropies(tokens)
    assert torch.equal(entropies[:, 0], torch.zeros(2))
    torch.testing.assert_close(entropies[:, 1:], reference[:, :-1], atol=1e-5, rtol=1e-5)
    assert bool((entropies >= 0).all() and (entropies <= 8).all())


def test_long_inputs_are_read_in_half_overlapping_windows(entropy_model):
    tokens = random_tokens(2, 45, seed=5)
    half = entropy_model.window // 2
    reference = torch.zeros(2, 45)
    with torch.no_grad():
        for t in range(1, 45):
            first = int(window_start(t, half))
            assert 0 < t - first < 2 * half
            reference[:, t] = entropy_bits(entropy_model.model(tokens[:, first:t]))[:, -1]
    torch.testing.assert_close(entropy_model.entropies(tokens), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fast", [False, True], ids=["eager", "fast"])
def test_entropy_decoder_equals_the_full_forward(entropy_model, fast):
    """Ragged prompts, then steps past several window moves, then one row restarted."""
    tokens = random_tokens(3, 50, seed=6)
    full = entropy_model.entropies(tokens)
    lengths = np.array([5, 1, 12])
    decoder = entropy_model.decoder(3, 50, fast=fast)
    prefilled = decoder.prefill(tokens[:, :12], lengths)
    for row, length in enumerate(lengths):
        torch.testing.assert_close(prefilled[row, :length], full[row, :length], atol=1e-5, rtol=1e-5)
        assert bool((prefilled[row, length:] == 0).all())
    torch.testing.assert_close(decoder.next, full[torch.arange(3), torch.from_numpy(lengths)], atol=1e-5, rtol=1e-5)
    for _ in range(30):
        following = decoder.step(tokens[torch.arange(3), torch.from_numpy(lengths)])
        lengths += 1
        torch.testing.assert_close(following, full[torch.arange(3), torch.from_numpy(lengths)], atol=1e-5, rtol=1e-5)
    decoder.reset([1])
    again = decoder.prefill(tokens[:, :9], [0, 9, 0])
    torch.testing.assert_close(again[1], full[1, :9], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(decoder.next[1], full[1, 9], atol=1e-5, rtol=1e-5)


def test_generation_boundaries_equal_the_patcher_on_the_finished_sequence(entropy_model):
    """Greedy decoding with the entropy decoder and the tracker, rows of different prompt
    lengths: the boundaries found while generating are those of the finished sequences."""
    model = omnibyte.build_model("flat", "tiny", seed=1, max_sequence_length=64).eval()  # the generator
    config = PatchingConfig(scheme="entropy", threshold=7.9835, min_patch_size=1, max_patch_size=4)
    prompts = [[BOS, *b"ab"], [BOS], [BOS, *b"hello"]]
    rows, total = len(prompts), 30
    decoder, entropies = model.decoder(rows, total), entropy_model.decoder(rows, total)
    width = max(len(p) for p in prompts)
    padded = torch.tensor([p + [BOS] * (width - len(p)) for p in prompts])
    lengths = [len(p) for p in prompts]
    logits = decoder.prefill(padded, lengths)
    prompt_entropies = entropies.prefill(padded, lengths)
    tracker = PatchTracker(config, rows)
    found = [[] for _ in prompts]
    for t in range(width):  # the prompts' own starts, then one start per generated byte
        active = torch.tensor([t < length for length in lengths])
        previous = padded[:, t - 1] if t else torch.full((rows,), BOS)
        starts = tracker.starts(previous, prompt_entropies[:, t], active, tokens=padded[:, t])
        for row in range(rows):
            if active[row]:
                found[row].append(bool(starts[row]))
    sequences = [list(p) for p in prompts]
    for _ in range(total - width):
        next_bytes = logits.argmax(-1)
        starts = tracker.starts(torch.tensor([s[-1] for s in sequences]), entropies.next)
        for row in range(rows):
            found[row].append(bool(starts[row]))
            sequences[row].append(int(next_bytes[row]))
        logits = decoder.step(next_bytes)
        entropies.step(next_bytes)
    for row, sequence in enumerate(sequences):
        finished = torch.tensor([sequence])
        expected = patch_starts(config, finished, entropy_model.entropies(finished))[0].tolist()
        assert found[row] == expected
    # some patches were closed by the entropy, not by the size limit, at different bytes per row
    sizes = [np.diff(np.flatnonzero(row)[1:]).tolist() for row in found]
    assert any(size < config.max_patch_size for row in sizes for size in row)
    assert len({tuple(row) for row in sizes}) == rows


def test_load_entropy_model_from_a_saved_folder(tmp_path, entropy_model):
    save_model(entropy_model.model, tmp_path / "entropy")
    loaded = load_entropy_model(tmp_path / "entropy")
    tokens = random_tokens(1, 20, seed=8)
    torch.testing.assert_close(loaded.entropies(tokens), entropy_model.entropies(tokens), atol=0, rtol=0)
    with pytest.raises(OmnibyteError, match="not found"):
        load_entropy_model(tmp_path / "absent")


# ---- omnibyte patches and info ------------------------------------------------------------

@pytest.fixture(scope="module")
def flat_folder(tmp_path_factory, entropy_model):
    folder = tmp_path_factory.mktemp("patches") / "entropy"
    save_model(entropy_model.model, folder)
    return folder


TEXT = b"the quick brown fox jumps over the lazy dog. " * 20


def test_patches_cli_reports_the_patchers_boundaries(flat_folder, tmp_path, capsys):
    (tmp_path / "text.txt").write_bytes(TEXT)
    code = main(["patches", str(tmp_path / "text.txt"), "--model", str(flat_folder), "--device", "cpu",
                 "--scheme", "space", "--max-patch-size", "8", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["bytes"] == len(TEXT)
    tokens = torch.tensor([[BOS, *TEXT]])
    config = PatchingConfig(scheme="space", max_patch_size=8)
    expected = (torch.nonzero(patch_starts(config, tokens)[0, 1:]).flatten()).tolist()
    assert report["boundaries"] == expected[:1000] and report["patches"] == len(expected)
    assert report["mean_bytes_per_patch"] == pytest.approx(len(TEXT) / len(expected))
    assert report["boundaries"][:4] == [0, 4, 10, 16]  # "the ", "quick ", "brown "

    code = main(["patches", str(tmp_path / "text.txt"), "--model", str(flat_folder), "--device", "cpu",
                 "--scheme", "entropy", "--calibrate", "3"])
    out = capsys.readouterr().out
    assert code == 0 and "calibrated on this file for 3 bytes per patch" in out and "first boundaries: 0," in out


@pytest.mark.parametrize("scheme", ["monotonic", "fixed"])
def test_patches_plot_is_a_valid_png(flat_folder, tmp_path, capsys, scheme):
    (tmp_path / "text.txt").write_bytes(TEXT)
    plot = tmp_path / "patches.png"
    code = main(["patches", str(tmp_path / "text.txt"), "--model", str(flat_folder), "--device", "cpu",
                 "--scheme", scheme, "--plot", str(plot), "--plot-bytes", "300"])
    assert code == 0 and f"plot: {plot}" in capsys.readouterr().out
    with Image.open(plot) as image:
        image.verify()
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size[0] > 500
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    reddish = (pixels[:, 0] > 150) & (pixels[:, 1] < 120) & (pixels[:, 2] < 120)
    assert reddish.sum() > 50  # the boundaries are drawn
    # an existing plot is kept unless --force
    assert main(["patches", str(tmp_path / "text.txt"), "--model", str(flat_folder), "--scheme", scheme,
                 "--plot", str(plot)]) == 2


def test_a_model_with_its_own_patcher_is_patched_by_it(entropy_model):
    """The BLT contract: ``model.patching`` and ``model.entropy_model``; options override fields."""
    model = omnibyte.build_model("flat", "tiny", max_sequence_length=64)
    model.patching = PatchingConfig(scheme="entropy", threshold=7.98, max_patch_size=6)
    model.entropy_model = entropy_model
    config, chosen = model_patcher(model, {})
    assert config == model.patching and chosen is entropy_model
    config, _ = model_patcher(model, {"max_patch_size": 3})
    assert config.max_patch_size == 3 and config.threshold == 7.98
    report = find_patches(TEXT[:100], config, chosen)
    tokens = torch.tensor([[BOS, *TEXT[:100]]])
    expected = patch_starts(config, tokens, entropy_model.entropies(tokens))[0, 1:]
    assert report.starts.tolist() == torch.nonzero(expected).flatten().tolist()

    summary = model_summary(model)
    assert summary["patching"]["scheme"] == "entropy" and summary["patching"]["max_patch_size"] == 6

    model.entropy_model = None
    with pytest.raises(OmnibyteError, match="no entropy model"):
        model_patcher(model, {})
    assert model_patcher(model, {"scheme": "fixed"})[0].scheme == "fixed"


def test_info_prints_the_patcher(capsys):
    summary = {"arch": "blt", "task": {"name": "next-byte"}, "parameters": 10, "context": 64, "flops_per_byte": 1.0,
               "saved_step": None, "config": {}, "patching": {"description": PatchingConfig().describe()}}
    print_summary(summary)
    assert "patcher       entropy > 2 bits, patches of 1..16 bytes" in capsys.readouterr().out
    assert "patching" not in model_summary(omnibyte.build_model("flat", "tiny"))

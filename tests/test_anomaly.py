"""Anomaly detection: smoothing, regions, a trained model finding an injected block, the CLI."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from omnibyte import build_model
from omnibyte.apps.anomaly import (
    analyze,
    anomaly_scores,
    find_regions,
    plot_surprisal,
    roc_auc,
    smooth,
    surprisal,
)
from omnibyte.cli import main
from omnibyte.data import ByteCorpus, Document
from omnibyte.models.serialization import save_model
from omnibyte.train.trainer import TrainConfig, Trainer

PATTERN = b"the quick brown fox jumps over the lazy dog. "
INJECT_AT, INJECT_LENGTH = 1500, 120


def corrupted_text() -> bytes:
    clean = PATTERN * 70  # 3,150 bytes
    block = np.random.default_rng(1).integers(0, 256, INJECT_LENGTH, dtype=np.uint8).tobytes()
    return clean[:INJECT_AT] + block + clean[INJECT_AT:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny flat model that has learnt the repeated sentence, saved to a folder."""
    root = tmp_path_factory.mktemp("anomaly")
    torch.manual_seed(0)
    model = build_model("flat", "tiny", max_sequence_length=128)
    corpus = ByteCorpus([Document("fox.txt", PATTERN * 100)])
    config = TrainConfig(seq_len=128, batch_size=8, steps=60, lr=5e-3, eval_every=0, save_every=1000,
                         log_every=10, device="cpu")
    Trainer(model, corpus, config, root / "run", progress=False).fit()
    model.eval()
    save_model(model, root / "model")
    return model, root


# ---- signal and regions on synthetic surprisal ----------------------------------------

def test_smooth_is_a_centred_moving_average_with_short_edges():
    bits = np.array([0, 0, 0, 6, 6, 6, 0, 0, 0], dtype=float)
    smoothed = smooth(bits, 3)
    assert smoothed.shape == bits.shape
    assert smoothed[4] == pytest.approx(6.0)
    assert smoothed[2] == pytest.approx(2.0)  # mean of bits[1:4]
    assert smoothed[0] == pytest.approx(0.0)  # mean of bits[0:2] only
    assert smooth(bits, 1) == pytest.approx(bits)
    assert smooth(np.arange(10.0), 4).mean() == pytest.approx(np.arange(10.0).mean(), abs=0.6)


def test_known_bump_is_found_with_its_offset_and_length():
    bits = np.random.default_rng(0).normal(2.0, 0.5, 10_000).clip(0)
    bits[4000:4300] += 5.0
    regions = find_regions(bits, window=64)
    assert len(regions) == 1
    region = regions[0]
    assert abs(region.offset - 4000) <= 8 and abs(region.end - 4300) <= 8
    assert region.bits_per_byte == pytest.approx(7.0, abs=0.3)
    assert region.score > 20


def test_flat_and_noisy_surprisal_yield_no_region():
    assert find_regions(np.full(5000, 3.0), window=64) == []
    noise = np.random.default_rng(1).normal(3.0, 1.0, 20_000).clip(0)
    assert find_regions(noise, window=64) == []
    # a tiny rise on a perfectly predicted file is below the spread floor
    almost_flat = np.full(5000, 0.01)
    almost_flat[2000:2100] = 0.03
    assert find_regions(almost_flat, window=64) == []


def test_regions_sorted_by_score_merged_and_capped():
    bits = np.full(6000, 1.0)
    bits[1000:1200] = 4.0  # weaker
    bits[3000:3100] = 9.0  # stronger
    bits[3120:3200] = 9.0  # 20 bytes apart: one region after smoothing
    regions = find_regions(bits, window=64)
    assert [(r.offset, r.end) for r in regions] == [(3000, 3200), (1000, 1200)]
    assert regions[0].score > regions[1].score
    assert find_regions(bits, window=64, top_k=1) == regions[:1]
    # without a threshold, top_k alone decides
    assert len(find_regions(np.random.default_rng(2).random(3000), window=32, threshold=None, top_k=3)) == 3


def test_short_bump_spans_one_window_and_a_trailing_shoulder_stays_out():
    bits = np.full(4000, 1.0)
    bits[1000:1010] = 4.0  # shorter than the window: smeared over about one window
    region, = find_regions(bits, window=64)
    assert abs(region.offset - (1005 - 32)) <= 4 and abs(region.length - 64) <= 4
    bits = np.full(4000, 1.0)
    bits[2000:2200] = 9.0
    bits[2200:2400] = 2.0  # a slow recovery after the bump: above threshold, below half height
    region, = find_regions(bits, window=64)
    assert region.offset == 2000 and 2200 <= region.end <= 2208  # the 9 -> 2 step reads half height a bit late


def test_anomaly_scores_are_relative_to_the_file():
    low = np.full(1000, 1.0)
    low[500:600] = 3.0
    high = low + 5.0  # the same file under a model that finds everything harder
    assert anomaly_scores(low, 32) == pytest.approx(anomaly_scores(high, 32))


def test_roc_auc_hand_checked():
    # positives 0.9, 0.4; negatives 0.8, 0.3, 0.1: of 6 pairs, 5 are ordered right -> 5/6
    assert roc_auc([1, 0, 1, 0, 0], [0.9, 0.8, 0.4, 0.3, 0.1]) == pytest.approx(5 / 6)
    assert roc_auc([1, 1, 0, 0], [2, 3, 0, 1]) == 1.0
    assert roc_auc([0, 0, 1, 1], [2, 3, 0, 1]) == 0.0
    assert roc_auc([1, 0], [0.5, 0.5]) == 0.5  # ties count half
    assert roc_auc([1, 0, 0, 1], [1, 1, 0, 0]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        roc_auc([1, 1], [0.1, 0.2])


# ---- a trained model ---------------------------------------------------------------------

def test_trained_model_flags_the_injected_random_block(trained):
    model, _ = trained
    data = corrupted_text()
    bits = surprisal(data, model)
    assert bits.shape == (len(data),)
    outside = np.concatenate([bits[200:INJECT_AT], bits[INJECT_AT + INJECT_LENGTH:]])
    assert bits[INJECT_AT:INJECT_AT + INJECT_LENGTH].mean() > outside.mean() + 3
    report = analyze(data, model, name="fox.txt", window=32)
    top = report.regions[0]
    assert top.overlaps(INJECT_AT, INJECT_AT + INJECT_LENGTH)
    assert abs(top.offset - INJECT_AT) <= 32 and abs(top.end - (INJECT_AT + INJECT_LENGTH)) <= 32
    assert all(region.score < top.score for region in report.regions[1:])


def test_plot_is_a_valid_png(tmp_path):
    bits = np.random.default_rng(0).random(30_000) * 3  # long input: drawn as an envelope
    bits[10_000:10_500] += 5
    path = plot_surprisal(bits, find_regions(bits), tmp_path / "sub" / "plot.png", name="x.bin")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 500
    assert [p.name for p in path.parent.iterdir()] == ["plot.png"]  # no temporary left behind


# ---- CLI ------------------------------------------------------------------------------------

def test_cli_prints_regions_and_writes_the_plot(trained, tmp_path, capsys, monkeypatch):
    _, root = trained
    target = tmp_path / "fox_corrupt.txt"
    target.write_bytes(corrupted_text())
    plot = tmp_path / "out.png"
    assert main(["anomaly", str(target), "--model", str(root / "model"), "--device", "cpu",
                 "--window", "32", "--plot", str(plot)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("fox_corrupt.txt: 3,270 bytes")
    header = lines[1].split()
    assert header[:4] == ["rank", "offset", "length", "bits/byte"]
    first = lines[2].split()
    offset, length = int(first[1].replace(",", "")), int(first[2].replace(",", ""))
    assert offset < INJECT_AT + INJECT_LENGTH and INJECT_AT < offset + length
    assert lines[-1] == f"plot: {plot}"
    with Image.open(plot) as image:
        assert image.format == "PNG"

    monkeypatch.chdir(tmp_path)  # without --plot, no PNG anywhere
    before = sorted(tmp_path.iterdir())
    assert main(["anomaly", str(target), "--model", str(root / "model"), "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bytes"] == 3270 and report["regions"][0]["offset"] == offset and report["plot"] is None
    assert sorted(tmp_path.iterdir()) == before


def test_cli_plot_overwrites_only_with_force(trained, tmp_path, capsys):
    _, root = trained
    target = tmp_path / "fox_corrupt.txt"
    target.write_bytes(corrupted_text())
    plot = tmp_path / "old.png"
    plot.write_bytes(b"keep")
    args = ["anomaly", str(target), "--model", str(root / "model"), "--device", "cpu", "--plot", str(plot)]
    assert main(args) == 2
    assert "exists (use --force to overwrite)" in capsys.readouterr().err and plot.read_bytes() == b"keep"
    assert main([*args, "--force"]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reads_stdin(trained, capsys, monkeypatch):
    import io

    _, root = trained
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(corrupted_text())))
    assert main(["anomaly", "-", "--model", str(root / "model"), "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["file"] == "stdin" and report["bytes"] == 3270


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omnibyte.cli", *args], capture_output=True, text=True)


def test_cli_one_line_errors(trained, tmp_path):
    _, root = trained
    missing = run_cli("anomaly", str(tmp_path / "nope.bin"), "--model", str(root / "model"))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [f"omnibyte: error: cannot read {tmp_path / 'nope.bin'}: "
                                                   "No such file or directory"]
    (tmp_path / "x.bin").write_bytes(b"abc")
    bad_model = run_cli("anomaly", str(tmp_path / "x.bin"), "--model", str(tmp_path))
    assert bad_model.returncode == 2 and len(bad_model.stderr.strip().splitlines()) == 1
    assert "not an omnibyte model directory" in bad_model.stderr
    assert not (tmp_path / "x.bin.anomaly.png").exists()

"""``bench/bench_quality.py`` (issue 11's quality table) on the CPU with tiny contenders: a run
stopped by SIGTERM saves and is reported as interrupted; ``--resume`` finishes it to the steps
it planned for its budget and scores it; BLT rows carry the bytes per patch."""
import gzip
import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_quality  # noqa: E402
from helpers import word_text  # noqa: E402


@pytest.fixture
def tiny_gcide(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_quality, "TEST_BYTES", 4096)
    monkeypatch.setattr(bench_quality, "VALIDATION_BYTES", 4096)
    monkeypatch.setattr(bench_quality, "CONTENDERS", {
        "flat": ("flat", "tiny", {}, 64, 4, 3e-3),
        "blt": ("blt", "tiny", {"patching": {"scheme": "space", "max_patch_size": 8}}, 64, 4, 3e-3)})
    path = tmp_path / "gcide.txt.gz"
    path.write_bytes(gzip.compress(word_text(40_000, seed=3)))
    return bench_quality.gcide_splits(str(path))


def test_a_run_stopped_by_sigterm_resumes_to_its_plan_and_is_scored(tiny_gcide, tmp_path, monkeypatch):
    original = bench_quality.validate_four_times
    stopped = []

    def stop_near_the_end(trainer):  # as `timeout -s TERM` stops the first phase of a long budget
        if not stopped and trainer.step > 25 and trainer.step >= trainer.config.steps - 20:
            stopped.append(trainer.step)
            os.kill(os.getpid(), signal.SIGTERM)
        original(trainer)

    monkeypatch.setattr(bench_quality, "validate_four_times", stop_near_the_end)
    first = bench_quality.train_and_test("flat", tiny_gcide, 0.1, tmp_path / "runs")
    assert first["interrupted_at_step"] == stopped[0] < first["planned_steps"]
    assert "test_bits_per_byte" not in first
    monkeypatch.setattr(bench_quality, "validate_four_times", original)
    done = bench_quality.train_and_test("flat", tiny_gcide, 0.1, tmp_path / "runs", resume=True)
    assert done["steps"] == done["planned_steps"] == first["planned_steps"]  # the plan, not a new one
    assert done["train_seconds"] > first["train_seconds"] and 0 < done["test_bits_per_byte"] < 8


def test_blt_rows_give_bytes_per_patch(tiny_gcide, tmp_path):
    row = bench_quality.train_and_test("blt", tiny_gcide, 0.03, tmp_path / "runs")
    assert row["steps"] >= 1 and 0 < row["test_bits_per_byte"] < 9
    assert 1.0 <= row["bytes_per_patch"] <= 8.0  # space patches, at most max_patch_size

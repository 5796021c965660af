"""``bench/bench_tasks.py``'s pre-training options on the CPU: Nottingham only (1 KB tunes), a
handful of files, seconds of training. Needs ../shared/data's Nottingham ABC; skips without."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def run_bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "bench" / "bench_tasks.py"), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_pretraining_alone_with_its_own_minutes(tmp_path):
    if not (DATA / "nottingham" / "ABC_cleaned").is_dir():
        pytest.skip("../shared/data/nottingham is missing")
    done = run_bench("--data", str(DATA), "--tasks", "nottingham", "--limit-files", "8", "--minutes", "0.05",
                     "--pretrain", "--no-scratch", "--pretrain-minutes", "0.03", "--batch-size", "4",
                     "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads((tmp_path / "out" / "bench_tasks.json").read_text())["rows"]
    assert row["start"] == "pre-trained" and row["minutes"] == 0.05 and row["pretrain"]["minutes"] == 0.03
    assert row["pretrain"]["steps"] >= 1 and 0.0 <= row["accuracy"] <= 1.0
    assert not (tmp_path / "work" / "nottingham").exists()  # no model from scratch was trained


def test_pretraining_options_need_pretrain(tmp_path):
    done = run_bench("--out", str(tmp_path), "--no-scratch")
    assert done.returncode == 2 and "go with --pretrain" in done.stderr


def test_augmented_copies_go_to_training_only():
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_tasks
    import numpy as np

    from omnibyte.data import Document
    from omnibyte.media import pixels_to_bmp

    rng = np.random.default_rng(0)
    documents = [Document(f"images/{index:03d}.bmp", pixels_to_bmp(rng.integers(0, 256, (32, 32), dtype=np.uint8)),
                          str(index % 2)) for index in range(60)]
    train, validation = bench_tasks.split_train(documents, {"augment": "mirror,shift"})
    plain_train, plain_validation = bench_tasks.split_train(documents, {})
    assert validation.names == plain_validation.names and validation.num_documents >= 1
    assert train.num_documents == 3 * plain_train.num_documents
    assert train.names[:plain_train.num_documents] == plain_train.names
    validation_names = set(validation.names)
    assert not any(name.split("[")[0] in validation_names for name in train.names)

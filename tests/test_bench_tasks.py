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
    from omnibyte.data import Document

    documents = [Document(f"images/{index:03d}.bmp", bytes([index]) * 8, str(index % 2)) for index in range(60)]
    spec = {"augment": lambda data, index: [data[::-1] + b"!", data + bytes([index])]}
    train, validation = bench_tasks.split_train(documents, spec)
    plain_train, plain_validation = bench_tasks.split_train(documents, {})
    assert validation.names == plain_validation.names and validation.num_documents >= 1
    assert train.num_documents == 3 * plain_train.num_documents
    originals = [plain_train.document(i) for i in range(plain_train.num_documents)]
    copies = {train.document(i).name: train.document(i) for i in range(train.num_documents)}
    for index, source in enumerate(originals):
        first, second = copies[f"{source.name}[augmented 0]"], copies[f"{source.name}[augmented 1]"]
        assert bytes(first.data) == bytes(source.data)[::-1] + b"!" and first.label == source.label
        assert bytes(second.data) == bytes(source.data) + bytes([index]) and second.label == source.label


def test_fashion_mnist_copies_are_mirrored_and_moved():
    sys.path.insert(0, str(ROOT / "bench"))
    import numpy as np
    from bench_tasks import mirrored_and_moved
    from PIL import Image
    import io

    from omnibyte.media import pixels_to_bmp

    pixels = np.pad(np.random.default_rng(2).integers(1, 256, (28, 28), dtype=np.uint8), 2)
    mirrored, moved, moved_mirror = (np.asarray(Image.open(io.BytesIO(data)))[..., 0]
                                     for data in mirrored_and_moved(pixels_to_bmp(pixels), 7))
    assert np.array_equal(mirrored, pixels[:, ::-1])
    for image, source in ((moved, pixels), (moved_mirror, pixels[:, ::-1])):  # a garment moves whole
        assert image.sum() == source.sum() and sorted(image[image > 0]) == sorted(source[source > 0])
    assert mirrored_and_moved(pixels_to_bmp(pixels), 7) == mirrored_and_moved(pixels_to_bmp(pixels), 7)



def test_spoken_digits_are_delayed_without_cutting_sound():
    sys.path.insert(0, str(ROOT / "bench"))
    import numpy as np
    from bench_tasks import MAX_DELAY, delayed

    from omnibyte.media import SILENCE, samples_to_wav

    sound = np.random.default_rng(4).uniform(-0.9, 0.9, 5000)
    wav = samples_to_wav(sound)  # 3,000 frames of trailing silence
    copies = delayed(wav, 5)
    assert len(copies) == 2 and copies == delayed(wav, 5)
    for copy in copies:
        shift = len(copy) - len(copy[44:].lstrip(bytes([SILENCE]))) - 44
        assert 1 <= shift <= MAX_DELAY and copy[44 + shift:44 + shift + 5000] == wav[44:44 + 5000]
    assert delayed(samples_to_wav(np.full(8000, 0.5)), 5) == []  # no trailing silence: no room

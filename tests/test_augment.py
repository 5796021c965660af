"""Augmented training copies (omnibyte.data.augment, ``omnibyte train --augment``): each
augmentation checked on the pixels or samples it writes, copies reach the training part only,
and bad values or file kinds are one-line errors."""
from __future__ import annotations

import io
import wave

import numpy as np
import pytest
from PIL import Image

from omnibyte.cli import main
from omnibyte.data import ByteCorpus, Document
from omnibyte.data.augment import MAX_DELAY, MAX_SHIFT, augment_file, augmented, parse_augment
from omnibyte.errors import OmnibyteError
from omnibyte.media import SILENCE, pixels_to_bmp, samples_to_wav


def grey(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))[..., 0]


def garment(seed: int) -> np.ndarray:
    """A 28x28 picture in 2 pixels of black, as Fashion-MNIST's images are made 32x32."""
    return np.pad(np.random.default_rng(seed).integers(1, 256, (28, 28), dtype=np.uint8), 2)


def test_copies_are_pipelines_of_named_augmentations():
    assert parse_augment("mirror,shift, mirror+shift") == (("mirror",), ("shift",), ("mirror", "shift"))
    assert parse_augment("") == ()
    with pytest.raises(OmnibyteError, match="unknown augmentation 'rotate'"):
        parse_augment("mirror,rotate")


def test_mirror_and_shift_move_the_whole_garment():
    pixels = garment(1)
    rng = np.random.default_rng(0)
    assert np.array_equal(grey(augment_file(pixels_to_bmp(pixels), ["mirror"], rng)), pixels[:, ::-1])
    for seed in range(20):  # every move keeps all of the garment inside the picture
        moved = grey(augment_file(pixels_to_bmp(pixels), ["mirror", "shift"], np.random.default_rng(seed)))
        assert sorted(moved[moved > 0]) == sorted(pixels[pixels > 0])
        rows, columns = np.nonzero(moved)
        assert abs(rows.min() - 2) <= MAX_SHIFT and abs(columns.min() - 2) <= MAX_SHIFT


def test_delay_starts_the_sound_later_and_cuts_only_silence():
    sound = np.random.default_rng(4).uniform(-0.9, 0.9, 5000)
    wav = samples_to_wav(sound)  # 3,000 frames of trailing silence
    for seed in range(10):
        copy = augment_file(wav, ["delay"], np.random.default_rng(seed))
        with wave.open(io.BytesIO(copy)) as reader:
            samples = reader.readframes(reader.getnframes())
        shift = len(samples) - len(samples.lstrip(bytes([SILENCE])))
        assert 1 <= shift <= MAX_DELAY and samples[shift:shift + 5000] == wav[44:44 + 5000]
    assert augment_file(samples_to_wav(np.full(8000, 0.5)), ["delay"], np.random.default_rng(0)) is None


def test_copies_are_the_same_every_run_and_labelled_like_their_file():
    corpus = ByteCorpus([Document(f"c/{index}.bmp", pixels_to_bmp(garment(index)), f"class{index % 2}")
                         for index in range(4)])
    once, again = augmented(corpus, parse_augment("shift,mirror+shift"), seed=3), \
        augmented(corpus, parse_augment("shift,mirror+shift"), seed=3)
    assert once.num_documents == 12 and once.names[:4] == corpus.names
    assert [bytes(once.document(i).data) for i in range(12)] == [bytes(again.document(i).data) for i in range(12)]
    assert once.names[4:6] == ["c/0.bmp[augmented 0]", "c/0.bmp[augmented 1]"]
    assert once.labels[4:] == [f"class{index % 2}" for index in range(4) for _ in range(2)]
    other_seed = augmented(corpus, parse_augment("shift"), seed=4)
    assert any(bytes(other_seed.document(i).data) != bytes(once.document(4 + 2 * (i - 4)).data) for i in range(4, 8))


def test_a_file_of_the_wrong_kind_is_named_in_one_line():
    corpus = ByteCorpus([Document("sounds/a.wav", samples_to_wav(np.zeros(100)), "a")])
    with pytest.raises(OmnibyteError, match=r"--augment mirror: sounds/a.wav: not a 24-bit BMP"):
        augmented(corpus, parse_augment("mirror"))
    images = ByteCorpus([Document("images/a.bmp", pixels_to_bmp(garment(0)), "a")])
    with pytest.raises(OmnibyteError, match=r"--augment delay: images/a.bmp: not a WAV file"):
        augmented(images, parse_augment("delay"))


def classes_of_bmps(root, per_class: int = 6):
    for label in ("coat", "bag"):
        (root / label).mkdir(parents=True)
        for index in range(per_class):
            pixels = garment(index + (100 if label == "bag" else 0))
            (root / label / f"{index}.bmp").write_bytes(pixels_to_bmp(pixels))
    return root


def test_train_classify_with_augmented_copies(tmp_path, capsys):
    data = classes_of_bmps(tmp_path / "data")
    code = main(["train", str(data), "--task", "classify", "--out", str(tmp_path / "run"), "--steps", "2",
                 "--batch-size", "2", "--seq-len", "64", "--eval-every", "0", "--no-progress", "--device", "cpu",
                 "--augment", "mirror,mirror+shift", "--val-fraction", "0.2", "--set", "num_layers=1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "augmented copies of the" in out
    originals = int(out.split("augmented copies of the ")[1].split()[0])
    assert f"; {2 * originals} augmented copies" in out and originals < 12
    assert '"augment": "mirror,mirror+shift"' in (tmp_path / "run" / "train_config.json").read_text()


def test_bad_augment_values_are_usage_errors(tmp_path, capsys):
    data = classes_of_bmps(tmp_path / "data", per_class=2)
    code = main(["train", str(data), "--task", "classify", "--out", str(tmp_path / "run"), "--augment", "flip"])
    assert code == 2 and "unknown augmentation 'flip'" in capsys.readouterr().err
    code = main(["train", str(data), "--task", "classify", "--out", str(tmp_path / "run2"), "--steps", "1",
                 "--augment", "delay", "--no-progress", "--device", "cpu"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "not a WAV file" in error and len(error.splitlines()) == 1

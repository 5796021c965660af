"""Classification: the task's rows and head on every family, training through the CLI on a
tiny synthetic set (class folders and a CSV), classify --json, eval on a classifier, resume
and --init-from."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import omnibyte
from omnibyte.apps.classify import classify_documents, evaluate_classifier, load_classifier
from omnibyte.cli import main
from omnibyte.data import ByteCorpus, Document
from omnibyte.models import BOS
from omnibyte.models.serialization import load_model, read_config
from omnibyte.tasks import ClassifyTask
from omnibyte.tasks.classify import file_rows

ALPHABETS = {"vowels": b"aeiou", "digits": b"0123456789"}


def write_classes(folder: Path, seed: int, per_class: int = 12) -> None:
    """Two classes of clearly different bytes, 20-80 bytes a file."""
    rng = np.random.default_rng(seed)
    for label, alphabet in ALPHABETS.items():
        (folder / label).mkdir(parents=True)
        for index in range(per_class):
            size = int(rng.integers(20, 80))
            (folder / label / f"{index}.txt").write_bytes(bytes(rng.choice(list(alphabet), size).tolist()))


QUICK = ["--arch", "flat", "--preset", "tiny", "--seq-len", "96", "--batch-size", "8", "--lr", "3e-3",
         "--device", "cpu", "--no-progress", "--seed", "0"]
TRAIN = [*QUICK, "--steps", "30", "--eval-every", "10", "--val-fraction", "0.2"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify")
    write_classes(root / "train", seed=0)
    write_classes(root / "test", seed=1, per_class=6)
    assert main(["train", "--task", "classify", str(root / "train"), "--out", str(root / "run"), *TRAIN]) == 0
    return root


def test_rows_keep_the_head_of_each_file_and_pad_the_rest():
    tokens, mask = file_rows([b"abc", b"0123456789"], 6)
    assert tokens.tolist() == [[BOS, 97, 98, 99, 0, 0], [BOS, 48, 49, 50, 51, 52]]
    assert mask.tolist() == [[True] * 4 + [False] * 2, [True] * 6]


@pytest.mark.parametrize("arch", ["flat", "patch", "multiscale"])
def test_batched_logits_equal_one_file_at_a_time(arch):
    """Padding comes after a file's tokens and pooling skips it: a file's class logits do not
    depend on the other files of its batch, on any family."""
    torch.manual_seed(0)
    model = omnibyte.build_model(arch, "tiny").eval()
    task = ClassifyTask(["a", "b", "c"], model.hidden_size)
    files = [bytes(range(40, 40 + size)) for size in (5, 17, 33)]
    with torch.no_grad():
        batched = task.logits(model, *file_rows(files, 48))
        alone = torch.cat([task.logits(model, *file_rows([data], len(data) + 1)) for data in files])
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=1e-4)


def test_classifier_trained_through_the_cli_beats_chance_on_held_out_files(classifier, capsys):
    document = read_config(classifier / "run")
    assert document["task"]["name"] == "classify" and document["task"]["labels"] == ["digits", "vowels"]
    capsys.readouterr()
    assert main(["eval", str(classifier / "test"), "--model", str(classifier / "run"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files"] == 12 and report["accuracy"] >= 0.9  # chance is 0.5
    assert set(report["per_class"]) == {"digits", "vowels"} and np.sum(report["confusion"]) == 12


def test_classify_json_gives_path_label_and_probabilities_per_file(classifier, capsys):
    files = [classifier / "test" / "digits" / "0.txt", classifier / "test" / "vowels" / "0.txt"]
    capsys.readouterr()
    assert main(["classify", "--model", str(classifier / "run"), *map(str, files), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["path"] for row in rows] == list(map(str, files))
    assert [row["label"] for row in rows] == ["digits", "vowels"]
    for row in rows:
        assert set(row) == {"path", "label", "probabilities"} and set(row["probabilities"]) == {"digits", "vowels"}
        assert abs(sum(row["probabilities"].values()) - 1) < 1e-5
        assert row["probabilities"][row["label"]] == max(row["probabilities"].values())
    # the Python API gives the same answer
    model, task = load_model(classifier / "run"), load_classifier(classifier / "run")
    predictions = classify_documents(model, task, [Document(str(f), f.read_bytes()) for f in files])
    assert [p.probabilities for p in predictions] == pytest.approx([row["probabilities"] for row in rows], abs=1e-5)


def test_eval_on_a_classifier_writes_the_confusion_png(classifier, tmp_path, capsys):
    png = tmp_path / "confusion.png"
    assert main(["eval", str(classifier / "test"), "--model", str(classifier / "run"), "--confusion", str(png)]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "digits" in out and "vowels" in out
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 100


def test_evaluate_classifier_counts_the_confusion_matrix(classifier):
    """Against a reference count from the predictions one by one."""
    model, task = load_model(classifier / "run"), load_classifier(classifier / "run")
    corpus = omnibyte.data.labelled.read_labelled([classifier / "test"])
    documents = [corpus.document(i) for i in range(corpus.num_documents)]
    report = evaluate_classifier(model, task, documents, batch_size=5)
    expected = np.zeros((2, 2), dtype=np.int64)
    for document in documents:
        predicted = classify_documents(model, task, [document])[0].label
        expected[task.labels.index(document.label), task.labels.index(predicted)] += 1
    assert np.array_equal(report.confusion, expected)
    assert report.accuracy == pytest.approx(np.trace(expected) / len(documents))


def test_a_csv_of_path_label_trains_the_same_classes(classifier, tmp_path):
    rows = ["path,label"] + [f"{path.relative_to(classifier)},{path.parent.name}"
                             for path in sorted((classifier / "train").rglob("*.txt"))]
    (classifier / "labels.csv").write_text("\n".join(rows) + "\n")
    corpus = ClassifyTask.read_corpus([classifier / "labels.csv"])
    folders = ClassifyTask.read_corpus([classifier / "train"])
    assert sorted(zip(map(bytes, (corpus.document(i).data for i in range(corpus.num_documents))), corpus.labels)) == \
        sorted(zip(map(bytes, (folders.document(i).data for i in range(folders.num_documents))), folders.labels))
    out = tmp_path / "csv-run"
    assert main(["train", "--task", "classify", str(classifier / "labels.csv"), "--out", str(out),
                 *QUICK, "--steps", "2", "--eval-every", "0"]) == 0
    assert read_config(out)["task"]["labels"] == ["digits", "vowels"]


def test_resume_keeps_the_classification_task(classifier, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", str(classifier / "train"), "--out", str(out), *QUICK, "--eval-every", "0"]
    assert main([*base, "--task", "classify", "--steps", "2"]) == 0
    assert main([*base, "--resume", "--steps", "3"]) == 0  # no --task: the run's own
    assert read_config(out)["task"]["name"] == "classify" and read_config(out)["step"] == 3
    capsys.readouterr()
    assert main([*base, "--resume", "--steps", "4", "--task", "next-byte"]) == 2
    assert "trained for task 'classify'" in capsys.readouterr().err


def test_init_from_starts_from_the_generative_trunk_with_a_fresh_head(classifier, tmp_path):
    generative = tmp_path / "generative"
    assert main(["train", str(classifier / "train"), "--out", str(generative), "--arch", "flat", "--seq-len", "96",
                 "--steps", "3", "--device", "cpu", "--no-progress", "--eval-every", "0"]) == 0
    out = tmp_path / "fine-tuned"
    assert main(["train", "--task", "classify", str(classifier / "train"), "--out", str(out), "--init-from",
                 str(generative), "--steps", "1", "--lr", "1e-12", "--seq-len", "96", "--device", "cpu",
                 "--no-progress", "--eval-every", "0"]) == 0
    before, after = load_model(generative).state_dict(), load_model(out).state_dict()
    assert before.keys() == after.keys()
    for name in before:  # one step at lr 1e-12: the generative weights, unchanged
        torch.testing.assert_close(after[name], before[name], atol=1e-6, rtol=0)
    assert load_classifier(out).head.weight.shape == (2, load_model(out).hidden_size)

"""The CNN + LSTM baseline of the visual Q&A benchmark (``omnibyte.baselines.vqa``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from omnibyte.apps.answer import answer_accuracy
from omnibyte.baselines.vqa import (
    AnswerVocabulary,
    BaselineConfig,
    QuestionVocabulary,
    evaluate_baseline,
    learning_rate,
    make_examples,
    predict_answers,
    split_source,
    train_baseline,
)
from omnibyte.data.pairs import PairRecord
from omnibyte.data.shapes_vqa import draw_scene, random_scene, scene_questions, split_records
from omnibyte.errors import OmnibyteError
from tests.helpers import one_thread  # noqa: F401 (a fixture)

TINY = dict(width=4, hidden=16, batch_size=8, device="cpu")


@pytest.fixture(scope="module")
def records() -> list[PairRecord]:
    return split_records("train", 12, 0, "pixels", 32)


def test_pixels_and_bmp_records_decode_to_the_drawn_scene():
    pixels, bmp = split_records("test", 3, 1, "pixels", 32), split_records("test", 3, 1, "bmp", 32)
    for index, (raw, bitmap) in enumerate(zip(pixels, bmp)):
        raw_pixels, raw_question = split_source(raw)
        bmp_pixels, bmp_question = split_source(bitmap)
        assert np.array_equal(raw_pixels, bmp_pixels) and raw_question == bmp_question
        scene_index = int(raw.name.split("-")[1])
        rng = np.random.default_rng([1, 2, scene_index])  # the test split's stream
        scene = random_scene(rng)
        assert np.array_equal(raw_pixels, np.asarray(draw_scene(scene, 32)))
        assert raw_question in [question.text for question in scene_questions(rng, scene)]
    with pytest.raises(OmnibyteError, match="pixels"):
        split_source(split_records("test", 1, 1, "png", 32)[0])
    with pytest.raises(OmnibyteError, match="does not start with a pixels image"):
        split_source(PairRecord(pixels[0].source[:100], b"yes", name=pixels[0].name))
    with pytest.raises(OmnibyteError, match="not a question record"):
        split_source(PairRecord(b"x", b"y", name="jigs1"))


def test_vocabularies_round_trip(records):
    answers = AnswerVocabulary.of_records(records)
    assert list(answers.answers) == sorted({record.target.decode() for record in records})
    assert all(answers.label(answers.answer(label)) == label for label in range(len(answers)))
    assert all(answers.answer(answers.label(record.target.decode())) == record.target.decode() for record in records)
    assert answers.label("never an answer") == -1
    questions = QuestionVocabulary.of_records(records)
    encoded = questions.encode("how many red zebras are there?")
    assert encoded[-1] == questions.index["?"] and encoded[3] == 1  # "zebras": unknown
    assert 0 not in encoded and len(questions) == len(questions.words) + 2


def test_learning_rate_warms_up_then_decays_by_steps_or_seconds():
    config = BaselineConfig(lr=1.0, steps=110, warmup_steps=10, seconds=0.0)
    assert learning_rate(config, 0, 0.0) == pytest.approx(0.1)
    assert learning_rate(config, 10, 0.0) == pytest.approx(1.0)
    assert learning_rate(config, 60, 0.0) == pytest.approx(0.55)  # half way: the cosine's middle
    assert learning_rate(config, 110, 0.0) == pytest.approx(0.1)
    timed = BaselineConfig(lr=1.0, steps=10**9, warmup_steps=10, seconds=100.0)
    assert learning_rate(timed, 20, 50.0) == pytest.approx(0.55)  # time is the nearer end
    assert learning_rate(timed, 20, 200.0) == pytest.approx(0.1)


def test_the_baseline_learns_a_small_set(records, one_thread):  # noqa: F811
    """Trained on a handful of records it answers them (it can fit), in batches or one by one."""
    few = records[:8]
    trained = train_baseline(few, BaselineConfig(**{**TINY, "lr": 1e-2}, steps=150, warmup_steps=5))
    assert trained.stats["steps"] == 150 and trained.stats["train_records"] == 8
    assert trained.stats["train_images"] == len({record.name.split("-")[1] for record in few})
    report, answers = evaluate_baseline(trained, few)
    assert report["accuracy"] == 1.0, (answers, [record.target for record in few])
    assert predict_answers(trained, few, batch_size=3) == answers


def test_validation_keeps_the_best_weights(records, one_thread):  # noqa: F811
    """With validation records the returned weights are those of the best validation check:
    their accuracy on those records is the one recorded."""
    validation = split_records("validation", 6, 0, "pixels", 32)
    trained = train_baseline(records, BaselineConfig(**{**TINY, "lr": 1e-2}, steps=40, warmup_steps=2, eval_every=10),
                             validation)
    assert trained.stats["best_step"] in (10, 20, 30, 40)
    report, _ = evaluate_baseline(trained, validation)
    assert report["accuracy"] == pytest.approx(trained.stats["val_accuracy"])


def test_a_time_budget_ends_training(records, one_thread):  # noqa: F811
    trained = train_baseline(records, BaselineConfig(**TINY, steps=10**9, seconds=0.5, warmup_steps=1))
    assert 1 <= trained.stats["steps"] < 10**9 and trained.stats["train_seconds"] < 5


def test_accuracy_is_the_answer_tasks_measure(records, one_thread):  # noqa: F811
    """A classifier made to always pick "yes" scores what answer_accuracy gives "yes" answers."""
    trained = train_baseline(records, BaselineConfig(**TINY, steps=1))
    head = trained.model.head[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-10.0)
        head.bias[trained.answers.label("yes")] = 10.0
    test = split_records("test", 6, 0, "pixels", 32)
    report, answers = evaluate_baseline(trained, test)
    assert answers == ["yes"] * len(test)
    assert report == answer_accuracy(test, ["yes"] * len(test))
    yes = sum(record.target == b"yes" for record in test)
    assert 0 < yes < len(test) and report["accuracy"] == pytest.approx(yes / len(test))
    exist = [record for record in test if ".exist." in record.name]
    assert report["by_type"]["exist"]["accuracy"] == pytest.approx(
        sum(record.target == b"yes" for record in exist) / len(exist))
    assert report["by_type"]["count"]["accuracy"] == 0.0


def test_answers_outside_the_vocabulary_count_as_wrong(records, one_thread):  # noqa: F811
    """Trained on yes/no questions only, a count question's answer has no class: label -1, and
    the classifier (which can only say yes or no) is scored wrong on it."""
    exist = [record for record in records if ".exist." in record.name]
    count = [record for record in records if ".count." in record.name]
    trained = train_baseline(exist, BaselineConfig(**TINY, steps=2))
    assert set(trained.answers.answers) <= {"yes", "no"}
    examples = make_examples(count, trained.questions, trained.answers)
    assert examples.labels.tolist() == [-1] * len(count)
    report, answers = evaluate_baseline(trained, count)
    assert set(answers) <= {"yes", "no"} and report["accuracy"] == 0.0

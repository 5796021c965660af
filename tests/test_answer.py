"""Shapes-VQA (``omnibyte.data.shapes_vqa``), the ``answer`` task and ``omnibyte answer``."""
from __future__ import annotations

import io
import json
import re

import numpy as np
import torch
import pytest
from PIL import Image

from omnibyte.apps.answer import answer_accuracy, answer_task
from omnibyte.cli import main
from omnibyte.data.pairs import PairRecord, corpus_records, read_pair_corpus, record_tokens
from omnibyte.data.shapes_vqa import (
    ENCODINGS,
    QUESTION_TYPES,
    Thing,
    answer_attribute,
    answer_compare,
    answer_count,
    answer_exist,
    answer_relation,
    draw_scene,
    encode_image,
    parse_record_name,
    random_scene,
    record_name,
    scene_questions,
    split_records,
)
from omnibyte.errors import OmnibyteError
from omnibyte.tasks import AnswerTask, task_from_dict
from tests.helpers import one_thread  # noqa: F401 (a fixture)

# a hand-built scene (grid 64x64, y grows down):
#   red square (20, 30) large, blue circle (40, 30) small, green triangle (52, 10) small,
#   red circle (10, 55) small
SCENE = [Thing("square", "red", "large", 20, 30), Thing("circle", "blue", "small", 40, 30),
         Thing("triangle", "green", "small", 52, 10), Thing("circle", "red", "small", 10, 55)]


# ---- answers from the scene description ------------------------------------------------------

def test_existence_and_counting_answers():
    assert answer_exist(SCENE, {"colour": "red", "shape": "square"}) == "yes"
    assert answer_exist(SCENE, {"colour": "green", "shape": "square"}) == "no"
    assert answer_exist(SCENE, {"size": "large", "shape": "circle"}) == "no"
    assert answer_count(SCENE, {"shape": "circle"}) == "2"
    assert answer_count(SCENE, {"colour": "red"}) == "2"
    assert answer_count(SCENE, {"size": "small", "colour": "red", "shape": "circle"}) == "1"
    assert answer_count(SCENE, {"colour": "yellow"}) == "0"


def test_attribute_answers_need_a_unique_object():
    assert answer_attribute(SCENE, "colour", {"size": "large", "shape": "square"}) == "red"
    assert answer_attribute(SCENE, "shape", {"colour": "green"}) == "triangle"
    assert answer_attribute(SCENE, "size", {"colour": "blue", "shape": "circle"}) == "small"
    assert answer_attribute(SCENE, "colour", {"shape": "circle"}) is None  # two circles
    assert answer_attribute(SCENE, "colour", {"shape": "circle", "size": "large"}) is None  # none


def test_relation_answers_are_unambiguous_or_skipped():
    # left of the blue circle (x 40): the red square (20) and the red circle (10): two -> skipped
    assert answer_relation(SCENE, "colour", "left of", {"colour": "blue", "shape": "circle"}) is None
    # right of the blue circle: only the green triangle (52)
    assert answer_relation(SCENE, "shape", "right of", {"colour": "blue", "shape": "circle"}) == "triangle"
    # left of the red square (20): only the red circle (10)
    assert answer_relation(SCENE, "colour", "left of", {"colour": "red", "shape": "square"}) == "red"
    # above the red circle (y 55): three objects -> skipped; below the green triangle: also three
    assert answer_relation(SCENE, "colour", "above", {"colour": "red", "shape": "circle"}) is None
    # below the red square (y 30): the red circle (55); the blue circle has the same y: unclear
    assert answer_relation(SCENE, "size", "below", {"colour": "red", "shape": "square"}) is None
    moved = [*SCENE[:1], Thing("circle", "blue", "small", 40, 20), *SCENE[2:]]
    assert answer_relation(moved, "size", "below", {"colour": "red", "shape": "square"}) == "small"
    # within the margin on the relation's axis is never "left of"
    close = [Thing("square", "red", "large", 30, 30), Thing("circle", "blue", "small", 27, 50)]
    assert answer_relation(close, "colour", "left of", {"shape": "square"}) is None
    # a reference that is not unique
    assert answer_relation(SCENE, "colour", "above", {"shape": "circle"}) is None


def test_comparison_answers():
    assert answer_compare(SCENE, {"shape": "circle"}, {"shape": "square"}) == "yes"
    assert answer_compare(SCENE, {"shape": "square"}, {"shape": "triangle"}) == "no"  # equal: not more
    assert answer_compare(SCENE, {"colour": "green"}, {"colour": "red"}) == "no"


def parse_description(text: str) -> dict:
    """ "large red squares" -> {"size": "large", "colour": "red", "shape": "square"}."""
    *adjectives, noun = text.split()
    noun = noun.removesuffix("s") if noun.endswith(("circles", "squares", "triangles", "objects")) else noun
    description = {} if noun == "object" else {"shape": noun}
    for word in adjectives:
        description["size" if word in ("small", "large") else "colour"] = word
    return description


def picked(scene, description: dict) -> list:
    return [thing for thing in scene if all(getattr(thing, key) == value for key, value in description.items())]


def reference_answer(scene, text: str) -> str | None:
    """The answer to a generated question, read from its text and found by brute force (a
    second implementation of the rules in the module docstring, to check the first)."""
    if match := re.fullmatch(r"what (colour|shape|size) is the object (left of|right of|above|below) the (.+)\?", text):
        attribute, relation, reference = match.groups()
        (anchor,) = picked(scene, parse_description(reference))
        axis, sign = {"left of": ("x", -1), "right of": ("x", 1), "above": ("y", -1), "below": ("y", 1)}[relation]
        offsets = [(sign * (getattr(thing, axis) - getattr(anchor, axis)), thing)
                   for thing in scene if thing is not anchor]
        assert all(abs(offset) > 4 for offset, _ in offsets), text  # never asked when unclear
        (beyond,) = [thing for offset, thing in offsets if offset > 0]
        return getattr(beyond, attribute)
    if match := re.fullmatch(r"what (colour|shape|size) is the (.+)\?", text):
        (only,) = picked(scene, parse_description(match.group(2)))
        return getattr(only, match.group(1))
    if match := re.fullmatch(r"is there an? (.+)\?", text):
        return "yes" if picked(scene, parse_description(match.group(1))) else "no"
    if match := re.fullmatch(r"how many (.+) are there\?", text):
        return str(len(picked(scene, parse_description(match.group(1)))))
    if match := re.fullmatch(r"are there more (.+) than (.+)\?", text):
        first, second = (len(picked(scene, parse_description(group))) for group in match.groups())
        return "yes" if first > second else "no"
    return None


def test_generated_questions_are_answered_from_their_scene():
    """Every generated question of every template, re-asked of its scene by the reference
    above, gets the recorded answer."""
    seen = set()
    for index in range(60):
        rng = np.random.default_rng([7, index])
        scene = random_scene(rng)
        assert 2 <= len(scene) <= 8
        for question in scene_questions(rng, scene):
            seen.add(question.kind)
            assert question.text.isascii()
            assert reference_answer(scene, question.text) == question.answer, question
    assert seen == set(QUESTION_TYPES)


# ---- images and records ---------------------------------------------------------------------

@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_encoding_decodes_to_the_image_size(encoding, size):
    image = draw_scene(SCENE, size)
    data = encode_image(image, encoding)
    pixels = np.asarray(image)
    if encoding == "pixels":
        assert len(data) == size * size * 3
        decoded = np.frombuffer(data, dtype=np.uint8).reshape(size, size, 3)
    else:
        with Image.open(io.BytesIO(data)) as opened:
            assert opened.format == {"bmp": "BMP", "png": "PNG", "jpeg": "JPEG"}[encoding]
            decoded = np.asarray(opened.convert("RGB"))
    assert decoded.shape == (size, size, 3)
    if encoding == "jpeg":  # lossy, but the same picture
        assert np.abs(decoded.astype(int) - pixels).mean() < 8
    else:
        assert np.array_equal(decoded, pixels)


def test_both_sizes_show_the_same_scene():
    small, large = np.asarray(draw_scene(SCENE, 32)).astype(int), np.asarray(draw_scene(SCENE, 64)).astype(int)
    reduced = large.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
    assert np.abs(reduced - small).mean() < 3
    red = np.array([220, 40, 40])
    assert np.abs(small[15, 10] - red).sum() < 30  # the red square covers (20, 30) on the grid


def test_records_are_deterministic_from_the_seed_and_split():
    first = split_records("train", 6, 3, "png", 32)
    assert first == split_records("train", 6, 3, "png", 32)
    assert first != split_records("train", 6, 4, "png", 32)
    assert [r.source for r in first] != [r.source for r in split_records("test", 6, 3, "png", 32)]
    # a scene does not depend on how many scenes the split has
    assert split_records("train", 3, 3, "png", 32) == [r for r in first if int(r.name.split("-")[1]) < 3]
    # the same scenes and questions in every encoding: only the image bytes differ
    pixels = split_records("train", 6, 3, "pixels", 32)
    assert [r.target for r in pixels] == [r.target for r in first]
    assert all(len(r.source) == 32 * 32 * 3 + len(q.source) - png_length(q.source) for r, q in zip(pixels, first))
    for record in first:
        kind, encoding, size = parse_record_name(record.name)
        assert (encoding, size) == ("png", 32) and kind in QUESTION_TYPES


def png_length(source: bytes) -> int:
    return source.index(b"IEND") + 8  # chunk type + CRC


def test_record_names_round_trip():
    assert parse_record_name(record_name("test", 12, 3, "relation", "jpeg", 64)) == ("relation", "jpeg", 64)
    assert parse_record_name("jigs1") is None and parse_record_name("a.b.gif32") is None


# ---- the task ---------------------------------------------------------------------------------

def test_the_loss_mask_covers_the_answer_only(capsys):
    records = split_records("validation", 3, 0, "png", 32)
    task = AnswerTask("bytes", "bytes", "png", 32)
    rows = task.eval_batches(__import__("omnibyte.data.pairs", fromlist=["x"]).records_corpus(records), 1024, 4)
    batches = list(rows)
    masked = sum(int(batch.mask.sum()) for batch in batches)
    assert masked == sum(len(record.target) + 2 for record in records)  # answer + end marker FF 00
    batch = batches[0]
    for slot, record in enumerate(records[:4]):
        tokens = record_tokens(record.source, record.target)
        positions = batch.mask[slot].nonzero().flatten().tolist()
        assert positions[0] == len(record.source) + 1  # the separator's position predicts the first byte
        assert bytes(batch.targets[slot, positions].tolist()) == record.target + b"\xff\x00"
        assert batch.tokens[slot, : len(tokens) - 1].tolist() == tokens[:-1].tolist()


def test_the_task_records_the_image_format_and_round_trips():
    task = task_from_dict({"name": "answer", "source": "bytes", "target": "bytes", "encoding": "bmp",
                           "image_size": 64})
    assert isinstance(task, AnswerTask) and (task.encoding, task.image_size) == ("bmp", 64)
    assert task_from_dict(task.to_dict()).to_dict() == task.to_dict()
    with pytest.raises(ValueError, match="encoding"):
        task_from_dict({"name": "answer", "encoding": "gif"})
    with pytest.raises(ValueError, match="image_size"):
        task_from_dict({"name": "answer", "image_size": 48})


def test_accuracy_is_exact_match_overall_and_per_type():
    records = [PairRecord(b"img?", b"yes", name=record_name("test", 0, 0, "exist", "png", 32)),
               PairRecord(b"img?", b"2", name=record_name("test", 0, 1, "count", "png", 32)),
               PairRecord(b"img?", b"red", name=record_name("test", 1, 0, "attribute", "png", 32)),
               PairRecord(b"img?", b"no", name=record_name("test", 1, 1, "exist", "png", 32))]
    report = answer_accuracy(records, ["yes", "3", None, "no "])
    assert report["records"] == 4 and report["accuracy"] == 0.25
    assert report["by_type"] == {"attribute": {"records": 1, "accuracy": 0.0},
                                 "count": {"records": 1, "accuracy": 0.0},
                                 "exist": {"records": 2, "accuracy": 0.5}}
    with pytest.raises(ValueError):
        answer_accuracy(records, ["yes"])


# ---- through the command line -----------------------------------------------------------------

def test_the_dataset_folder_layout(tmp_path, capsys):
    out = tmp_path / "vqa"
    assert main(["datasets", "shapes-vqa", "--scenes", "6", "--test-scenes", "2", "--encoding", "pixels",
                 "--size", "32", "--seed", "5", "--out", str(out)]) == 0
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["dataset"] == "shapes-vqa" and manifest["scenes"] == {"train": 6, "validation": 2, "test": 2}
    for split in ("train", "validation", "test"):
        records, broken = corpus_records(read_pair_corpus([str(out / split)]))
        assert broken == 0 and len(records) == manifest["records"][split]
        assert records == split_records(split, manifest["scenes"][split], 5, "pixels", 32)
    # the answer task reads the folder through its train/ only, and learns the image format
    corpus = AnswerTask.read_corpus([out])
    assert corpus.num_documents == manifest["records"]["train"]
    task = AnswerTask.for_data(corpus)
    assert (task.encoding, task.image_size) == ("pixels", 32)
    # writing again needs --force
    assert main(["datasets", "shapes-vqa", "--scenes", "2", "--out", str(out)]) == 2
    assert main(["datasets", "shapes-vqa", "--scenes", "2", "--out", str(out), "--force"]) == 0
    assert sorted(p.name for p in (out / "train").iterdir()) == ["records-00000.pairs"]


def test_every_scene_in_several_formats(tmp_path, capsys):
    """``--encoding all --size 32 64``: one dataset folder per format, the same scenes and
    questions in each (only the image bytes differ), an index that is not trained on, and a
    --force rewrite that leaves no file of the earlier datasets."""
    out = tmp_path / "vqa"
    assert main(["datasets", "shapes-vqa", "--scenes", "4", "--test-scenes", "2", "--encoding", "all",
                 "--size", "32", "64", "--seed", "3", "--out", str(out)]) == 0
    index = json.loads((out / "dataset.json").read_text())
    names = [f"{encoding}{size}" for size in (32, 64) for encoding in ENCODINGS]
    assert index["formats"] == names
    for encoding in ENCODINGS:
        for size in (32, 64):
            folder = out / f"{encoding}{size}"
            manifest = json.loads((folder / "dataset.json").read_text())
            assert (manifest["encoding"], manifest["size"]) == (encoding, size)
            for split in ("train", "validation", "test"):
                records, _ = corpus_records(read_pair_corpus([str(folder / split)]))
                assert records == split_records(split, manifest["scenes"][split], 3, encoding, size)
            assert AnswerTask.for_data(AnswerTask.read_corpus([folder])).encoding == encoding
    with pytest.raises(OmnibyteError, match="8 image formats; train on one of its folders"):
        AnswerTask.read_corpus([out])
    assert main(["datasets", "shapes-vqa", "--scenes", "2", "--encoding", "bmp", "png", "--out", str(out)]) == 2
    assert main(["datasets", "shapes-vqa", "--scenes", "2", "--encoding", "bmp", "png", "--out", str(out),
                 "--force"]) == 0
    files = sorted(str(path.relative_to(out)) for path in out.rglob("*") if path.is_file())
    assert files == ["bmp32/dataset.json", "bmp32/test/records-00000.pairs", "bmp32/train/records-00000.pairs",
                     "bmp32/validation/records-00000.pairs", "dataset.json", "png32/dataset.json",
                     "png32/test/records-00000.pairs", "png32/train/records-00000.pairs",
                     "png32/validation/records-00000.pairs"]


def test_mixed_image_formats_are_refused(tmp_path):
    from omnibyte.data.pairs import records_corpus

    records = split_records("train", 2, 0, "png", 32) + split_records("train", 2, 0, "bmp", 32)
    with pytest.raises(OmnibyteError, match="mixes image formats"):
        AnswerTask.for_data(records_corpus(records))
    with pytest.raises(OmnibyteError, match="not a question record"):
        AnswerTask.for_data(records_corpus([PairRecord(b"x", b"y", name="jigs1")]))


@pytest.mark.slow
def test_train_then_answer_end_to_end(tmp_path, capsys, one_thread):  # noqa: F811
    data, run = tmp_path / "vqa", tmp_path / "run"
    assert main(["datasets", "shapes-vqa", "--scenes", "8", "--out", str(data)]) == 0
    assert main(["train", "--task", "answer", str(data), "--out", str(run), "--set", "max_sequence_length=1024",
                 "--seq-len", "1024", "--steps", "20", "--batch-size", "4", "--lr", "1e-2", "--eval-every", "0",
                 "--no-progress", "--device", "cpu"]) == 0
    assert answer_task(run).to_dict() == {"name": "answer", "source": "bytes", "target": "bytes",
                                          "encoding": "png", "image_size": 32}
    draw_scene(SCENE, 64).save(tmp_path / "scene.png")  # another size: converted to the model's 32x32 PNG
    capsys.readouterr()
    assert main(["answer", "--model", str(run), "--image", str(tmp_path / "scene.png"),
                 "--question", "is there a red square?", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert printed.endswith("\n") and len(printed.splitlines()) == 1 and printed.strip()


@pytest.mark.parametrize("arch", ["flat", "patch", "multiscale", "blt"])
def test_every_family_trains_and_answers(arch, one_thread):  # noqa: F811
    """The answer loss backpropagates in every family, and batched answers equal answers
    decoded one by one (the cached decoder's rows are independent)."""
    import omnibyte
    from omnibyte.apps.answer import MAX_ANSWER_BYTES
    from omnibyte.apps.convert import convert_sources
    from omnibyte.data.pairs import records_corpus

    records = [r for r in split_records("test", 20, 0, "png", 32) if len(r.source) < 480][:3]  # tiny contexts: 512
    assert len(records) == 3
    model = omnibyte.build_model(arch, "tiny", seed=0)
    task = AnswerTask.for_data(records_corpus(records), model)
    (batch,) = list(task.eval_batches(records_corpus(records), model.max_seq_len, 3))
    loss = task.loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    sources = [record.source for record in records]
    model.eval()
    batched = convert_sources(model, sources, MAX_ANSWER_BYTES, batch_size=3)
    assert batched == [convert_sources(model, [s], MAX_ANSWER_BYTES, batch_size=1)[0] for s in sources]
    assert all(result.output or result.finished for result in batched)  # bytes were decoded


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_user_image_becomes_the_bytes_the_model_was_trained_on(encoding):
    from omnibyte.apps.answer import image_bytes_for

    task = AnswerTask("bytes", "bytes", encoding, 32)
    buffer = io.BytesIO()
    draw_scene(SCENE, 64).save(buffer, format="PNG")  # another size and format than the model's
    converted = image_bytes_for(task, buffer.getvalue())
    expected = encode_image(draw_scene(SCENE, 64).resize((32, 32), Image.Resampling.BILINEAR), encoding)
    assert converted == expected
    same_size = io.BytesIO()
    draw_scene(SCENE, 32).save(same_size, format="BMP")
    assert image_bytes_for(task, same_size.getvalue()) == encode_image(draw_scene(SCENE, 32), encoding)
    with pytest.raises(OmnibyteError, match="not an image"):
        image_bytes_for(task, b"not an image")

"""Model files: the task is recorded, old directories without it load, bad files are one-line errors."""
import json

import pytest
import torch

from omnibyte.errors import OmnibyteError
from omnibyte.models import build_model
from omnibyte.models.serialization import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_model,
    read_config,
    read_task_weights,
    save_model,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = build_model("flat", "tiny")
    return model, save_model(model, tmp_path_factory.mktemp("model") / "m")


def test_save_records_the_task_and_load_restores_the_weights(saved):
    model, directory = saved
    document = json.loads((directory / CONFIG_FILE).read_text())
    assert document["task"] == {"name": "next-byte"} and document["arch"] == "flat" and document["format"] == 1
    loaded = load_model(directory)
    tokens = torch.randint(0, 256, (1, 16))
    assert torch.equal(loaded(tokens), model.eval()(tokens))


def test_directories_without_a_task_load_as_next_byte(saved, tmp_path):
    _, directory = saved
    old = tmp_path / "old"
    old.mkdir()
    document = json.loads((directory / CONFIG_FILE).read_text())
    del document["task"]
    (old / CONFIG_FILE).write_text(json.dumps(document))
    (old / WEIGHTS_FILE).write_bytes((directory / WEIGHTS_FILE).read_bytes())
    assert read_config(old)["task"] == {"name": "next-byte"}
    assert load_model(old).arch == "flat"


def test_save_model_takes_the_task(tmp_path):
    save_model(build_model("flat", "tiny"), tmp_path, task="classify")
    assert read_config(tmp_path)["task"] == {"name": "classify"}
    save_model(build_model("flat", "tiny"), tmp_path, task={"name": "classify", "classes": 3},
               task_weights={"head.weight": torch.ones(3, 4)})
    assert read_config(tmp_path)["task"] == {"name": "classify", "classes": 3}
    assert torch.equal(read_task_weights(tmp_path)["head.weight"], torch.ones(3, 4))


@pytest.mark.parametrize("change, message", [
    ({"format": 2}, "unsupported model format 2 (this version of omnibyte reads format 1)"),
    ({"task": 3}, "'task' must be a task name or an object with a 'name'"),
    ({"task": {"classes": 3}}, "'task' must be a task name or an object with a 'name'"),
])
def test_bad_documents_are_one_line_errors(saved, tmp_path, change, message):
    _, directory = saved
    document = {**json.loads((directory / CONFIG_FILE).read_text()), **change}
    (tmp_path / CONFIG_FILE).write_text(json.dumps(document))
    with pytest.raises(OmnibyteError, match=message.replace("(", "\\(").replace(")", "\\)")):
        read_config(tmp_path)

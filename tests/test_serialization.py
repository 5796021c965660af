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


def test_the_step_is_recorded_but_not_part_of_the_models_identity(tmp_path):
    from omnibyte.models.serialization import config_document

    model = build_model("flat", "tiny")
    save_model(model, tmp_path, step=1234)
    assert read_config(tmp_path)["step"] == 1234
    assert json.loads((tmp_path / CONFIG_FILE).read_text())["step"] == 1234
    assert "step" not in config_document(model)  # stream fingerprints stay what they were
    save_model(model, tmp_path / "plain")
    assert "step" not in read_config(tmp_path / "plain")


def test_files_are_identical_whatever_the_hash_order(tmp_path):
    """safetensors writes metadata in hash-map order; omnibyte sorts it, so identical states
    make identical files."""
    from safetensors import safe_open

    from omnibyte.models.serialization import write_safetensors

    tensors = {"b": torch.ones(3), "a": torch.zeros(2, 2, dtype=torch.bfloat16)}
    metadata = {f"key{i}": json.dumps({"value": i, "text": "é\n"}) for i in range(8)}
    written = set()
    for attempt in range(6):
        path = tmp_path / f"{attempt}.safetensors"
        write_safetensors(path, tensors, dict(reversed(metadata.items())) if attempt % 2 else metadata)
        written.add(path.read_bytes())
        with safe_open(str(path), framework="pt") as file:
            assert file.metadata() == metadata and torch.equal(file.get_tensor("b"), tensors["b"])
    assert len(written) == 1


def test_a_bad_config_read_from_a_file_names_the_file_wherever_it_is_built(tmp_path):
    from omnibyte.errors import OmnibyteError
    from omnibyte.models.serialization import model_from_config

    save_model(build_model("flat", "tiny"), tmp_path)
    document = json.loads((tmp_path / CONFIG_FILE).read_text())
    document["config"]["hidden_size"] = "64"
    (tmp_path / CONFIG_FILE).write_text(json.dumps(document))
    with pytest.raises(OmnibyteError) as error:
        model_from_config(read_config(tmp_path))  # as `train --resume` builds the run's model
    assert str(error.value) == f"{tmp_path / CONFIG_FILE}: invalid model config: hidden_size must be an integer, got '64'"

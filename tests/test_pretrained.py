"""save_pretrained / from_pretrained on every family, with the semantics of
huggingface_hub.PyTorchModelHubMixin for local folders, in omnibyte's own file format."""
import inspect
import json
import socket
from pathlib import Path

import pytest
import torch

import omnibyte
from omnibyte.errors import OmnibyteError
from omnibyte.models import ARCHITECTURES, ByteModel, BytePredictor, build_model
from omnibyte.models.multiscale import MultiscaleModel, PatchModel
from omnibyte.models.serialization import CONFIG_FILE, WEIGHTS_FILE, load_model, save_model
from helpers import random_tokens

FIXTURES = Path(__file__).parent / "fixtures" / "v0.1"


def tiny_families():
    return [(arch, "tiny") for arch in ARCHITECTURES] + [("multiscale", "tiny-mamba"), ("multiscale", "tiny-3")]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """from_pretrained works offline: any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("omnibyte tried to use the network")
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.parametrize("arch, preset", tiny_families())
def test_round_trip_for_every_family(tmp_path, arch, preset):
    model = build_model(arch, preset, seed=0).eval()
    assert model.save_pretrained(tmp_path / "saved") is None  # like the mixin without push_to_hub
    files = sorted(path.name for path in (tmp_path / "saved").iterdir())
    assert files == ["README.md", CONFIG_FILE, WEIGHTS_FILE]
    document = json.loads((tmp_path / "saved" / CONFIG_FILE).read_text())
    assert document["arch"] == arch and document["format"] == 1  # omnibyte's own format
    tokens = random_tokens(2, 24)
    for loader in (ByteModel.from_pretrained, type(model).from_pretrained, load_model):
        loaded = loader(tmp_path / "saved")
        assert type(loaded) is type(model) and loaded.config == model.config and not loaded.training
        with torch.no_grad():
            torch.testing.assert_close(loaded(tokens), model(tokens), atol=0, rtol=0)


def test_a_family_refuses_another_familys_folder_in_one_line(tmp_path):
    build_model("multiscale", "tiny").save_pretrained(tmp_path / "ms")
    with pytest.raises(OmnibyteError, match="holds a 'multiscale' model, not 'flat'") as error:
        BytePredictor.from_pretrained(tmp_path / "ms")
    assert "\n" not in str(error.value)
    build_model("patch", "tiny").save_pretrained(tmp_path / "patch")
    assert type(MultiscaleModel.from_pretrained(tmp_path / "patch")) is PatchModel  # a sub-family
    with pytest.raises(OmnibyteError, match="holds a 'multiscale' model, not 'patch'"):
        PatchModel.from_pretrained(tmp_path / "ms")


def test_never_downloads_and_refuses_pushing(tmp_path):
    with pytest.raises(OmnibyteError, match="not a model folder .*never downloads"):
        ByteModel.from_pretrained("someone/some-model", token="x", revision="main")
    with pytest.raises(OmnibyteError, match="offline"):
        build_model("flat", "tiny").save_pretrained(tmp_path / "m", push_to_hub=True, repo_id="me/m")
    assert not (tmp_path / "m").exists() or not (tmp_path / "m" / WEIGHTS_FILE).exists()


def test_run_folders_and_0_1_folders_load(tmp_path):
    for arch in ("flat", "multiscale", "patch"):
        model = ByteModel.from_pretrained(FIXTURES / arch)
        assert model.arch == arch
    model = build_model("flat", "tiny")
    save_model(model, tmp_path, task="next-byte", step=12)  # what the trainer writes
    assert isinstance(omnibyte.ByteModel.from_pretrained(tmp_path), BytePredictor)


def test_mixin_keywords(tmp_path):
    model = build_model("flat", "tiny")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "README.md").write_text("my own card")
    model.save_pretrained(tmp_path / "m", config=model.config, model_card_kwargs={"x": 1})
    assert (tmp_path / "m" / "README.md").read_text() == "my own card"  # never overwritten
    with pytest.raises(ValueError, match="model's own config"):
        model.save_pretrained(tmp_path / "m", config={"hidden_size": 8})
    loaded = ByteModel.from_pretrained(tmp_path / "m", map_location="cpu", strict=True, force_download=True,
                                       local_files_only=True, cache_dir=tmp_path / "cache")
    assert loaded.device.type == "cpu"
    assert not (tmp_path / "cache").exists()
    # a config passed in model_kwargs replaces the folder's, as in the mixin; strict=False
    # (the mixin's default) then tolerates the weights that do not exist in it
    two = {**model.config.to_dict(), "num_layers": 3}
    with pytest.raises(OmnibyteError, match="does not match"):
        ByteModel.from_pretrained(tmp_path / "m", config=two, strict=True)
    assert ByteModel.from_pretrained(tmp_path / "m", config=two).config.num_layers == 3
    with pytest.raises(OmnibyteError, match="save_pretrained folder .* is a file"):
        model.save_pretrained(tmp_path / "m" / "README.md")


def test_signatures_accept_what_the_mixin_accepts():
    hub_mixin = pytest.importorskip("huggingface_hub.hub_mixin")
    ours = inspect.signature(ByteModel.save_pretrained).parameters
    theirs = inspect.signature(hub_mixin.ModelHubMixin.save_pretrained).parameters
    assert list(ours) == list(theirs)
    ours = inspect.signature(ByteModel.from_pretrained).parameters
    loading = getattr(hub_mixin.ModelHubMixin.from_pretrained, "__wrapped__", hub_mixin.ModelHubMixin.from_pretrained)
    theirs = {**inspect.signature(loading).parameters,
              **inspect.signature(hub_mixin.PyTorchModelHubMixin._from_pretrained).parameters}
    for name, parameter in theirs.items():
        if name in ("cls", "model_kwargs", "model_id"):
            continue
        assert name in ours, name
        if name != "pretrained_model_name_or_path" and parameter.default is not inspect.Parameter.empty:
            assert ours[name].default == parameter.default, name

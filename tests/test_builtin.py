"""The built-in general model: the default of compress, decompress, eval, generate, anomaly,
info and ``detect --model``; streams that name it; its provenance; the missing-weights error;
and the shipped weights themselves (when this checkout has them).

A tiny, briefly trained model stands in for the real weights through
``$OMNIBYTE_BUILTIN_MODEL`` (the documented override), so every test runs the same code as
the packaged model without needing it."""
from __future__ import annotations

import importlib.util
import json
import lzma
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import omnibyte
from omnibyte.apps import container
from omnibyte.apps.compress import compress, decompress, model_fingerprint
from omnibyte.cli import main
from omnibyte.errors import OmnibyteError
from omnibyte.models.integer import integer_model
from omnibyte.models.builtin import (BUILTIN_ENV, BUILTIN_NAME, MAX_WEIGHTS_BYTES, PACKAGE_FOLDER, builtin_model_dir,
                                     load_builtin_model, read_provenance, require_builtin_model_dir)
from omnibyte.models.serialization import WEIGHTS_FILE, load_model, save_model

from helpers import one_thread, train_briefly, word_text  # noqa: F401 (one_thread: a fixture)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")
PROVENANCE = {"name": BUILTIN_NAME, "seq_len": 128, "date": "2026-11-29T00:00:00Z", "device": "test CPU",
              "git_commit": "0" * 40, "recipe": "tests/test_builtin.py", "steps": 60,
              "training_data": {"manifest_sha256": "ab" * 32, "raw_bytes": 4000, "files": 1,
                                "kinds": {"text": {"files": 1, "raw_bytes": 4000, "sources": ["word_text"]}}}}


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> Path:
    """A tiny flat model trained a few steps on word-like text, saved as a built-in model folder."""
    folder = tmp_path_factory.mktemp("builtin") / "general"
    torch.manual_seed(0)
    model = omnibyte.build_model("flat", "tiny", max_sequence_length=256)
    train_briefly(model, word_text(4000), steps=40)
    save_model(model, folder)
    (folder / "PROVENANCE.json").write_text(json.dumps(PROVENANCE))
    return folder


@pytest.fixture()
def builtin(stand_in, monkeypatch) -> Path:
    monkeypatch.setenv(BUILTIN_ENV, str(stand_in))
    return stand_in


@pytest.fixture()
def other_model(tmp_path) -> Path:
    torch.manual_seed(1)
    return save_model(omnibyte.build_model("flat", "tiny", max_sequence_length=256), tmp_path / "other")


@pytest.fixture()
def no_builtin(tmp_path, monkeypatch) -> Path:
    empty = tmp_path / "no-weights"
    empty.mkdir()
    monkeypatch.setenv(BUILTIN_ENV, str(empty))
    return empty


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def text_file(tmp_path: Path, size: int = 3000, name: str = "input.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(word_text(size, seed=5))
    return path


# ---- the loader ---------------------------------------------------------------------------

def test_the_override_names_the_folder_and_the_package_slot_is_the_default(builtin, monkeypatch):
    assert builtin_model_dir() == builtin and require_builtin_model_dir() == builtin
    monkeypatch.delenv(BUILTIN_ENV)
    assert builtin_model_dir() == PACKAGE_FOLDER == ROOT / "src" / "omnibyte" / "builtin" / BUILTIN_NAME


def test_load_builtin_model_is_the_folder_s_model(builtin):
    loaded = omnibyte.load_builtin_model()
    assert model_fingerprint(loaded) == model_fingerprint(load_model(builtin))
    assert not loaded.training


def test_provenance_is_readable(builtin, capsys):
    assert read_provenance() == PROVENANCE
    code, out, _ = run(capsys, "info", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["builtin"] == BUILTIN_NAME and report["provenance"] == PROVENANCE
    code, out, _ = run(capsys, "info")
    assert "the built-in general model" in out and "provenance" in out and "2026-11-29T00:00:00Z" in out
    assert "word_text" in out  # the training data's sources


def test_a_damaged_provenance_is_one_line(builtin, tmp_path, capsys, monkeypatch):
    copy = tmp_path / "damaged"
    copy.mkdir()
    for name in ("config.json", WEIGHTS_FILE):
        (copy / name).write_bytes((builtin / name).read_bytes())
    (copy / "PROVENANCE.json").write_text("{not json")
    monkeypatch.setenv(BUILTIN_ENV, str(copy))
    code, _, err = run(capsys, "info")
    assert code == 2 and err.count("\n") == 1 and "PROVENANCE.json" in err


# ---- missing weights ------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["compress", "{F}"], ["eval", "{F}"], ["generate", "--max-bytes", "4"], ["anomaly", "{F}"], ["info"],
    ["detect", "{F}", "--model"], ["decompress", "{S}"],
])
def test_missing_weights_are_one_line_exit_2(argv, no_builtin, builtin_stream, tmp_path, capsys):
    file = text_file(tmp_path)
    args = [arg.replace("{F}", str(file)).replace("{S}", str(builtin_stream)) for arg in argv]
    code, out, err = run(capsys, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("omnibyte: error: the built-in model is not installed")
    assert "--model DIR" in err and str(no_builtin) in err
    assert not (tmp_path / "input.txt.omb").exists()


def test_missing_weights_in_the_api_are_an_omnibyte_error(no_builtin):
    with pytest.raises(OmnibyteError, match="not installed"):
        load_builtin_model()
    with pytest.raises(OmnibyteError, match="not installed"):
        compress(b"some bytes")


# ---- compress and decompress ----------------------------------------------------------------

@pytest.fixture(scope="module")
def builtin_blob(stand_in) -> bytes:
    """A stream made with the built-in model (the stand-in, named as the built-in model)."""
    return compress(word_text(600, seed=2), load_model(stand_in), builtin=BUILTIN_NAME)


@pytest.fixture()
def builtin_stream(builtin_blob, tmp_path) -> Path:
    path = tmp_path / "made.txt.omb"
    path.write_bytes(builtin_blob)
    return path


def test_compress_and_decompress_need_no_model(builtin, tmp_path, capsys):
    source = text_file(tmp_path, 2500)
    original = source.read_bytes()
    code, _, err = run(capsys, "compress", source, "-q")
    assert code == 0, err
    stream = tmp_path / "input.txt.omb"
    header = container.unpack(stream.read_bytes())
    assert header.builtin == BUILTIN_NAME
    assert header.settings.integer  # the built-in model codes with exact integer numerics by default
    assert header.fingerprint == integer_model(load_model(builtin)).fingerprint()[: container.FINGERPRINT_BYTES]
    assert len(stream.read_bytes()) < len(original) // 2  # coded by the trained stand-in, not stored raw
    source.unlink()
    code, _, err = run(capsys, "decompress", stream, "-q")
    assert code == 0, err
    assert source.read_bytes() == original


def test_the_builtin_model_adapts_in_float_numerics(builtin, tmp_path, capsys):
    """--numerics auto: integer numerics cannot adapt, so --adapt codes in float; on 600 bytes
    the plain stream (integer numerics, no adapt section) is smaller, and plain --adapt keeps it."""
    source = text_file(tmp_path, 600)
    original = source.read_bytes()
    stream = tmp_path / "input.txt.omb"
    for options, adapts in [(["--adapt", "--adapt-always"], True), (["--adapt", "-f"], False)]:
        code, _, err = run(capsys, "compress", source, "-q", *options)
        assert code == 0, err
        header = container.unpack(stream.read_bytes())
        assert header.builtin == BUILTIN_NAME and (header.adapt is not None) == adapts
        assert header.settings.integer != adapts
        code, _, err = run(capsys, "decompress", stream, "-q", "-o", tmp_path / "restored.txt", "-f")
        assert code == 0, err
        assert (tmp_path / "restored.txt").read_bytes() == original


def test_the_default_is_the_same_as_naming_the_builtin_folder(builtin, tmp_path, capsys):
    source = text_file(tmp_path, 600)
    run(capsys, "compress", source, "-q", "-o", tmp_path / "default.omb")
    run(capsys, "compress", source, "-q", "-o", tmp_path / "named.omb", "--model", builtin)
    assert (tmp_path / "default.omb").read_bytes() == (tmp_path / "named.omb").read_bytes()


def test_builtin_streams_with_adapt_decode_without_a_model(builtin, tmp_path, capsys):
    source = text_file(tmp_path, 300)
    original = source.read_bytes()
    assert run(capsys, "compress", source, "-q", "--adapt", "--adapt-always", "--adapt-block", "64")[0] == 0
    header = container.unpack((tmp_path / "input.txt.omb").read_bytes())
    assert header.builtin == BUILTIN_NAME and header.adapt is not None
    source.unlink()
    assert run(capsys, "decompress", tmp_path / "input.txt.omb", "-q")[0] == 0
    assert source.read_bytes() == original


def test_the_python_api_defaults_to_the_builtin_model(builtin):
    data = word_text(900, seed=3)
    blob = compress(data)
    assert container.unpack(blob).builtin == BUILTIN_NAME
    assert decompress(blob) == data


def test_a_stream_of_another_model_still_needs_its_model(builtin, other_model, tmp_path, capsys):
    source = text_file(tmp_path, 300)
    original = source.read_bytes()
    assert run(capsys, "compress", source, "-q", "--model", other_model)[0] == 0
    stream = tmp_path / "input.txt.omb"
    assert container.unpack(stream.read_bytes()).builtin is None
    source.unlink()
    code, _, err = run(capsys, "decompress", stream)
    assert code == 2 and err.count("\n") == 1 and "compressed with a trained model: name it with --model" in err
    assert not source.exists()
    assert run(capsys, "decompress", stream, "-q", "--model", other_model)[0] == 0
    assert source.read_bytes() == original


def test_a_builtin_stream_refuses_a_different_installed_builtin(builtin_stream, other_model, capsys, monkeypatch):
    monkeypatch.setenv(BUILTIN_ENV, str(other_model))  # e.g. a newer omnibyte with re-trained weights
    code, _, err = run(capsys, "decompress", builtin_stream)
    assert code == 2 and err.count("\n") == 1
    assert "built-in model 'general' of another omnibyte build" in err
    assert not builtin_stream.with_suffix("").exists()


def test_a_stream_naming_an_unknown_builtin_is_refused(builtin, builtin_blob, capsys, tmp_path):
    header = container.unpack(builtin_blob)
    renamed = tmp_path / "renamed.omb"
    renamed.write_bytes(container.pack(_replace(header, builtin="large")))
    code, _, err = run(capsys, "decompress", renamed)
    assert code == 2 and err.count("\n") == 1 and "built-in model 'large'" in err
    assert not (tmp_path / "renamed").exists()


def _replace(header: container.Container, **changes) -> container.Container:
    import dataclasses

    return dataclasses.replace(header, **changes)


# ---- the container's name section ------------------------------------------------------------

def test_the_name_section_round_trips_and_is_checked(builtin_blob):
    header = container.unpack(builtin_blob)
    assert header.builtin == BUILTIN_NAME and header.version == 4
    unnamed = container.pack(_replace(header, builtin=None))
    assert container.unpack(unnamed).builtin is None
    assert len(container.pack(header)) == len(unnamed) + 1 + len(BUILTIN_NAME)
    for bad in ("", "Big", "a b", "x" * 65):
        with pytest.raises(ValueError):
            container.pack(_replace(header, builtin=bad))
    with pytest.raises(ValueError):
        container.pack(_replace(header, builtin="general", version=3))


def _patched_name(blob: bytes, name: bytes) -> bytes:
    """``blob`` with its name section replaced by ``name`` and both checksums made right again."""
    import zlib

    header = container.unpack(blob)
    start = blob.index(bytes([len(BUILTIN_NAME)]) + BUILTIN_NAME.encode())
    patched = blob[:start] + bytes([len(name)]) + name + blob[start + 1 + len(BUILTIN_NAME):]
    payload = b"".join(header.streams) + header.raw_data
    head = patched[: len(patched) - len(payload) - 8]
    return head + zlib.crc32(head).to_bytes(4, "little") + payload + zlib.crc32(payload).to_bytes(4, "little")


@pytest.mark.parametrize("name, message", [(b"G\xffneral", "is not a model name"), (b"x" * 65, "name section")])
def test_crafted_name_sections_are_corrupted_streams(builtin_blob, name, message):
    with pytest.raises(OmnibyteError, match=message):
        container.unpack(_patched_name(builtin_blob, name))


# ---- every command's default ------------------------------------------------------------------

def test_eval_anomaly_and_generate_default_to_the_builtin_model(builtin, tmp_path, capsys):
    file = text_file(tmp_path, 600)
    for argv in (["eval", file, "--json"], ["anomaly", file, "--json"]):
        code, default_out, err = run(capsys, *argv)
        assert code == 0, err
        code, named_out, err = run(capsys, *argv, "--model", builtin)
        assert code == 0, err
        assert default_out == named_out and default_out
        code = run(capsys, *argv, "--model", builtin.parent / "missing")[0]
        assert code == 2  # the option still names a model when given
    samples = []
    for model in ([], ["--model", builtin]):
        out = tmp_path / f"sample{len(samples)}.bin"
        generate = ["generate", "--prompt", "the quick", "--max-bytes", "24", "--seed", "3", "--device", "cpu"]
        assert run(capsys, *generate, *model, "-o", out)[0] == 0
        samples.append(out.read_bytes())
    assert samples[0] == samples[1] and len(samples[0]) >= 24


def test_detect_uses_the_builtin_model_only_when_asked(builtin, tmp_path, capsys):
    file = text_file(tmp_path, 600)
    code, plain, _ = run(capsys, "detect", file, "--json")
    assert code == 0 and json.loads(plain)[0]["detection"]["model_bits_per_byte"] is None  # no model, as before
    code, bare, err = run(capsys, "detect", file, "--json", "--model")
    assert code == 0, err
    code, named, _ = run(capsys, "detect", file, "--json", "--model", builtin)
    assert bare == named and json.loads(bare)[0]["detection"]["model_bits_per_byte"] > 0


# ---- the recipe's scripts -------------------------------------------------------------------

def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_mix_shards_of_archives_are_learnt_as_bytes_not_unpacked(tmp_path):
    from omnibyte.data import ByteCorpus

    mix = load_script("build_general_mix")
    tar = mix.deterministic_tar([("a.txt", b"alpha\n"), ("b.bin", bytes(range(256)))])
    assert tar == mix.deterministic_tar([("a.txt", b"alpha\n"), ("b.bin", bytes(range(256)))])  # no clock in it
    writer = mix.ShardWriter(tmp_path / "train", "tar", ".tar")
    writer.add(tar, "test")
    writer.flush()
    (shard,) = (tmp_path / "train" / "tar").iterdir()
    assert shard.name == "tar-0000.tar.bin.xz"
    corpus = ByteCorpus.from_paths([tmp_path / "train"])
    assert corpus.num_documents == 1 and corpus.read(0, corpus.num_bytes).tobytes() == tar
    assert lzma.decompress(shard.read_bytes()) == tar


def test_held_out_selection_is_stable_and_seeded():
    mix = load_script("build_general_mix")
    names = [f"kernel/file{i}.c" for i in range(2000)]
    first = [mix.stable_fraction(name, 0) < 0.08 for name in names]
    assert first == [mix.stable_fraction(name, 0) < 0.08 for name in names]
    assert 80 < sum(first) < 250
    assert first != [mix.stable_fraction(name, 1) < 0.08 for name in names]


def tiny_mix(root: Path) -> Path:
    """A mix folder as build_general_mix.py writes it, from word text and random bytes."""
    import os

    train = root / "train"
    for kind, data in (("text", word_text(20000, seed=1)), ("binary", os.urandom(6000))):
        (train / kind).mkdir(parents=True)
        (train / kind / f"{kind}-0000.bin.xz").write_bytes(lzma.compress(data))
    for kind, data in (("prose", word_text(3000, seed=9)), ("wav", b"RIFF" + bytes(2000))):
        (root / "heldout" / kind).mkdir(parents=True)
        (root / "heldout" / kind / f"sample.{kind}").write_bytes(data)
    manifest = {"command": "tiny", "train_sha256": "0" * 64, "heldout_sha256": "1" * 64, "files": 2,
                "raw_bytes": 26000, "kinds": {"text": {"files": 1, "raw_bytes": 20000, "sources": {"word_text": 1}},
                                             "binary": {"files": 1, "raw_bytes": 6000, "sources": {"urandom": 1}}}}
    (root / "MANIFEST.json").write_text(json.dumps(manifest))
    return root


@pytest.mark.slow
def test_the_training_recipe_runs_on_the_cpu_and_installs(tmp_path, monkeypatch):
    mix = tiny_mix(tmp_path / "mix")
    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "scripts" / "train_general_model.py"), "--mix", str(mix), "--out", str(out),
               "--run-dir", str(tmp_path / "runs"), "--minutes", "0.05", "--preset", "tiny", "--device", "cpu",
               "--seq-len", "64", "--batch-size", "2", "--calibration-steps", "5", "--eval-batch-size", "4",
               "--set", "max_sequence_length=128"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["general", "heldout_eval.json", "loss_curve.png",
                                                     "metrics.jsonl", "train.log"]
    provenance = json.loads((out / "general" / "PROVENANCE.json").read_text())
    assert provenance["name"] == BUILTIN_NAME and provenance["seq_len"] == 64 and provenance["steps"] >= 1
    assert provenance["training_data"]["raw_bytes"] == 26000 and set(provenance["heldout_bits_per_byte"]) == {
        "prose", "wav"}
    weights = load_model(out / "general").state_dict()
    from safetensors import safe_open

    with safe_open(str(out / "general" / WEIGHTS_FILE), "pt") as handle:  # stored in bfloat16
        assert {handle.get_tensor(name).dtype for name in handle.keys()} == {torch.bfloat16}
    assert all(tensor.dtype == torch.float32 for tensor in weights.values())  # loaded as float32
    slot = tmp_path / "slot"
    install = [sys.executable, str(ROOT / "scripts" / "install_builtin_model.py"), str(out / "general"),
               "--into", str(slot)]
    assert subprocess.run(install, capture_output=True).returncode == 0
    again = subprocess.run(install, capture_output=True, text=True)
    assert again.returncode == 2 and "--force" in again.stderr  # installed weights are not replaced silently
    monkeypatch.setenv(BUILTIN_ENV, str(slot))
    data = word_text(900)
    assert decompress(compress(data)) == data


# ---- the shipped weights ------------------------------------------------------------------------

@pytest.mark.skipif(not (PACKAGE_FOLDER / WEIGHTS_FILE).is_file(),
                    reason="this checkout has no built-in weights (scripts/install_builtin_model.py installs them)")
def test_the_shipped_weights_fit_the_package_and_load(monkeypatch):
    monkeypatch.delenv(BUILTIN_ENV, raising=False)
    assert (PACKAGE_FOLDER / WEIGHTS_FILE).stat().st_size <= MAX_WEIGHTS_BYTES
    model = load_builtin_model()
    provenance = read_provenance()
    assert provenance["name"] == BUILTIN_NAME
    for key in ("date", "git_commit", "device", "recipe", "steps", "training_data"):
        assert provenance.get(key) is not None, key
    assert provenance["training_data"]["manifest_sha256"] and provenance["training_data"]["kinds"]
    data = b"The built-in model compresses this sentence on any machine.\n" * 2
    blob = compress(data)  # the default: the shipped model, named in the stream, integer numerics
    assert container.unpack(blob).fingerprint == integer_model(model).fingerprint()[: container.FINGERPRINT_BYTES]
    assert decompress(blob) == data
    blob = compress(data, numerics="float")
    assert container.unpack(blob).fingerprint == model_fingerprint(model)[: container.FINGERPRINT_BYTES]
    assert decompress(blob) == data

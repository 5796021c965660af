"""The bad-input catalogue: every subcommand and the Python API, called as a careless or
hostile user would.

Every CLI case must end with exit code 2, exactly one stderr line starting with
``omnibyte: error:`` (naming what is wrong), no traceback, and the files around it (the
inputs, the model, the output folder and the current folder) exactly as they were: nothing
written, nothing changed, nothing half-done. Cases run in-process through
``omnibyte.cli.main`` (fast); a few run as real processes, with stdin or stdout closed, full
or cut off. API cases must raise the named exception type before doing any work.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import omnibyte
from omnibyte.cli import main
from omnibyte.errors import OmnibyteError
from omnibyte.models.serialization import save_model
from omnibyte.tasks import ClassifyTask

BIG_SEED = str(2**63)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Inputs shared by every case: a tiny (untrained) model, a run folder, text, an empty
    file, a data folder, an empty folder, an existing output and damaged model folders."""
    root = tmp_path_factory.mktemp("world")
    torch.manual_seed(0)
    model = omnibyte.build_model("flat", "tiny", max_sequence_length=128)
    save_model(model, root / "model")
    (root / "text.txt").write_bytes(b"the quick brown fox jumps over the lazy dog.\n" * 40)
    (root / "empty.bin").write_bytes(b"")
    (root / "data").mkdir()
    (root / "data" / "a.txt").write_bytes(b"hello world\n" * 100)
    (root / "nothing").mkdir()
    (root / "existing.txt").write_bytes(b"precious")
    (root / "existing-0.txt").write_bytes(b"precious too")
    from omnibyte.apps.compress import compress

    (root / "trained.omb").write_bytes(compress(b"abc" * 10, model))
    save_model(omnibyte.build_model("patch", "tiny", seed=0), root / "patch_model")
    (root / "builtin.omb").write_bytes(compress(b"abc" * 10, model, builtin="general"))  # names the built-in model
    (root / "unknown-builtin.omb").write_bytes(compress(b"abc" * 10, model, builtin="large"))
    document = json.loads((root / "model" / "config.json").read_text())
    weights = (root / "model" / "model.safetensors").read_bytes()

    def model_folder(name: str, config: object, weight_bytes: bytes = weights) -> None:
        (root / name).mkdir()
        text = config if isinstance(config, str) else json.dumps(config)
        (root / name / "config.json").write_text(text)
        (root / name / "model.safetensors").write_bytes(weight_bytes)

    def with_config(**changes: object) -> dict:
        return {**document, "config": {**document["config"], **changes}}

    save_model(model, root / "converter", task={"name": "convert", "source": "abc", "target": "midi"})
    save_model(model, root / "answerer", task={"name": "answer", "source": "bytes", "target": "bytes",
                                               "encoding": "png", "image_size": 32})
    (root / "vqa-formats").mkdir()  # the index of a multi-format shapes-vqa dataset
    (root / "vqa-formats" / "dataset.json").write_text(json.dumps({"dataset": "shapes-vqa",
                                                                   "formats": ["png32", "bmp32"]}))
    (root / "tune.abc").write_bytes(b"X: 1\nT:Tune\nM:6/8\nK:G\nGAB c2d|]\n")
    (root / "tune.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x04\x00MTrk\x00\x00\x00\x04\x00\xff\x2f\x00")
    model_folder("truncated", document, weights[:300])
    model_folder("notjson", "{not json")
    model_folder("foreign", {"architectures": ["GPT2LMHeadModel"]})
    model_folder("future", {**document, "format": 99})
    model_folder("mismatched", with_config(num_layers=5))
    model_folder("float_hidden", with_config(hidden_size=64.5))
    model_folder("zero_heads", with_config(num_query_heads=0))
    model_folder("negative_hidden", with_config(hidden_size=-64))
    model_folder("huge_hidden", with_config(hidden_size=10**9))
    model_folder("huge_context", with_config(max_sequence_length=10**9))
    model_folder("string_qk_norm", with_config(qk_norm="no"))
    model_folder("string_hidden", with_config(hidden_size="64"))
    (root / "noweights").mkdir()
    (root / "noweights" / "config.json").write_text(json.dumps(document))
    # classification: a (untrained) classifier, labelled folders and CSVs, good and bad
    task = ClassifyTask(["a", "b"], model.hidden_size, seq_len=64)
    save_model(model, root / "classifier", task=task.to_dict(), task_weights=torch.nn.ModuleDict(task.modules()).state_dict())
    for name, classes in {"classes": ("a", "b"), "one_class": ("a",), "empty_class": ("a", "b"),
                          "other_classes": ("x", "y")}.items():
        for label in classes:
            (root / name / label).mkdir(parents=True)
            if not (name == "empty_class" and label == "b"):
                (root / name / label / "f.txt").write_bytes(label.encode() * 50)
    (root / "no_label.csv").write_text("path,label\ntext.txt,\n")
    (root / "missing_file.csv").write_text("path,label\ntext.txt,a\nabsent.txt,b\n")
    (root / "pictures").mkdir()
    Image.new("RGB", (4, 4)).save(root / "pictures" / "pic.png")
    (root / "pictures" / "pic.bmp").write_bytes(b"precious")
    # a run with a one-process trainer state, and one whose sharded checkpoint is damaged
    from omnibyte.train.checkpoint import save_trainer_state

    optimizer = torch.optim.AdamW(model.parameters())
    save_trainer_state(root / "staterun", model, optimizer, {"step": 1}, {"torch": torch.get_rng_state()})
    broken = root / "brokenrun" / "checkpoints" / "step-0000000001"
    broken.mkdir(parents=True)
    (broken / "trainer.json").write_text("{not json")
    (broken / ".metadata").write_bytes(b"\x00" * 8)
    return root


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every entry below ``roots`` (hidden ones included) with its size and content hash."""
    entries = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                entries[str(path)] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                entries[str(path)] = ("folder" if path.is_dir() else "other",)
    return entries


def assert_refused(argv: list[str], fragment: str, world: Path, tmp_path: Path, capsys) -> None:
    before = snapshot(world, tmp_path)
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, (code, captured.err)
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("omnibyte: error:") and "Traceback" not in captured.err
    assert fragment in lines[0], lines[0]
    assert snapshot(world, tmp_path) == before


# (argv with {W}: the world folder, {T}: a fresh folder for outputs; the text the error names)
M = ["--model", "{W}/model"]
TRAIN = ["train", "{W}/data", "--out", "{T}/run"]
EVAL = ["eval", "{W}/data", *M]
GENERATE = ["generate", *M, "--device", "cpu"]
ANOMALY = ["anomaly", "{W}/text.txt", *M]
DEMO = ["demo", "--out", "{T}/demo"]
PATCHES = ["patches", "{W}/text.txt", *M, "--device", "cpu"]
CONVERT = ["convert", "--model", "{W}/converter", "--device", "cpu"]
CPU_DATA = ["datasets", "cpu", "--out", "{T}/cpu"]
NOTTINGHAM = ["datasets", "nottingham", "--direction", "abc2midi", "--out", "{T}/pairs"]
ANSWER = ["answer", "--model", "{W}/answerer", "--device", "cpu"]
VQA_DATA = ["datasets", "shapes-vqa", "--out", "{T}/vqa"]

CLI_CASES: list[tuple[list[str], str]] = [
    # the command line itself
    ([], "required: COMMAND"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["--bogus"], "COMMAND"),
    (["train"], "required"),
    (["train", "{W}/data"], "--out"),
    ([*TRAIN, "--no-such-option"], "--no-such-option"),
    # train: every option checked when parsed
    ([*TRAIN, "--steps", "0"], "--steps: must be at least 1, got 0"),
    ([*TRAIN, "--steps", "-1"], "--steps"),
    ([*TRAIN, "--steps", "ten"], "expected an integer, got 'ten'"),
    ([*TRAIN, "--steps", "1.5"], "--steps"),
    ([*TRAIN, "--steps", "auto"], "--steps auto needs --time-limit"),
    ([*TRAIN, "--steps", "Auto"], "expected an integer, got 'Auto'"),
    ([*TRAIN, "--batch-size", "0"], "--batch-size"),
    ([*TRAIN, "--batch-size", "-1"], "--batch-size"),
    ([*TRAIN, "--seq-len", "0"], "--seq-len"),
    ([*TRAIN, "--grad-accum", "0"], "--grad-accum"),
    ([*TRAIN, "--lr", "0"], "--lr: must be a number > 0"),
    ([*TRAIN, "--lr", "-1e-3"], "--lr"),
    ([*TRAIN, "--lr", "nan"], "--lr"),
    ([*TRAIN, "--lr", "inf"], "--lr"),
    ([*TRAIN, "--warmup-steps", "-2"], "--warmup-steps"),
    ([*TRAIN, "--weight-decay", "-0.1"], "--weight-decay"),
    ([*TRAIN, "--grad-clip", "-1"], "--grad-clip"),
    ([*TRAIN, "--grad-clip", "nan"], "--grad-clip"),
    ([*TRAIN, "--eval-every", "-1"], "--eval-every"),
    ([*TRAIN, "--eval-windows", "-1"], "--eval-windows"),
    ([*TRAIN, "--patience", "-1"], "--patience"),
    ([*TRAIN, "--save-every", "-1"], "--save-every"),  # 0 means: only at the end
    ([*TRAIN, "--log-every", "0"], "--log-every"),
    ([*TRAIN, "--seed", "-1"], "--seed"),
    ([*TRAIN, "--seed", BIG_SEED], "--seed"),
    ([*TRAIN, "--seed", "1.5"], "--seed"),
    ([*TRAIN, "--time-limit", "-1"], "--time-limit"),
    ([*TRAIN, "--time-limit", "nan"], "--time-limit"),
    ([*TRAIN, "--val-fraction", "1"], "--val-fraction: must be a number in [0, 1)"),
    ([*TRAIN, "--val-fraction", "-0.1"], "--val-fraction"),
    ([*TRAIN, "--val-fraction", "nan"], "--val-fraction"),
    ([*TRAIN, "--arch", "lstm"], "lstm"),
    ([*TRAIN, "--device", "mps"], "mps"),
    ([*TRAIN, "--device", "cuda:x"], "cuda:x"),
    ([*TRAIN, "--parallel", "zero3"], "zero3"),
    ([*TRAIN, "--activation-checkpointing", "all"], "'all'"),
    ([*TRAIN, "--loss-chunk", "-1"], "--loss-chunk"),
    ([*TRAIN, "--attention-backend", "fa9"], "fa9"),
    # train: outputs, data and model config, checked before training
    (["train", "{W}/data", "--out", "{W}/existing.txt"], "is a file, not a folder"),
    (["train", "{W}/data", "--out", "{W}/existing.txt/run"], "is a file, not a folder"),
    ([*TRAIN, "--set", "num_layers"], "--set expects KEY=VALUE"),
    ([*TRAIN, "--set", "=4"], "--set expects KEY=VALUE"),
    ([*TRAIN, "--set", "no_such_field=1"], "no_such_field"),
    ([*TRAIN, "--preset", "enormous"], "enormous"),
    ([*TRAIN, "--set", "num_key_value_heads=3"], "num_key_value_heads"),
    ([*TRAIN, "--set", "hidden_size=-64"], "hidden_size"),  # library: names the field
    ([*TRAIN, "--set", 'hidden_size="64"'], "hidden_size"),  # library: a string is no integer
    ([*TRAIN, "--set", "num_query_heads=0"], "num_query_heads"),  # library
    ([*TRAIN, "--set", 'qk_norm="no"'], "qk_norm"),  # library
    ([*TRAIN, "--set", "norm_eps=NaN"], "norm_eps"),  # library
    ([*TRAIN, "--set", "max_sequence_length=1024.5"], "max_sequence_length"),  # library
    ([*TRAIN, "--set", "hidden_size=1000000000"], "hidden_size"),  # library: its range
    ([*TRAIN, "--set", "hidden_size=65536", "--set", "num_layers=64"], "--allow-large"),  # library: size limit
    ([*TRAIN, "--seq-len", "4096"], "context"),
    # BLT: nested settings, the patcher, the entropy model
    ([*TRAIN, "--arch", "blt", "--set", "patching.scheme=words"], "patching.scheme"),
    ([*TRAIN, "--arch", "blt", "--set", "patching.scheme=entropy"], "entropy_model"),
    ([*TRAIN, "--arch", "blt", "--set", "patching.scheme=entropy", "--set", "entropy_model={W}/missing"], "missing"),
    ([*TRAIN, "--arch", "blt", "--set", "patching.scheme=entropy", "--set", "entropy_model={W}/data"], "data"),
    ([*TRAIN, "--arch", "blt", "--set", "patching.min_patch_size=9"], "min_patch_size"),
    ([*TRAIN, "--arch", "blt", "--set", "latent.window=-1"], "latent.window"),
    ([*TRAIN, "--arch", "blt", "--set", "patching..scheme=space"], "patching..scheme"),
    ([*TRAIN, "--arch", "blt", "--set", "patching=3"], "patching"),
    ([*TRAIN, "--arch", "blt", "--set", "ngram_sizes=[2, 99]"], "ngram_sizes[1]"),
    (["train", "{W}/missing", "--out", "{T}/run"], "missing"),
    (["train", "{W}/nothing", "--out", "{T}/run"], "nothing"),
    # eval
    (["eval", "{W}/data"], "the built-in model is not installed"),  # no --model: the built-in model, missing here
    ([*EVAL, "--batch-size", "-1"], "--batch-size: must be at least 1, got -1"),
    ([*EVAL, "--batch-size", "0"], "--batch-size"),
    ([*EVAL, "--context", "-5"], "--context"),
    ([*EVAL, "--context", "0"], "--context"),
    ([*EVAL, "--context", "1e3"], "--context"),
    ([*EVAL, "--context", "100000", "--device", "cpu"], "exceeds the model's context"),
    ([*EVAL, "--device", "mps"], "mps"),
    ([*EVAL, "--device", "gpu"], "unknown device 'gpu'"),
    (["eval", "{W}/missing", *M], "missing"),
    (["eval", "{W}/data", "--model", "{W}/absent"], "not found"),
    (["eval", "{W}/data", "--model", "{W}/text.txt"], "text.txt"),
    (["eval", "{W}/data", "--model", "{W}/nothing"], "no config.json"),
    (["eval", "{W}/data", "--model", "{W}/foreign"], "not an omnibyte config"),
    (["eval", "{W}/data", "--model", "{W}/future"], "format"),
    (["eval", "{W}/data", "--model", "{W}/notjson"], "config.json"),
    (["eval", "{W}/data", "--model", "{W}/noweights"], "model.safetensors"),
    (["eval", "{W}/data", "--model", "{W}/float_hidden"], "hidden_size"),  # library
    (["eval", "{W}/data", "--model", "{W}/zero_heads"], "num_query_heads"),  # library
    (["eval", "{W}/data", "--model", "{W}/negative_hidden"], "hidden_size"),  # library
    (["eval", "{W}/data", "--model", "{W}/huge_hidden"], "hidden_size"),  # library: refused before allocating
    (["eval", "{W}/data", "--model", "{W}/huge_context"], "max_sequence_length"),  # library
    (["eval", "{W}/data", "--model", "{W}/string_qk_norm"], "qk_norm"),  # library
    (["eval", "{W}/data", "--model", "{W}/string_hidden"], "hidden_size"),  # library
    # generate
    ([*GENERATE, "--temperature", "nan"], "--temperature"),
    ([*GENERATE, "--temperature", "-1"], "--temperature"),
    ([*GENERATE, "--temperature", "inf"], "--temperature"),
    ([*GENERATE, "--temperature", "warm"], "--temperature"),
    ([*GENERATE, "--top-k", "0"], "--top-k"),
    ([*GENERATE, "--top-k", "-3"], "--top-k"),
    ([*GENERATE, "--top-k", "257"], "--top-k"),
    ([*GENERATE, "--top-p", "2"], "--top-p"),
    ([*GENERATE, "--top-p", "0"], "--top-p"),
    ([*GENERATE, "--top-p", "nan"], "--top-p"),
    ([*GENERATE, "--top-p", "-0.5"], "--top-p"),
    ([*GENERATE, "--max-bytes", "-1"], "--max-bytes"),
    ([*GENERATE, "--max-bytes", "many"], "--max-bytes"),
    ([*GENERATE, "--seed", "-1"], "--seed"),
    ([*GENERATE, "--seed", BIG_SEED], "--seed"),
    ([*GENERATE, "--num-samples", "0"], "--num-samples"),
    ([*GENERATE, "--num-samples", "-2"], "--num-samples"),
    ([*GENERATE, "--prompt", "\ud800"], "--prompt"),  # no bytes stand behind a lone surrogate
    ([*GENERATE, "--prompt-file", "{W}/missing"], "No such file"),
    ([*GENERATE, "--prompt-file", "{W}/data"], "is a folder"),
    ([*GENERATE, "--max-bytes", "500"], "context"),
    ([*GENERATE, "-o", "{W}/data"], "is a folder"),
    ([*GENERATE, "-o", "{W}/existing.txt"], "exists (use --force to overwrite)"),
    ([*GENERATE, "-o", "{T}/missing/out.txt"], "does not exist"),
    ([*GENERATE, "-o", "{W}/existing.txt/out.txt"], "is not a folder"),
    ([*GENERATE, "--num-samples", "2", "-o", "{W}/existing.txt"], "existing-0.txt exists"),
    (["generate", "--model", "{W}/mismatched"], "does not match"),
    # export
    (["export", "{W}/staterun"], "--out"),
    (["export", "{W}/absent", "--out", "{T}/exported"], "is not a folder"),
    (["export", "{W}/text.txt", "--out", "{T}/exported"], "is not a folder"),
    (["export", "{W}/model", "--out", "{T}/exported"], "holds no training checkpoint"),
    (["export", "{W}/brokenrun", "--out", "{T}/exported"], "corrupt or unreadable"),
    (["export", "{W}/staterun", "--out", "{W}/model"], "already holds a model; pass --force"),
    (["export", "{W}/staterun", "--out", "{W}/staterun"], "must not be the run folder"),
    (["export", "{W}/staterun", "--out", "{W}/existing.txt"], "is a file, not a folder"),
    # info
    (["info"], "the built-in model is not installed"),
    (["info", "--model", "{W}/absent"], "not found"),
    (["info", "--model", "{W}/truncated"], "model.safetensors"),
    (["info", "--model", "{W}/model", "--device", "cpu"], "--device"),
    (["info", "--model", "{W}/notjson"], "config.json"),
    # detect
    (["detect"], "FILE"),
    (["detect", "{W}/missing"], "missing"),
    (["detect", "{W}/text.txt", "{W}/missing"], "missing"),
    (["detect", "{W}/nothing"], "holds no files"),
    (["detect", "{W}/text.txt", "--model", "{W}/absent"], "not found"),
    (["detect", "{W}/text.txt", "--model"], "the built-in model is not installed"),
    (["detect", "{W}/text.txt", "--model", "{W}/model", "--device", "mps"], "mps"),
    # anomaly
    (["anomaly", "{W}/text.txt"], "the built-in model is not installed"),
    ([*ANOMALY, "--threshold", "nan"], "--threshold"),
    ([*ANOMALY, "--threshold", "-1"], "--threshold"),
    ([*ANOMALY, "--threshold", "inf"], "--threshold"),
    ([*ANOMALY, "--top", "0"], "--top"),
    ([*ANOMALY, "--window", "0"], "--window"),
    ([*ANOMALY, "--window", "-1"], "--window"),
    ([*ANOMALY, "--context", "0"], "--context"),
    ([*ANOMALY, "--batch-size", "0"], "--batch-size"),
    ([*ANOMALY, "--context", "100000", "--device", "cpu"], "exceeds the model's context"),
    ([*ANOMALY, "--plot", "{W}/data"], "is a folder"),
    ([*ANOMALY, "--plot", "{W}/existing.txt"], "exists (use --force to overwrite)"),
    ([*ANOMALY, "--plot", "{T}/missing/plot.png"], "does not exist"),
    ([*ANOMALY, "--plot", "{W}/existing.txt/plot.png"], "is not a folder"),
    ([*ANOMALY, "--no-plot"], "--no-plot"),  # gone: a plot is written only when asked for
    (["anomaly", "{W}/missing", *M], "No such file"),
    (["anomaly", "{W}/empty.bin", *M], "empty"),
    (["anomaly", "{W}/data", *M], "is a folder"),
    # patches
    (["patches", "{W}/text.txt"], "--model"),
    (PATCHES, "has no patcher: give --scheme"),  # a flat model is only an entropy model
    ([*PATCHES, "--scheme", "bpe"], "invalid choice: 'bpe'"),
    ([*PATCHES, "--scheme", "entropy", "--threshold", "nan"], "--threshold"),
    ([*PATCHES, "--scheme", "entropy", "--threshold", "9"], "--threshold: must be a number in [-8, 8]"),
    ([*PATCHES, "--scheme", "space", "--min-patch-size", "0"], "--min-patch-size"),
    ([*PATCHES, "--scheme", "space", "--max-patch-size", "-1"], "--max-patch-size"),
    ([*PATCHES, "--scheme", "space", "--min-patch-size", "8", "--max-patch-size", "4"],
     "min_patch_size must not exceed max_patch_size (4), got 8"),  # library
    ([*PATCHES, "--scheme", "space", "--max-patch-size", "100000"], "max_patch_size"),  # library: its range
    ([*PATCHES, "--scheme", "fixed", "--stride", "0"], "--stride"),
    ([*PATCHES, "--scheme", "entropy", "--calibrate", "0.5"], "--calibrate"),
    ([*PATCHES, "--scheme", "entropy", "--calibrate", "4", "--threshold", "2"], "--threshold or --calibrate"),
    ([*PATCHES, "--scheme", "fixed", "--calibrate", "4"], "entropy or monotonic"),  # library
    ([*PATCHES, "--scheme", "entropy", "--calibrate", "500"], "must be in"),  # library: out of reach
    ([*PATCHES, "--scheme", "space", "--plot", "{W}/existing.txt"], "exists (use --force to overwrite)"),
    ([*PATCHES, "--scheme", "space", "--plot", "{W}/data"], "is a folder"),
    ([*PATCHES, "--scheme", "space", "--plot-bytes", "0"], "--plot-bytes"),
    (["patches", "{W}/missing", *M, "--scheme", "space"], "No such file"),
    (["patches", "{W}/empty.bin", *M, "--scheme", "space"], "empty"),
    (["patches", "{W}/text.txt", "--model", "{W}/absent", "--scheme", "space"], "not found"),
    (["patches", "{W}/text.txt", "--model", "{W}/notjson", "--scheme", "space"], "config.json"),
    # demo
    ([*DEMO, "--steps", "0"], "--steps"),
    ([*DEMO, "--steps", "-1"], "--steps"),
    ([*DEMO, "--minutes", "1"], "--minutes"),  # gone: the demo runs a fixed number of steps
    ([*DEMO, "--device", "mps"], "mps"),
    (["demo", "--out", "{W}/data"], "not an earlier demo run"),
    (["demo", "--out", "{W}/existing.txt"], "is a file"),
    (["demo", "--out", "{W}/existing.txt/demo"], "is a file"),
    # train --task classify / --init-from
    ([*TRAIN, "--task", "sorting"], "invalid choice: 'sorting'"),
    ([*TRAIN, "--task", "classify"], "outside class folders"),  # files directly in DATA: no class
    (["train", "--task", "classify", "{W}/text.txt", "--out", "{T}/run"], "cannot tell the class"),
    (["train", "--task", "classify", "{W}/nothing", "--out", "{T}/run"], "no class folders"),
    (["train", "--task", "classify", "{W}/empty_class", "--out", "{T}/run"], "holds no usable files"),
    (["train", "--task", "classify", "{W}/classes", "--out", "{T}/run", "--augment", "mirror"], "not a 24-bit BMP"),
    (["train", "--task", "classify", "{W}/classes", "--out", "{T}/run", "--augment", "shift,delay"], "not a 24-bit BMP"),
    (["train", "{W}/data", "--out", "{T}/run", "--augment", "rotate"], "unknown augmentation 'rotate'"),
    (["train", "--task", "classify", "{W}/one_class", "--out", "{T}/run"], "at least two classes"),
    (["train", "--task", "classify", "{W}/no_label.csv", "--out", "{T}/run"], "row 2: expected path,label"),
    (["train", "--task", "classify", "{W}/missing_file.csv", "--out", "{T}/run"], "row 3: file not found"),
    (["train", "--task", "classify", "fsdd:valid", "--out", "{T}/run"], "OMNIBYTE_DATA"),
    ([*TRAIN, "--init-from", "{W}/absent"], "not found"),
    ([*TRAIN, "--init-from", "{W}/model", "--preset", "small"], "leave out --preset and --set"),
    ([*TRAIN, "--init-from", "{W}/model", "--arch", "patch"], "holds a flat model"),
    # classify
    (["classify", "{W}/text.txt"], "--model"),
    (["classify", "{W}/text.txt", *M], "not a classifier"),
    (["classify", "{W}/missing", "--model", "{W}/classifier"], "missing"),
    (["classify", "{W}/text.txt", "--model", "{W}/classifier", "--batch-size", "0"], "--batch-size"),
    (["generate", "--model", "{W}/classifier"], "holds a classifier"),
    (["eval", "{W}/data", "--model", "{W}/classifier"], "outside class folders"),
    (["eval", "{W}/other_classes", "--model", "{W}/classifier"], "classes not known to this classifier: x, y"),
    (["eval", "{W}/classes", "--model", "{W}/classifier", "--confusion", "{W}/existing.txt"], "exists"),
    ([*EVAL, "--confusion", "{T}/c.png"], "--confusion is for classifiers"),
    # media
    (["media"], "ACTION"),
    (["media", "to-bmp", "{W}/text.txt"], "--out"),
    (["media", "to-bmp", "{W}/text.txt", "-o", "{T}/media"], "not an image"),
    (["media", "to-wav", "{W}/text.txt", "-o", "{T}/media"], "not a PCM WAV file"),
    (["media", "to-bmp", "{W}/missing.png", "-o", "{T}/media"], "cannot read"),
    (["media", "to-bmp", "{W}/pictures/pic.png", "-o", "{W}/pictures"], "pic.bmp exists (use --force"),
    (["media", "to-bmp", "{W}/pictures/pic.png", "-o", "{W}/existing.txt"], "is a file, not a folder"),
    (["media", "to-bmp", "{W}/pictures/pic.png", "{W}/pictures/pic.bmp", "-o", "{T}/media"], "would both be written"),
    # compress / decompress: the options shared with every command
    (["compress", "{W}/text.txt"], "the built-in model is not installed"),
    (["generate", "--device", "cpu"], "the built-in model is not installed"),
    (["compress", "{W}/text.txt", *M, "--device", "mps"], "mps"),
    (["decompress", "{W}/text.txt.omb", *M, "--device", "tpu"], "tpu"),
    # convert: the model must be a conversion model and the input of the kind it converts
    ([*CONVERT, "{W}/tune.abc"], "-o"),
    (["convert", "{W}/tune.abc", "-o", "{T}/out.mid"], "--model"),
    ([*CONVERT, "{W}/tune.mid", "-o", "{T}/out.mid"], "is MIDI (it starts with MThd), but this model converts ABC"),
    ([*CONVERT, "{W}/text.txt", "-o", "{T}/out.mid"], "has a key field"),
    ([*CONVERT, "{W}/empty.bin", "-o", "{T}/out.mid"], "is empty"),
    ([*CONVERT, "{W}/data", "-o", "{T}/out.mid"], "is a folder"),
    ([*CONVERT, "{W}/missing", "-o", "{T}/out.mid"], "missing"),
    (["convert", *M, "{W}/tune.abc", "-o", "{T}/out.mid"], "not a conversion model (it was trained for the 'next-byte'"),
    (["convert", "--model", "{W}/absent", "{W}/tune.abc", "-o", "{T}/out.mid"], "not found"),
    ([*CONVERT, "{W}/tune.abc", "-o", "{W}/existing.txt"], "exists (use --force to overwrite)"),
    ([*CONVERT, "{W}/tune.abc", "-o", "{W}/data"], "is a folder"),
    ([*CONVERT, "{W}/tune.abc", "-o", "{T}/missing/out.mid"], "does not exist"),
    ([*CONVERT, "{W}/tune.abc", "-o", "{T}/out.mid", "--max-output", "0"], "--max-output"),
    ([*CONVERT, "{W}/tune.abc", "-o", "{T}/out.mid", "--device", "mps"], "mps"),
    (["train", "--task", "convert", "{W}/data", "--out", "{T}/run"], "not a paired record"),
    # datasets: every option checked, the output folder before any work
    (["datasets"], "DATASET"),
    (["datasets", "mnist", "--out", "{T}/d"], "invalid choice: 'mnist'"),
    (CPU_DATA, "--records"),
    ([*CPU_DATA, "--records", "0"], "--records"),
    ([*CPU_DATA, "--records", "ten"], "--records"),
    ([*CPU_DATA, "--records", "5", "--test-records", "-1"], "--test-records"),
    ([*CPU_DATA, "--records", "5", "--min-length", "0"], "--min-length"),
    ([*CPU_DATA, "--records", "5", "--max-length", "5000"], "--max-length"),
    ([*CPU_DATA, "--records", "5", "--min-length", "5", "--max-length", "2"], "--min-length 5 is above --max-length 2"),
    ([*CPU_DATA, "--records", "5", "--seed", "-1"], "--seed"),
    (["datasets", "cpu", "--records", "5"], "--out"),
    (["datasets", "cpu", "--records", "5", "--out", "{W}/existing.txt"], "is a file, not a folder"),
    (["datasets", "cpu", "--records", "5", "--out", "{W}/data"], "is not empty (use --force"),
    (["datasets", "nottingham", "--out", "{T}/pairs"], "--direction"),
    (["datasets", "nottingham", "--direction", "abc2abc", "--out", "{T}/pairs"], "abc2abc"),
    ([*NOTTINGHAM, "--data", "{W}/nothing"], "is not the Nottingham folder"),
    ([*NOTTINGHAM, "--data", "{W}/missing"], "is not the Nottingham folder"),
    ([*NOTTINGHAM, "--test-fraction", "1"], "--test-fraction"),
    ([*NOTTINGHAM, "--test-fraction", "0"], "--test-fraction"),
    ([*NOTTINGHAM, "--midi", "drums"], "drums"),
    # answer: a question answering model, an image Pillow reads, a question
    ([*ANSWER, "--question", "how many circles are there?"], "--image"),
    ([*ANSWER, "--image", "{W}/pictures/pic.png"], "--question"),
    (["answer", "--image", "{W}/pictures/pic.png", "--question", "how many?"], "--model"),
    ([*ANSWER, "--image", "{W}/pictures/pic.png", "--question", "  "], "the question is empty"),
    ([*ANSWER, "--image", "{W}/pictures/pic.png", "--question", "wie viele Kreise gibt es ä?"],
     "printable ASCII"),
    ([*ANSWER, "--image", "{W}/missing.png", "--question", "how many?"], "missing.png"),
    ([*ANSWER, "--image", "{W}/text.txt", "--question", "how many?"], "not an image Pillow can read"),
    ([*ANSWER, "--image", "{W}/data", "--question", "how many?"], "is a folder"),
    (["answer", *M, "--image", "{W}/pictures/pic.png", "--question", "how many?"],
     "not a question answering model (it was trained for the 'next-byte'"),
    (["answer", "--model", "{W}/converter", "--image", "{W}/pictures/pic.png", "--question", "how many?"],
     "not a question answering model (it was trained for the 'convert'"),
    (["train", "--task", "answer", "{W}/data", "--out", "{T}/run"], "not a paired record"),
    (VQA_DATA, "--scenes"),
    ([*VQA_DATA, "--scenes", "0"], "--scenes"),
    ([*VQA_DATA, "--scenes", "2", "--size", "48"], "--size"),
    ([*VQA_DATA, "--scenes", "2", "--encoding", "gif"], "gif"),
    ([*VQA_DATA, "--scenes", "2", "--encoding", "all", "gif"], "gif"),
    ([*VQA_DATA, "--scenes", "2", "--size", "32", "16"], "--size"),
    ([*VQA_DATA, "--scenes", "2", "--encoding"], "--encoding"),
    (["train", "--task", "answer", "{W}/vqa-formats", "--out", "{T}/run"],
     "holds Shapes-VQA in 2 image formats; train on one of its folders"),
    ([*VQA_DATA, "--scenes", "2", "--test-scenes", "0"], "--test-scenes"),
    ([*VQA_DATA, "--scenes", "2", "--seed", "-1"], "--seed"),
    (["datasets", "shapes-vqa", "--scenes", "2", "--out", "{W}/data"], "is not empty (use --force"),
    # compress --adapt and --model none
    (["compress", "{W}/text.txt", *M, "--adapt", "--adapt-lr", "0"], "--adapt-lr: must be a number in (0, 1]"),
    (["compress", "{W}/text.txt", *M, "--adapt", "--adapt-lr", "nan"], "--adapt-lr"),
    (["compress", "{W}/text.txt", *M, "--adapt", "--adapt-lr", "2"], "--adapt-lr"),
    (["compress", "{W}/text.txt", *M, "--adapt", "--adapt-lr", "fast"], "--adapt-lr"),
    (["compress", "{W}/text.txt", *M, "--adapt", "--adapt-block", "0"], "--adapt-block"),
    (["compress", "{W}/text.txt", *M, "--adapt-lr", "0.001"], "--adapt-lr sets up --adapt: add --adapt"),
    (["compress", "{W}/text.txt", *M, "--adapt-always"], "--adapt-always sets up --adapt: add --adapt"),
    (["compress", "{W}/text.txt", *M, "--no-mix"], "--no-mix sets up --adapt: add --adapt"),
    (["compress", "{W}/text.txt", *M, "--mix"], "--mix sets up --adapt: add --adapt"),
    (["compress", "{W}/text.txt", "--model", "none"], "--model none needs --preset"),
    (["compress", "{W}/text.txt", "--model", "none", "--preset", "enormous"], "unknown preset 'enormous'"),
    (["compress", "{W}/text.txt", "--model", "none", "--preset", "tiny", "--arch", "gpt"],
     "unknown architecture 'gpt'"),
    (["compress", "{W}/text.txt", "--model", "none", "--preset", "tiny", "--seed", "-1"], "--seed"),
    (["compress", "{W}/text.txt", *M, "--preset", "tiny"], "--preset builds a model from scratch"),
    (["compress", "{W}/text.txt", *M, "--seed", "3"], "--seed builds a model from scratch"),
    (["decompress", "{W}/trained.omb"], "was compressed with a trained model: name it with --model"),
    # compress --numerics integer
    (["compress", "{W}/text.txt", *M, "--numerics", "exact"], "--numerics: invalid choice"),
    (["compress", "{W}/text.txt", *M, "--numerics", "integer", "--adapt"], "--numerics integer does not adapt"),
    (["compress", "{W}/text.txt", "--model", "none", "--preset", "tiny", "--numerics", "integer"],
     "--numerics integer does not adapt"),
    (["compress", "{W}/text.txt", *M, "--numerics", "integer", "--portable"], "drop --portable"),
    (["compress", "{W}/text.txt", *M, "--numerics", "integer", "--dtype", "bfloat16"], "has no dtype"),
    (["compress", "{W}/text.txt", "--model", "{W}/patch_model", "--numerics", "integer"],
     "integer numerics supports the flat family only"),
    # streams made with the built-in model: decompress needs no --model, but the model must be there
    (["decompress", "{W}/builtin.omb"], "the built-in model is not installed"),
    (["decompress", "{W}/unknown-builtin.omb"], "made with the built-in model 'large', which this build does not have"),
    (["decompress", "{W}/unknown-builtin.omb", "{W}/builtin.omb"], "built-in model 'large'"),
]


def case_id(case: tuple[list[str], str]) -> str:
    text = " ".join(case[0]).replace("{W}/", "").replace("{T}/", "")
    return text.encode("ascii", "backslashreplace").decode() or "no-arguments"


@pytest.mark.parametrize("argv, fragment", CLI_CASES, ids=[case_id(case) for case in CLI_CASES])
def test_cli_refuses_in_one_line_and_leaves_every_file_alone(argv, fragment, world, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # default outputs would land here: the snapshot sees them
    monkeypatch.setenv("OMNIBYTE_BUILTIN_MODEL", str(world / "nothing"))  # no built-in weights, installed or not
    args = [arg.replace("{W}", str(world)).replace("{T}", str(work)) for arg in argv]
    assert_refused(args, fragment, world, work, capsys)


def test_the_catalogue_covers_every_subcommand():
    from omnibyte.cli import COMMAND_MODULES

    commands = {case[0][0] for case in CLI_CASES if case[0] and not case[0][0].startswith("-")}
    assert {"train", "eval", "generate", "info", "export", "demo", "detect", "anomaly", "compress", "patches",
            "classify", "media", "convert", "answer", "datasets"} <= commands
    assert len(COMMAND_MODULES) == 15 and len(CLI_CASES) + len(API_CASES) >= 100


# ---- real processes: closed, full and cut-off streams ----------------------------------------

def omnibyte_process(*args: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omnibyte.cli", *args], capture_output=True, **options)


def assert_one_line(result: subprocess.CompletedProcess, code: int, fragment: str) -> None:
    error = result.stderr.decode(errors="replace")
    assert result.returncode == code, error
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error, error
    assert error.startswith("omnibyte: error:") and fragment in error, error


def test_real_process_bad_options_are_one_line(world):
    assert_one_line(omnibyte_process("eval", str(world / "data"), "--model", str(world / "model"),
                                     "--batch-size", "-1"), 2, "--batch-size")
    assert_one_line(omnibyte_process("generate", "--model", str(world / "model"), "--temperature", "nan"),
                    2, "--temperature")
    assert_one_line(omnibyte_process("eval", str(world / "data"), "--model", str(world / "model"),
                                     "--device", "mps"), 2, "mps")


def test_full_disk_on_stdout_is_one_line(world):
    with open("/dev/full", "wb") as full:
        result = subprocess.run([sys.executable, "-m", "omnibyte.cli", "info", "--model", str(world / "model")],
                                stdout=full, stderr=subprocess.PIPE)
    assert_one_line(result, 1, "No space left on device")
    with open("/dev/full", "wb") as full:  # streamed bytes, flushed one by one
        result = subprocess.run([sys.executable, "-m", "omnibyte.cli", "generate", "--model", str(world / "model"),
                                 "--max-bytes", "20", "--device", "cpu"], stdout=full, stderr=subprocess.PIPE)
    assert_one_line(result, 1, "No space left on device")


def test_closed_stdin_and_stdout_are_one_line(world):
    closed_stdin = subprocess.run(f'"{sys.executable}" -m omnibyte.cli detect - <&-', shell=True,
                                  capture_output=True)
    assert_one_line(closed_stdin, 1, "stdin is closed")
    closed_stdout = subprocess.run(f'"{sys.executable}" -m omnibyte.cli info --model "{world / "model"}" >&-',
                                   shell=True, stderr=subprocess.PIPE)
    assert_one_line(closed_stdout, 1, "stdout is closed")


def test_broken_pipe_is_one_line(world):
    process = subprocess.Popen([sys.executable, "-m", "omnibyte.cli", "generate", "--model", str(world / "model"),
                                "--max-bytes", "120", "--device", "cpu", "--seed", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert len(process.stdout.read(1)) == 1  # the first byte arrives; then the reader goes away
    process.stdout.close()
    error = process.stderr.read().decode()
    assert process.wait() == 1, error
    assert len(error.strip().splitlines()) == 1 and "broken pipe" in error and "Traceback" not in error


# ---- the Python API ---------------------------------------------------------------------------

def tiny_model():
    torch.manual_seed(0)
    return omnibyte.build_model("flat", "tiny", max_sequence_length=64)


API_CASES: list[tuple[str, object, type[BaseException]]] = [
    # generate: arguments that used to be ignored or to crash
    ("generate temperature nan", lambda: tiny_model().generate(b"a", 4, temperature=math.nan), ValueError),
    ("generate temperature -1", lambda: tiny_model().generate(b"a", 4, temperature=-1.0), ValueError),
    ("generate top_k 0", lambda: tiny_model().generate(b"a", 4, top_k=0), ValueError),
    ("generate top_k -3", lambda: tiny_model().generate(b"a", 4, top_k=-3), ValueError),
    ("generate top_p 2", lambda: tiny_model().generate(b"a", 4, top_p=2.0), ValueError),
    ("generate top_p 0", lambda: tiny_model().generate(b"a", 4, top_p=0.0), ValueError),
    ("generate top_p nan", lambda: tiny_model().generate(b"a", 4, top_p=math.nan), ValueError),
    ("generate max_new_bytes -1", lambda: tiny_model().generate(b"a", -1), ValueError),
    ("generate past the context", lambda: tiny_model().generate(b"a" * 60, 10), ValueError),
    ("generate no prompts", lambda: tiny_model().generate([], 4), ValueError),
    ("generate seeds per row", lambda: tiny_model().generate([b"a", b"b"], 4, seed=[1]), ValueError),
    # build_model: overrides are checked, and errors name the field (library)
    ("build unknown arch", lambda: omnibyte.build_model("lstm"), ValueError),
    ("build unknown preset", lambda: omnibyte.build_model("flat", "enormous"), ValueError),
    ("build unknown field", lambda: omnibyte.build_model("flat", "tiny", no_such_field=1), ValueError),
    ("build hidden_size -64", lambda: omnibyte.build_model("flat", "tiny", hidden_size=-64), ValueError),
    ("build hidden_size '64'", lambda: omnibyte.build_model("flat", "tiny", hidden_size="64"), ValueError),
    ("build hidden_size 64.5", lambda: omnibyte.build_model("flat", "tiny", hidden_size=64.5), ValueError),
    ("build num_query_heads 0", lambda: omnibyte.build_model("flat", "tiny", num_query_heads=0), ValueError),
    ("build qk_norm 'no'", lambda: omnibyte.build_model("flat", "tiny", qk_norm="no"), ValueError),
    ("build norm_eps nan", lambda: omnibyte.build_model("flat", "tiny", norm_eps=math.nan), ValueError),
    ("build context 1e9", lambda: omnibyte.build_model("flat", "tiny", max_sequence_length=10**9), ValueError),
    ("build num_layers 1e6", lambda: omnibyte.build_model("flat", "tiny", num_layers=10**6), ValueError),
    # scoring and apps: sizes that would silently report nothing
    ("score batch_size -1", lambda: __import__("omnibyte.scoring", fromlist=["x"]).score_bytes(
        tiny_model(), b"abc", batch_size=-1), ValueError),
    ("score context 0", lambda: __import__("omnibyte.scoring", fromlist=["x"]).score_bytes(
        tiny_model(), b"abc", context=0), ValueError),
    ("anomaly threshold nan", lambda: __import__("omnibyte.apps.anomaly", fromlist=["x"]).analyze(
        b"abc", tiny_model(), threshold=math.nan), ValueError),
    ("anomaly top_k 0", lambda: __import__("omnibyte.apps.anomaly", fromlist=["x"]).analyze(
        b"abc", tiny_model(), top_k=0), ValueError),
    # patchers (omnibyte.models.blt.patching): configs name the field, entropy schemes need entropies
    ("patching min > max", lambda: _patching().PatchingConfig(min_patch_size=5, max_patch_size=2), ValueError),
    ("patching scheme bpe", lambda: _patching().PatchingConfig(scheme="bpe"), ValueError),
    ("patching threshold inf", lambda: _patching().PatchingConfig(threshold=math.inf), ValueError),
    ("patch_starts without entropies", lambda: _patching().patch_starts(
        _patching().PatchingConfig(), torch.zeros(1, 4, dtype=torch.long)), ValueError),
    ("patch_starts 1-d tokens", lambda: _patching().patch_starts(
        _patching().PatchingConfig(scheme="space"), torch.zeros(4, dtype=torch.long)), ValueError),
    ("calibrate space scheme", lambda: _patching().calibrate_threshold(
        _patching().PatchingConfig(scheme="space"), torch.rand(1, 50), 3.0), ValueError),
    # conversion and its data
    ("convert batch_size 0", lambda: __import__("omnibyte.apps.convert", fromlist=["x"]).convert_sources(
        tiny_model(), [b"abc"], batch_size=0), ValueError),
    ("convert max_new_bytes 0", lambda: __import__("omnibyte.apps.convert", fromlist=["x"]).convert_sources(
        tiny_model(), [b"abc"], max_new_bytes=0), ValueError),
    ("convert task kind", lambda: __import__("omnibyte.tasks", fromlist=["x"]).ConvertTask("abc", "jpeg"), ValueError),
    ("cpu records min > max", lambda: list(__import__("omnibyte.cpusim", fromlist=["x"]).generate_records(
        1, 0, min_length=5, max_length=2)), OmnibyteError),
    ("cpu records count -1", lambda: list(__import__("omnibyte.cpusim", fromlist=["x"]).generate_records(
        -1, 0)), OmnibyteError),
    ("nottingham direction", lambda: __import__("omnibyte.data.nottingham", fromlist=["x"]).nottingham_records(
        ".", "abc2abc"), OmnibyteError),
]


def _patching():
    from omnibyte.models.blt import patching

    return patching


@pytest.mark.parametrize("name, call, error", API_CASES, ids=[case[0] for case in API_CASES])
def test_python_api_refuses_bad_arguments(name, call, error):
    with pytest.raises(error):
        call()


LOAD_CASES = ["absent", "text.txt", "nothing", "truncated", "notjson", "foreign", "future", "mismatched",
              "noweights", "float_hidden", "zero_heads", "negative_hidden", "huge_hidden", "huge_context",
              "string_qk_norm", "string_hidden"]


@pytest.mark.parametrize("folder", LOAD_CASES)
def test_load_model_refuses_bad_folders_in_one_line(folder, world):
    with pytest.raises(OmnibyteError) as refused:
        omnibyte.load_model(world / folder)
    assert "\n" not in str(refused.value) and str(refused.value)


def test_evaluate_refuses_bad_sizes_before_reading(world):
    from omnibyte.evaluate import evaluate_paths

    with pytest.raises(ValueError, match="batch_size"):
        evaluate_paths(tiny_model(), [world / "data"], batch_size=0, progress=False)
    with pytest.raises(ValueError, match="context"):
        evaluate_paths(tiny_model(), [world / "data"], context=-5, progress=False)


def test_non_utf8_prompt_is_used_byte_for_byte(world, tmp_path):
    """A prompt argument that is not UTF-8 reaches the model as the bytes given."""
    out = tmp_path / "sample.bin"
    argv = [sys.executable, "-m", "omnibyte.cli", "generate", "--model", str(world / "model"), "--device", "cpu",
            "--prompt", b"\xff\xfe caf\xe9".decode("utf-8", "surrogateescape"), "--max-bytes", "4", "--seed", "0",
            "-o", str(out)]
    result = subprocess.run([os.fsencode(arg) for arg in argv], capture_output=True)
    assert result.returncode == 0, result.stderr
    model = omnibyte.load_model(world / "model")
    assert out.read_bytes() == model.generate(b"\xff\xfe caf\xe9", 4, seed=0)

"""Training: learning, checkpoints, exact resume."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from omnibyte import build_model, load_model
from omnibyte.data import ByteCorpus, Document
from omnibyte.errors import OmnibyteError
from omnibyte.train.schedule import learning_rate
from omnibyte.train.trainer import TrainConfig, Trainer
from helpers import fox_corpus


def small_config(**overrides) -> TrainConfig:
    values = dict(seq_len=64, batch_size=8, steps=20, lr=3e-3, eval_every=10, eval_windows=8,
                  save_every=5, log_every=5, device="cpu")
    return TrainConfig(**{**values, **overrides})


def test_schedule_warms_up_then_decays_to_floor():
    rates = [learning_rate(step, 1.0, 10, 100, 0.1) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:]))
    assert learning_rate(100, 1.0, 10, 100, 0.1) == pytest.approx(0.1)


def test_loss_falls_below_0_1_bits_per_byte_on_repetitive_text(tmp_path):
    torch.manual_seed(0)
    model = build_model("flat", "tiny")
    train, valid = fox_corpus().split(0.1)
    trainer = Trainer(model, train, small_config(steps=300, eval_every=100), tmp_path, valid, progress=False)
    result = trainer.fit()
    assert result.val_bits_per_byte < 0.1
    assert result.train_bits_per_byte < 0.1
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["bits_per_byte"] > 4  # started near uniform (8 bits)
    assert (tmp_path / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "best" / "model.safetensors").exists()


class Crash(Exception):
    pass


def crash_at(step: int):
    def callback(trainer: Trainer) -> None:
        if trainer.step == step:
            raise Crash()
    return callback


def test_killed_and_resumed_run_ends_with_identical_weights(tmp_path):
    corpus = fox_corpus()
    config = small_config(steps=17, save_every=5, grad_accum=2)

    torch.manual_seed(0)
    straight = Trainer(build_model("flat", "tiny"), corpus, config, tmp_path / "straight", progress=False)
    straight.fit()

    torch.manual_seed(0)
    crashed = Trainer(build_model("flat", "tiny"), corpus, config, tmp_path / "crashed", progress=False)
    crashed.callbacks.append(crash_at(12))  # dies after the step-10 checkpoint, mid-way to the next
    with pytest.raises(Crash):
        crashed.fit()

    torch.manual_seed(123)  # a fresh process: different init, restored from the checkpoint
    resumed = Trainer(build_model("flat", "tiny"), corpus, config, tmp_path / "crashed", progress=False)
    result = resumed.fit(resume=True)
    assert result.step == 17
    expected = load_file(str(tmp_path / "straight" / "model.safetensors"))
    actual = load_file(str(tmp_path / "crashed" / "model.safetensors"))
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=0, rtol=0)


def test_new_run_refuses_to_overwrite_and_resume_refuses_other_model(tmp_path):
    corpus = fox_corpus()
    Trainer(build_model("flat", "tiny"), corpus, small_config(steps=5), tmp_path, progress=False).fit()
    with pytest.raises(OmnibyteError, match="--resume"):
        Trainer(build_model("flat", "tiny"), corpus, small_config(steps=5), tmp_path, progress=False).fit()
    other = build_model("flat", "tiny", num_layers=3)
    with pytest.raises(OmnibyteError, match="different model"):
        Trainer(other, corpus, small_config(steps=10), tmp_path, progress=False).fit(resume=True)


def test_run_records_its_task_and_resumes_states_saved_before_tasks(tmp_path):
    corpus = fox_corpus()
    Trainer(build_model("flat", "tiny"), corpus, small_config(steps=5), tmp_path, progress=False).fit()
    path = tmp_path / "trainer_state.safetensors"
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata()
    state = json.loads(metadata["trainer"])
    assert state["task"] == {"name": "next-byte"}
    # rewrite the state as versions before tasks wrote it: no task anywhere
    del state["task"]
    document = json.loads(metadata["omnibyte"])
    document.pop("task", None)
    metadata.update(trainer=json.dumps(state), omnibyte=json.dumps(document))
    save_file(load_file(str(path)), str(path), metadata=metadata)
    result = Trainer(build_model("flat", "tiny"), corpus, small_config(steps=8), tmp_path,
                     progress=False).fit(resume=True)
    assert result.step == 8


def test_early_stopping_stops_when_validation_stalls(tmp_path):
    corpus = fox_corpus()
    train, valid = corpus.split(0.1)
    config = small_config(steps=400, lr=0.0 + 1e-9, eval_every=2, patience=2)  # lr ~ 0: no progress
    result = Trainer(build_model("flat", "tiny"), train, config, tmp_path, valid, progress=False).fit()
    assert result.stopped_early and result.step < 400


def test_saved_model_reloads_with_identical_logits(tmp_path):
    model = build_model("flat", "tiny")
    Trainer(model, fox_corpus(), small_config(steps=3), tmp_path, progress=False).fit()
    loaded = load_model(tmp_path)
    tokens = torch.randint(0, 257, (2, 30))
    model.eval()
    torch.testing.assert_close(loaded(tokens), model(tokens), atol=0, rtol=0)

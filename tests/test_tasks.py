"""Tasks: the trainer trains whatever ``Task`` it is given through one unchanged loop."""
from __future__ import annotations

import json
import math
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from omnibyte import build_model
from omnibyte.data import Batch, WindowSampler, iter_eval_windows
from omnibyte.errors import OmnibyteError
from omnibyte.models.serialization import load_model
from omnibyte.tasks import TASKS, NextByteTask, Task, load_task, register_task, task_from_dict
from omnibyte.train import checkpoint
from omnibyte.train.trainer import TrainConfig, Trainer
from helpers import Crash, crash_at, fox_corpus


def small_config(**overrides) -> TrainConfig:
    values = dict(seq_len=32, batch_size=16, steps=40, lr=3e-3, eval_every=20, eval_windows=16,
                  save_every=10, log_every=5, device="cpu")
    return TrainConfig(**{**values, **overrides})


# ---- a toy classification task, defined only here ----------------------------------------

def with_even_labels(batch: Batch, seed: int) -> Batch:
    """Half the rows (chosen by ``seed``) get every byte rounded down to even: label 1."""
    labels = torch.randint(0, 2, (batch.tokens.shape[0],), generator=torch.Generator().manual_seed(seed))
    even = batch.tokens - batch.tokens % 2  # BOS (256) is even already
    tokens = torch.where(labels.bool().unsqueeze(1), even, batch.tokens)
    return Batch(tokens, batch.targets, batch.mask, batch.doc_ids, labels)


class EvenBatches:
    """Next-byte windows relabelled by ``with_even_labels``; a pure function of the index."""

    def __init__(self, windows: WindowSampler, seed: int):
        self.windows, self.seed = windows, seed

    def batch(self, index: int) -> Batch:
        return with_even_labels(self.windows.batch(index), self.seed * 1_000_003 + index)


@register_task
class AllEvenTask(Task):
    """Is every byte of the window even? A linear head on the model's pooled trunk."""

    name: ClassVar[str] = "test-all-even"
    objective: ClassVar[str] = "loss"
    unused_parameters: ClassVar[bool] = True  # the model's byte head gets no gradient

    def __init__(self, hidden_size: int):
        self.hidden_size = hidden_size
        self.head = nn.Linear(hidden_size, 2)

    def modules(self) -> dict[str, nn.Module]:
        return {"head": self.head}

    def to_dict(self) -> dict:
        return {"name": self.name, "hidden_size": self.hidden_size}

    def logits(self, model, batch: Batch) -> torch.Tensor:
        return self.head(model.pool(model.encode(batch.tokens), batch.mask)).float()

    def loss(self, model, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(self.logits(model, batch), batch.labels)

    def metrics(self, model, batch: Batch) -> dict[str, float]:
        logits = self.logits(model, batch)
        return {"nats": float(F.cross_entropy(logits, batch.labels, reduction="sum")),
                "correct": float((logits.argmax(-1) == batch.labels).sum()),
                "rows": float(len(batch.labels))}

    def summarize(self, totals: dict[str, float]) -> dict[str, float]:
        rows = max(totals["rows"], 1.0)
        return {"loss": totals["nats"] / rows, "accuracy": totals["correct"] / rows}

    def train_batches(self, corpus, seq_len, batch_size, seed):
        return EvenBatches(WindowSampler(corpus, seq_len, batch_size, seed=seed), seed)

    def eval_batches(self, corpus, seq_len, batch_size):
        for index, batch in enumerate(iter_eval_windows(corpus, seq_len, batch_size)):
            yield with_even_labels(batch, -1 - index)  # fixed labels, apart from the training ones


def read_records(path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


# ---- the toy task trains through the unchanged loop ------------------------------------------

def test_a_classification_task_trains_through_the_trainer(tmp_path):
    torch.manual_seed(0)
    model = build_model("flat", "tiny")
    task = AllEvenTask(model.hidden_size)
    initial_head = task.head.weight.detach().clone()
    train, valid = fox_corpus().split(0.1)
    result = Trainer(model, train, small_config(), tmp_path, valid, task=task, progress=False).fit()

    records = read_records(tmp_path)
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < 0.5 * losses[0]  # started near ln 2, learnt the rule
    assert {"val_loss", "val_accuracy"} <= set(records[-1])
    assert result.val_metrics["accuracy"] > 0.9
    assert result.val_bits_per_byte == result.val_metrics["loss"]  # the task's objective
    assert not torch.equal(task.head.weight.detach(), initial_head)
    state = checkpoint.load_trainer_state(tmp_path).state
    assert state["task"] == {"name": "test-all-even", "hidden_size": model.hidden_size}
    # the exported model directory records the task and its head: a classifier can be reloaded
    loaded_task, loaded_model = load_task(tmp_path), load_model(tmp_path)
    assert isinstance(loaded_task, AllEvenTask) and loaded_task.hidden_size == model.hidden_size
    torch.testing.assert_close(loaded_task.head.weight, task.head.weight.detach(), atol=0, rtol=0)
    batch = next(iter(task.eval_batches(valid, 32, 4)))
    with torch.no_grad():
        torch.testing.assert_close(loaded_task.logits(loaded_model, batch), task.logits(model.eval(), batch))


def run(out_dir, seed: int, resume: bool = False, crash: int | None = None) -> AllEvenTask:
    """Train the toy task from a fresh model and head initialised from ``seed``."""
    torch.manual_seed(seed)
    model = build_model("flat", "tiny")
    task = AllEvenTask(model.hidden_size)
    trainer = Trainer(model, fox_corpus(), small_config(steps=17, eval_every=0, grad_accum=2),
                      out_dir, task=task, progress=False)
    if crash is not None:
        trainer.callbacks.append(crash_at(crash))
    trainer.fit(resume=resume)
    return task


def test_the_task_head_is_saved_and_restored_on_resume(tmp_path):
    straight = run(tmp_path / "straight", seed=0)
    with pytest.raises(Crash):
        run(tmp_path / "crashed", seed=0, crash=12)  # dies after the step-10 checkpoint
    resumed = run(tmp_path / "crashed", seed=123, resume=True)  # another init: all comes from disk
    for name, tensor in straight.head.state_dict().items():
        torch.testing.assert_close(resumed.head.state_dict()[name], tensor, atol=0, rtol=0)


def test_resuming_with_another_task_is_refused(tmp_path):
    model = build_model("flat", "tiny")
    Trainer(model, fox_corpus(), small_config(steps=2, eval_every=0), tmp_path, progress=False).fit()
    other = AllEvenTask(model.hidden_size)
    trainer = Trainer(build_model("flat", "tiny"), fox_corpus(), small_config(steps=4, eval_every=0),
                      tmp_path, task=other, progress=False)
    with pytest.raises(OmnibyteError, match="trained for task 'next-byte'") as error:
        trainer.fit(resume=True)
    assert "\n" not in str(error.value)


# ---- next-byte prediction -------------------------------------------------------------------

def test_next_byte_loss_is_the_model_loss():
    torch.manual_seed(0)
    model = build_model("flat", "tiny")
    batch = WindowSampler(fox_corpus(), 32, 4).batch(0)
    expected = model.loss(batch.tokens, batch.targets, batch.mask)
    torch.testing.assert_close(NextByteTask().loss(model, batch), expected, atol=0, rtol=0)
    assert NextByteTask().modules() == {}


def test_next_byte_validation_is_bits_per_byte_over_every_target(tmp_path):
    torch.manual_seed(0)
    model = build_model("flat", "tiny").eval()
    train, valid = fox_corpus().split(0.1)
    total_nats, total_bytes = 0.0, 0
    with torch.no_grad():
        for batch in iter_eval_windows(valid, 32, 16):
            losses = F.cross_entropy(model(batch.tokens).flatten(0, 1), batch.targets.flatten(), reduction="none")
            total_nats += float((losses * batch.mask.flatten()).sum())
            total_bytes += batch.num_targets
    config = small_config(eval_windows=0)  # every validation window
    trainer = Trainer(model, train, config, tmp_path, valid, progress=False)
    assert trainer.validate() == pytest.approx(total_nats / math.log(2) / total_bytes, rel=1e-9)
    assert trainer.validation_metrics() == {"bits_per_byte": trainer.validate()}


def test_batches_carry_labels_to_the_device():
    batch = Batch(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long),
                  torch.ones(2, 3, dtype=torch.bool), labels=torch.tensor([0, 1]))
    moved = batch.to("cpu")
    assert torch.equal(moved.labels, batch.labels)
    assert WindowSampler(fox_corpus(), 8, 2).batch(0).labels is None


# ---- the registry -----------------------------------------------------------------------------

def test_tasks_round_trip_through_their_description():
    assert isinstance(task_from_dict({"name": "next-byte"}), NextByteTask)
    assert task_from_dict(NextByteTask().to_dict()).to_dict() == {"name": "next-byte"}
    toy = task_from_dict(AllEvenTask(16).to_dict())
    assert isinstance(toy, AllEvenTask) and toy.hidden_size == 16
    assert TASKS["next-byte"] is NextByteTask


def test_unknown_or_malformed_tasks_are_rejected():
    with pytest.raises(ValueError, match="unknown task 'sentiment'.*next-byte"):
        task_from_dict({"name": "sentiment"})
    with pytest.raises(ValueError, match="'name'"):
        task_from_dict({"classes": 3})
    with pytest.raises(ValueError, match="invalid options"):
        task_from_dict({"name": "next-byte", "classes": 3})
    with pytest.raises(ValueError, match="already taken"):
        register_task(type("Impostor", (NextByteTask,), {}))

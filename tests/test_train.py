"""Training: learning, checkpoints, exact resume, runs that never lose work or crash on odd
input, crafted trainer states refused in one line."""
import json
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from omnibyte import build_model, load_model
from omnibyte.errors import OmnibyteError
from omnibyte.train import checkpoint
from omnibyte.train.schedule import learning_rate
from omnibyte.train.trainer import TrainConfig, Trainer
from helpers import Crash, crash_at, fox_corpus


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
    # the run's model is the best by validation, and says which step it is from
    assert json.loads((tmp_path / "config.json").read_text())["step"] == result.best_step
    assert result.best_step is not None
    assert (tmp_path / "best" / "model.safetensors").read_bytes() == (tmp_path / "model.safetensors").read_bytes()


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


# ---- no lost work, no crash on odd runs ------------------------------------------------------

def test_resuming_a_finished_run_says_so_and_a_larger_steps_continues(tmp_path):
    corpus = fox_corpus()
    train, valid = corpus.split(0.1)
    first = Trainer(build_model("flat", "tiny"), train, small_config(steps=6), tmp_path, valid, progress=False).fit()
    before = {path.name: path.stat().st_mtime_ns for path in tmp_path.iterdir()}
    again = Trainer(build_model("flat", "tiny"), train, small_config(steps=6), tmp_path, valid,
                    progress=False).fit(resume=True)
    assert again.already_finished and again.step == 6 and again.train_bits_per_byte is None
    assert again.summary() == (f"{tmp_path} already finished at step 6 (best validation "
                               f"{first.best_val_bits_per_byte:.4f} at step {first.model_step}); "
                               "nothing to do (pass a larger --steps to continue)")
    assert {path.name: path.stat().st_mtime_ns for path in tmp_path.iterdir()} == before  # untouched
    more = Trainer(build_model("flat", "tiny"), train, small_config(steps=9), tmp_path, valid,
                   progress=False).fit(resume=True)
    assert more.step == 9 and not more.already_finished
    assert "step 9: train" in more.summary()


def test_summary_never_formats_a_missing_value():
    from omnibyte.train.trainer import TrainResult

    result = TrainResult(3, None, None, None, False, Path("runs/x"))
    assert result.summary() == "step 3; model of step 3 saved to runs/x"


def test_save_every_zero_saves_at_the_end_only(tmp_path):
    saves = []
    trainer = Trainer(build_model("flat", "tiny"), fox_corpus(), small_config(steps=4, save_every=0), tmp_path,
                      progress=False)
    original = trainer.save
    trainer.save = lambda: (saves.append(trainer.step), original())
    assert trainer.fit().step == 4
    assert saves == [4]
    assert Trainer(build_model("flat", "tiny"), fox_corpus(), small_config(steps=6, save_every=0), tmp_path,
                   progress=False).fit(resume=True).step == 6


def test_out_that_is_a_file_or_below_one_is_one_line(tmp_path):
    (tmp_path / "file").write_text("mine")
    for out, message in [(tmp_path / "file", "is a file, not a folder"),
                         (tmp_path / "file" / "run", "is below .*file, which is a file")]:
        with pytest.raises(OmnibyteError, match=f"^--out .*{message}"):
            Trainer(build_model("flat", "tiny"), fox_corpus(), small_config(), out, progress=False)
    assert (tmp_path / "file").read_text() == "mine"


def test_the_run_keeps_the_best_model_where_load_model_looks(tmp_path):
    train, valid = fox_corpus().split(0.1)
    trainer = Trainer(build_model("flat", "tiny"), train, small_config(steps=8, eval_every=2, lr=3e-3), tmp_path,
                      valid, progress=False)
    reports = []
    trainer.callbacks.append(lambda run: reports.append((run.step, run.best_val, run.best_step)))
    result = trainer.fit()
    document = json.loads((tmp_path / "config.json").read_text())
    assert document["step"] == result.best_step == reports[-1][2]
    assert load_model(tmp_path).config == trainer.model.config
    state = checkpoint.load_trainer_state(tmp_path)
    assert state.state["step"] == 8 and state.state["best_step"] == result.best_step


def test_stale_temporaries_are_removed_when_a_run_starts(tmp_path):
    stale = tmp_path / ".model.safetensors.ab12cd34.tmp"
    stale.write_bytes(b"half a model")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    Trainer(build_model("flat", "tiny"), fox_corpus(), small_config(steps=2), tmp_path, progress=False).fit()
    assert not stale.exists()
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".tmp")]


# ---- crafted trainer states are one-line errors ------------------------------------------------

def rewrite_state(path, change_tensors=None, change_metadata=None):
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata()
    if change_tensors:
        change_tensors(tensors)
    if change_metadata:
        change_metadata(metadata)
    save_file(tensors, str(path), metadata=metadata)


def _set_json(key, field, value):
    def change(metadata):
        document = json.loads(metadata[key])
        if isinstance(document, dict):
            document[field] = value
        else:
            document[0][field] = value
        metadata[key] = json.dumps(document)
    return change


CRAFTED = [
    ("bad tensor name", lambda t: t.update({"nonsense": torch.zeros(1)}), None, "unexpected tensor 'nonsense'"),
    ("empty group", lambda t: t.update({"model.": torch.zeros(1)}), None, "unexpected tensor 'model.'"),
    ("optimizer index", lambda t: t.update({"optim.x.exp_avg": torch.zeros(1)}), None, "bad optimizer tensor name"),
    ("optimizer key", lambda t: t.update({"optim.3": torch.zeros(1)}), None, "bad optimizer tensor name"),
    ("optimizer far index", lambda t: t.update({"optim.999.exp_avg": torch.zeros(1)}), None,
     "optimizer state .* is for parameter 999"),
    ("optimizer shape", lambda t: t.update({"optim.0.exp_avg": torch.zeros(3)}), None, "exp_avg of parameter 0"),
    ("rng dtype", lambda t: t.update({"rng.torch": t["rng.torch"].float()}), None, "RNG state 'torch' must be a 1-D uint8"),
    ("rng shape", lambda t: t.update({"rng.torch": t["rng.torch"][:100]}), None, "RNG state 'torch' has 100 bytes"),
    ("rng missing", lambda t: t.pop("rng.torch"), None, "no RNG state"),
    ("model tensor", lambda t: t.update({"model.embed.weight": torch.zeros(2, 2)}), None,
     "embed.weight has shape \\(2, 2\\)"),
    ("metadata missing", None, lambda m: m.pop("trainer"), "not an omnibyte trainer state \\(no 'trainer' metadata\\)"),
    ("metadata not json", None, lambda m: m.update(trainer="{"), "its 'trainer' metadata is not JSON"),
    ("state not object", None, lambda m: m.update(trainer="[1]"), "the trainer state is not an object"),
    ("step missing", None, lambda m: m.update(trainer="{}"), "the trainer state has no 'step'"),
    ("step type", None, _set_json("trainer", "step", "7"), "trainer state 'step' must be an integer >= 0, got '7'"),
    ("best_val type", None, _set_json("trainer", "best_val", "low"), "'best_val' must be a finite number or null"),
    ("param groups", None, lambda m: m.update(param_groups='{"a": 1}'), "'param_groups' must be a list of objects"),
    ("param indices", None, _set_json("param_groups", "params", ["a"]), "'params', a list of indices"),
    ("hyper-parameter", None, _set_json("param_groups", "betas", "high"), "'betas' is 'high'"),
    ("document", None, lambda m: m.update(omnibyte='{"arch": 1}'), "is not an omnibyte config"),
]


@pytest.mark.parametrize("what, tensors, metadata, message", CRAFTED, ids=[case[0] for case in CRAFTED])
def test_a_crafted_trainer_state_is_a_one_line_error(tmp_path, what, tensors, metadata, message):
    Trainer(build_model("flat", "tiny"), fox_corpus(), small_config(steps=2), tmp_path, progress=False).fit()
    rewrite_state(tmp_path / "trainer_state.safetensors", tensors, metadata)
    with pytest.raises(OmnibyteError, match=message) as error:
        Trainer(build_model("flat", "tiny"), fox_corpus(), small_config(steps=4), tmp_path,
                progress=False).fit(resume=True)
    assert "\n" not in str(error.value)


def test_a_damaged_trainer_state_file_is_a_one_line_error(tmp_path):
    Trainer(build_model("flat", "tiny"), fox_corpus(), small_config(steps=2), tmp_path, progress=False).fit()
    path = tmp_path / "trainer_state.safetensors"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(OmnibyteError, match="corrupt or unreadable"):
        checkpoint.load_trainer_state(tmp_path)


def test_resuming_a_run_that_stopped_early(tmp_path):
    train, valid = fox_corpus().split(0.1)

    def fit(patience):
        config = small_config(steps=400, lr=1e-9, eval_every=2, patience=patience)
        return Trainer(build_model("flat", "tiny"), train, config, tmp_path, valid, progress=False).fit(resume=True)

    first = fit(2)
    assert first.stopped_early and first.step < 400
    again = fit(2)
    assert again.already_finished and again.step == first.step
    assert "already stopped early" in again.summary() and "raise --patience or --steps" in again.summary()
    more = fit(4)  # more patience: it trains on, and stops later
    assert not more.already_finished and more.step > first.step


class FakeClock:
    """``time.time`` for the trainer's loop: every call moves it on by ``tick`` seconds, by
    ``slow_tick`` for the calls in ``slow`` (a range of call numbers: a slow stretch)."""

    def __init__(self, tick: float, slow_tick: float = 0.0, slow: range = range(0)):
        self.now, self.tick, self.slow_tick, self.slow, self.calls = 1000.0, tick, slow_tick, slow, 0

    def time(self) -> float:
        self.calls += 1
        self.now += self.slow_tick if self.calls in self.slow else self.tick
        return self.now


@pytest.mark.parametrize("slow", [range(0), range(40, 100)])
def test_steps_fitted_to_the_time_limit_end_the_schedule_in_time(tmp_path, monkeypatch, slow):
    """``fit_steps_to_time`` (``--steps auto``): the run ends by its schedule, with the learning
    rate at its floor, in the last tenth of the time limit, even after a slow start; the plan is
    saved, so that a resumed run keeps it instead of planning again."""
    import omnibyte.train.trainer as trainer_module

    clock = FakeClock(0.002, slow_tick=0.02, slow=slow)  # slow: 1.2 s while the first plan measures
    monkeypatch.setattr(trainer_module.time, "time", clock.time)
    config = small_config(steps=10, fit_steps_to_time=True, time_limit=3.0, eval_every=0, save_every=0, log_every=1)
    torch.manual_seed(0)
    result = Trainer(build_model("flat", "tiny"), fox_corpus(), config, tmp_path, progress=False).fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert result.step == config.steps == records[-1]["step"] > 10  # planned, not the first guess
    assert records[-1]["lr"] == pytest.approx(config.lr * config.min_lr_ratio, rel=1e-3)
    assert 0.9 * 3.0 <= clock.now - 1000.0 <= 3.0 + 0.5
    assert json.loads((tmp_path / "train_config.json").read_text())["steps"] == result.step
    resumed = Trainer(build_model("flat", "tiny"), fox_corpus(), TrainConfig.from_dict(
        json.loads((tmp_path / "train_config.json").read_text())), tmp_path, progress=False).fit(resume=True)
    assert resumed.already_finished and resumed.step == result.step


def test_time_fitted_steps_plan_again_after_a_slow_stretch():
    from omnibyte.train.schedule import TimeFittedSteps

    planner, now, step = TimeFittedSteps(100.0, 0, 0.0), 0.0, 0
    planned = 10**9
    while step < planned and now <= 100.0:
        step += 1
        now += 1.0 if step <= 25 else 0.25  # a single plan from the slow start would end at 43 s
        if planner.due(step):
            proposal = planner.observe(step, now)
            if proposal is not None:
                planner.accept(step, proposal)
                planned = proposal
    assert step == planned and 85.0 <= now <= 100.0


def test_fitted_steps_need_a_time_limit():
    with pytest.raises(OmnibyteError, match="fit_steps_to_time needs a time_limit"):
        TrainConfig(fit_steps_to_time=True)

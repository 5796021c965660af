"""Training never loses work: SIGTERM and SIGINT finish the step in progress, save a complete
checkpoint (and keep the best model) and stop; the run resumes to the same weights."""
import json
import os
import signal
import threading

import pytest
from safetensors.torch import load_file

from omnibyte.models import build_model
from omnibyte.train import checkpoint
from omnibyte.train.trainer import TrainConfig, Trainer, TrainingInterrupted, seeded_model
from helpers import fox_corpus


def config(**overrides) -> TrainConfig:
    values = dict(seq_len=32, batch_size=4, steps=12, lr=3e-3, eval_every=4, eval_windows=4,
                  save_every=100, log_every=4, device="cpu")
    return TrainConfig(**{**values, **overrides})


def trainer(directory, **overrides) -> Trainer:
    train, valid = fox_corpus().split(0.1)
    model = seeded_model(lambda: build_model("flat", "tiny"), 0)
    return Trainer(model, train, config(**overrides), directory, valid, progress=False)


def send_at(step: int, signal_number: int, times: int = 1):
    def callback(run: Trainer) -> None:
        if run.step == step:
            for _ in range(times):
                os.kill(os.getpid(), signal_number)
    return callback


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_a_checkpoint_and_the_run_resumes_to_the_same_weights(tmp_path, signal_number):
    trainer(tmp_path / "straight").fit()
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}

    run = trainer(tmp_path / "signalled")  # save_every=100: no checkpoint would exist before
    run.callbacks.append(send_at(6, signal_number))
    with pytest.raises(TrainingInterrupted) as stopped:
        run.fit()
    assert isinstance(stopped.value, KeyboardInterrupt) and stopped.value.signal_number == signal_number
    assert {number: signal.getsignal(number) for number in handlers} == handlers  # restored
    saved = checkpoint.load_trainer_state(tmp_path / "signalled")
    assert saved.state["step"] == 6  # the step in progress finished, nothing more
    model_document = json.loads((tmp_path / "signalled" / "config.json").read_text())
    assert model_document["step"] == 4  # the best model so far (validated at step 4) is in place

    result = trainer(tmp_path / "signalled").fit(resume=True)
    assert result.step == 12
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "signalled" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()
    straight = load_file(str(tmp_path / "straight" / "trainer_state.safetensors"))
    resumed = load_file(str(tmp_path / "signalled" / "trainer_state.safetensors"))
    assert all((straight[name] == resumed[name]).all() for name in straight)


def test_a_second_ctrl_c_stops_at_once_but_keeps_a_whole_checkpoint(tmp_path):
    run = trainer(tmp_path, save_every=2)
    run.callbacks.append(send_at(5, signal.SIGINT, times=2))
    with pytest.raises(KeyboardInterrupt) as stopped:
        run.fit()
    assert not isinstance(stopped.value, TrainingInterrupted)
    assert checkpoint.load_trainer_state(tmp_path).state["step"] == 5  # saved between steps
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_handlers_are_left_alone_outside_the_main_thread(tmp_path):
    results = []
    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=lambda: results.append(trainer(tmp_path, steps=3).fit()))
    thread.start()
    thread.join()
    assert results and results[0].step == 3
    assert signal.getsignal(signal.SIGTERM) is before

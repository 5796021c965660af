"""Reproducible runs: the seed fixes initial weights, data order and every random draw in
training, so identical runs (and a run resumed after a kill) write byte-identical files,
without any seeding outside omnibyte."""
import pytest
import torch

from omnibyte.models import build_model
from omnibyte.train.trainer import TrainConfig, Trainer, seeded_model
from helpers import fox_corpus

MODEL_FILES = ("model.safetensors", "config.json")


def config(**overrides) -> TrainConfig:
    values = dict(seq_len=32, batch_size=4, steps=9, lr=3e-3, eval_every=3, eval_windows=4,
                  save_every=3, log_every=3, device="cpu")
    return TrainConfig(**{**values, **overrides})


def run(directory, arch="flat", preset="tiny", callbacks=(), resume=False, **overrides):
    """One training run as the CLI makes it: the model built under the config's seed."""
    train_config = config(**overrides)
    torch.manual_seed(torch.seed())  # whatever state the process is in: it must not matter
    model = seeded_model(lambda: build_model(arch, preset), train_config.seed)
    train, valid = fox_corpus().split(0.1)
    trainer = Trainer(model, train, train_config, directory, valid, progress=False)
    trainer.callbacks.extend(callbacks)
    return trainer.fit(resume=resume)


def files(directory):
    return {name: (directory / name).read_bytes() for name in (*MODEL_FILES, "trainer_state.safetensors")}


def test_seeded_model_fixes_the_initial_weights():
    first = seeded_model(lambda: build_model("flat", "tiny"), 7)
    second = build_model("flat", "tiny", seed=7)
    other = build_model("flat", "tiny", seed=8)
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name])
    assert not torch.equal(first.embed.weight, other.embed.weight)
    state = torch.get_rng_state()
    build_model("flat", "tiny", seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is untouched


# bGPT's random patch subsets draw from torch's generator during training: the seed covers them
@pytest.mark.parametrize("arch, preset, overrides", [("flat", "tiny", {}),
                                                      ("patch", "tiny", {"byte_decoder_patch_fraction": 0.5})])
def test_two_identical_runs_write_identical_files(tmp_path, arch, preset, overrides):
    def build():
        return build_model(arch, preset, **overrides)

    for name in ("a", "b"):
        torch.manual_seed(torch.seed())
        train, valid = fox_corpus().split(0.1)
        Trainer(seeded_model(build, 0), train, config(seq_len=64), tmp_path / name, valid, progress=False).fit()
    assert files(tmp_path / "a") == files(tmp_path / "b")


def test_another_seed_gives_another_model(tmp_path):
    run(tmp_path / "a")
    run(tmp_path / "b", seed=1)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() != (tmp_path / "b" / "model.safetensors").read_bytes()


class Killed(Exception):
    pass


def kill_at(step: int):
    def callback(trainer: Trainer) -> None:
        if trainer.step == step:
            raise Killed()  # like kill -9: nothing after the last checkpoint is saved
    return callback


def test_resume_after_a_kill_writes_identical_files(tmp_path):
    run(tmp_path / "straight")
    with pytest.raises(Killed):
        run(tmp_path / "killed", callbacks=[kill_at(5)])
    result = run(tmp_path / "killed", resume=True)
    assert result.step == 9
    assert files(tmp_path / "killed") == files(tmp_path / "straight")

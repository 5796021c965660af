"""Training at scale on the CPU: torchrun with the gloo backend, 2 and 4 ranks.

Every run trains the same tiny flat model on the same global batch (4 micro-batches of 2
windows a step: one process with --grad-accum 4, two ranks with 2, four ranks with 1) and is
compared with one process. The learning rate is a warmup that never ends (``--warmup-steps``
far beyond the run), so it does not depend on ``--steps`` and a run resumed with another
``--steps`` follows the same schedule.

Tolerance: DDP and FSDP add the ranks' gradients in another order than accumulation in one
process does, so losses and weights agree to float32 rounding amplified by 8 Adam steps:
``TOLERANCE`` (absolute) below; a wrong window, a missing gradient reduction or a wrong
optimizer state is orders of magnitude above it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import omnibyte
from omnibyte.cli import main
from omnibyte.train import parallel
from omnibyte.train.sharded_checkpoint import checkpoint_folders, latest_weights
from helpers import word_text

pytestmark = pytest.mark.slow
TOLERANCE = 1e-4
STEPS = 8
COMMON = ["--seq-len", "32", "--batch-size", "2", "--eval-every", "0", "--log-every", "1", "--no-progress",
          "--warmup-steps", "1000000", "--lr", "5000", "--seed", "3", "--device", "cpu",
          "--set", "hidden_size=32", "--set", "num_query_heads=2", "--set", "num_key_value_heads=1"]
SOURCE_ROOT = str(Path(omnibyte.__file__).resolve().parents[1])
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from common import kill_tree  # noqa: E402 (SIGKILL of torchrun and its ranks, shared with the multi-GPU kit)


def torchrun(ranks: int, args: list[str], wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    """``torchrun --standalone`` (a free port of its own) of ``omnibyte train`` on ``ranks``
    CPU processes, one thread each."""
    env = {**os.environ, "PYTHONPATH": SOURCE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               "-m", "omnibyte.cli", "train", *args]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if "loss" in line]


def assert_same_weights(run: Path, reference: Path) -> None:
    actual, expected = latest_weights(run), latest_weights(reference)
    assert actual.step == expected.step == STEPS
    assert actual.weights.keys() == expected.weights.keys()
    for name, tensor in expected.weights.items():
        torch.testing.assert_close(actual.weights[name], tensor, atol=TOLERANCE, rtol=0, msg=name)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "words.txt"
    path.write_bytes(word_text(20_000, seed=5))
    return path


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """One process, no process group: --grad-accum 4."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(["train", str(data), "--out", str(out), "--steps", str(STEPS), "--grad-accum", "4",
                 "--parallel", "none", *COMMON]) == 0
    return out


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_train_like_one_process(mode, data, reference, tmp_path):
    out = tmp_path / mode
    torchrun(2, [str(data), "--out", str(out), "--steps", str(STEPS), "--grad-accum", "2", "--parallel", mode,
                 *COMMON])
    expected = losses(reference)
    assert len(expected) == STEPS and expected[-1] < expected[0]  # it learns
    torch.testing.assert_close(torch.tensor(losses(out)), torch.tensor(expected), atol=TOLERANCE, rtol=0)
    assert [step for step, _ in checkpoint_folders(out)] == [STEPS]  # sharded state, older ones removed
    assert_same_weights(out, reference)
    # the run's model files (gathered from the shards) load anywhere and hold the final weights
    exported = tmp_path / "exported"
    assert main(["export", str(out), "--out", str(exported)]) == 0
    from omnibyte.models.serialization import load_model
    model = load_model(exported)
    final = latest_weights(out).weights
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, final[name])


def test_killed_two_rank_run_resumes_on_one_and_on_four_ranks(data, reference, tmp_path):
    """kill -9 of the whole job mid-run (checkpoints every step), then --resume on another
    number of ranks: the final weights are those of the run never killed."""
    killed = tmp_path / "killed"
    job = torchrun(2, [str(data), "--out", str(killed), "--steps", "400", "--grad-accum", "2",
                       "--parallel", "fsdp", "--save-every", "1", *COMMON], wait=False)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and job.poll() is None:
            folders = checkpoint_folders(killed)
            if folders and folders[-1][0] >= 3:
                break
            time.sleep(0.01)
    finally:
        kill_tree(job)
    step = checkpoint_folders(killed)[-1][0]
    assert 3 <= step < STEPS, f"the job was killed at step {step}"
    for ranks, extra in ((1, ["--grad-accum", "4", "--parallel", "none"]),
                         (4, ["--grad-accum", "1", "--parallel", "fsdp"])):
        run = tmp_path / f"resumed-{ranks}"
        shutil.copytree(killed, run)
        args = [str(data), "--out", str(run), "--resume", "--steps", str(STEPS), *extra, *COMMON]
        if ranks == 1:
            assert main(["train", *args]) == 0
        else:
            torchrun(ranks, args)
        assert_same_weights(run, reference)


def test_one_process_state_resumes_under_fsdp_in_one_process(data, reference, tmp_path):
    """A run directory of the single-file kind (one process, as every earlier version wrote)
    resumes with --parallel fsdp in a single process: a 1-rank mesh over a process group the
    trainer starts itself, the state's whole tensors sharded as they are loaded."""
    out = tmp_path / "fsdp1"
    assert main(["train", str(data), "--out", str(out), "--steps", "3", "--grad-accum", "4",
                 "--parallel", "none", *COMMON]) == 0
    assert (out / "trainer_state.safetensors").exists() and not checkpoint_folders(out)
    done = subprocess.run(
        [sys.executable, "-m", "omnibyte.cli", "train", str(data), "--out", str(out), "--resume",
         "--steps", str(STEPS), "--parallel", "fsdp", "--activation-checkpointing", "selective", *COMMON],
        env={**os.environ, "PYTHONPATH": SOURCE_ROOT, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from step 3" in done.stdout
    torch.testing.assert_close(torch.tensor(losses(out)), torch.tensor(losses(reference)), atol=TOLERANCE, rtol=0)
    assert [step for step, _ in checkpoint_folders(out)] == [STEPS]
    assert_same_weights(out, reference)


def test_resolve_mode_and_bad_modes():
    assert parallel.resolve_mode("auto", 1) == "none" and parallel.resolve_mode("auto", 2) == "ddp"
    assert parallel.resolve_mode("fsdp", 1) == "fsdp"
    with pytest.raises(omnibyte.errors.OmnibyteError, match="unknown parallel mode"):
        parallel.resolve_mode("zero3", 1)


class Crash(Exception):
    """Stands for the process dying at that point."""


def test_a_cuda_device_always_gets_an_index():
    # torch.cuda.set_device and NCCL refuse a bare "cuda" (found on the H200: --parallel fsdp in
    # one process failed before this)
    assert parallel.rank_device(torch.device("cuda"), 1, 0) == torch.device("cuda", 0)
    assert parallel.rank_device(torch.device("cuda", 1), 1, 0) == torch.device("cuda", 1)
    assert parallel.rank_device(torch.device("cuda"), 4, 3) == torch.device("cuda", 3)
    assert parallel.rank_device(torch.device("cpu"), 4, 3) == torch.device("cpu")


def test_a_save_killed_before_its_rename_leaves_the_last_complete_checkpoint(data, tmp_path, monkeypatch):
    """DCP saves of a 1-rank DDP group: a save that dies after writing every shard but before
    the rename leaves a temporary folder that is never read; resume continues from the last
    complete checkpoint and ends where a run never interrupted ends."""
    from omnibyte.train import sharded_checkpoint

    args = [str(data), "--steps", "3", "--grad-accum", "4", "--parallel", "ddp", "--save-every", "1", *COMMON]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert main(["train", "--out", str(straight), *args]) == 0
    assert main(["train", "--out", str(broken), *args[:-len(COMMON)], "--steps", "2", *COMMON]) == 0
    original = sharded_checkpoint._sync_folder

    def die_before_rename(folder: Path) -> None:
        if folder.name.startswith(sharded_checkpoint.TEMPORARY_PREFIX):
            raise Crash()
        original(folder)

    monkeypatch.setattr(sharded_checkpoint, "_sync_folder", die_before_rename)
    with pytest.raises(Crash):
        main(["train", "--out", str(broken), "--resume", *args])
    monkeypatch.undo()
    root = broken / sharded_checkpoint.CHECKPOINTS_DIR
    assert (root / ".tmp-step-0000000003" / "trainer.json").exists()  # complete, but never renamed
    assert [step for step, _ in checkpoint_folders(broken)] == [2]
    assert main(["train", "--out", str(broken), "--resume", *args]) == 0
    assert sorted(entry.name for entry in root.iterdir()) == ["step-0000000003"]
    expected, actual = latest_weights(straight), latest_weights(broken)
    for name, tensor in expected.weights.items():
        assert torch.equal(actual.weights[name], tensor), name


def test_a_finished_run_tears_down_the_process_group_it_started(data, tmp_path):
    """`omnibyte train --parallel fsdp` ends with every rank at a barrier and the process group
    destroyed: left to the interpreter's exit, gloo aborted a rank now and then after a run had
    finished and saved ("terminate called without an active exception"), failing the job."""
    import torch.distributed as dist

    if dist.is_initialized():  # left by a test that drove a Trainer itself
        dist.destroy_process_group()
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--steps", "2", "--parallel", "fsdp",
                 *COMMON]) == 0
    assert not dist.is_initialized()


def test_steps_fitted_to_time_agree_on_two_ranks(data, tmp_path):
    """``--steps auto`` under torchrun: every rank takes rank 0's plan (broadcast at the same
    steps), so the ranks end together, at the planned step, without hanging in a collective."""
    out = tmp_path / "fitted"
    torchrun(2, [str(data), "--out", str(out), "--steps", "auto", "--time-limit", "8", "--parallel", "ddp",
                 "--seq-len", "32", "--batch-size", "2", "--eval-every", "0", "--save-every", "0", "--no-progress"])
    planned = json.loads((out / "train_config.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert planned["fit_steps_to_time"] and planned["steps"] > 26  # planned, past the first guess's floor
    assert records[-1]["step"] <= planned["steps"]
    assert latest_weights(out).step == records[-1]["step"]

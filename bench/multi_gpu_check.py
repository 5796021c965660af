"""End-to-end check of multi-GPU training (issue 17): train under torchrun with checkpoints,
kill one rank with SIGKILL mid-run, resume (on the same or another number of ranks), export
the run, evaluate the exported model. Every stage is checked and reported PASS/FAIL in one line;
``OUT/check.json`` holds the summary and ``OUT/logs/`` every command's output.

The stages:

1. ``train``: ``torchrun --standalone --nproc-per-node N -m omnibyte.cli train DATA --out
   OUT/run --parallel fsdp --steps S --save-every E ...`` in the background, until a complete
   checkpoint of step >= ``--kill-at-step`` exists and ``--kill-after`` seconds have passed
   (it fails if the job ends or errs first);
2. ``kill``: SIGKILL of rank ``--kill-rank`` alone (its pid found among torchrun's workers by
   its ``RANK``); the whole job must then stop by itself within ``--stop-timeout`` seconds
   (torchrun stops the other ranks) and leave a complete checkpoint;
3. ``resume``: ``torchrun --nproc-per-node M ... --resume`` to step S: exit status 0, the log
   says ``resumed from step K`` with K the newest checkpoint the killed job left, the newest
   checkpoint is of step S, and metrics.jsonl holds every step 1..S once (the steps after K
   logged by the resumed run);
4. ``export``: ``omnibyte export OUT/run --out OUT/exported``: exit 0, the model is of step S;
5. ``eval``: ``omnibyte eval DATA --model OUT/exported --json``: exit 0, finite bits per byte.

CPU (gloo, tiny model, about a minute on 2 cores; what tests/test_multi_gpu_check.py runs):
    python bench/multi_gpu_check.py --nproc-per-node 2 --resume-nproc 1 --out /tmp/check
8 GPUs, resumed on 4 (about 4 minutes; real settings by arguments only):
    python bench/multi_gpu_check.py --nproc-per-node 8 --resume-nproc 4 --preset base --seq-len 8192 \\
        --batch-size 4 --steps 200 --save-every 20 --kill-at-step 60 --train-args "--compile" \\
        --resume-args "--grad-accum 2" --out $OUT/check

``DATA`` defaults to this checkout's docs/ and README.md (text, present wherever the tree is).
Exit status 0 when every stage passed, 1 otherwise, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's omnibyte
from common import describe_environment, descendants, kill_tree, process_alive, write_json  # noqa: E402

from omnibyte.fileio import atomic_write_bytes  # noqa: E402
from omnibyte.train.sharded_checkpoint import TRAINER_JSON, checkpoint_folders  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for run/, exported/, logs/, check.json")
    parser.add_argument("--data", nargs="+", default=[str(ROOT / "docs"), str(ROOT / "README.md")])
    parser.add_argument("--nproc-per-node", type=int, default=2, help="ranks of the run that is killed")
    parser.add_argument("--resume-nproc", type=int, default=None, help="ranks of the resumed run (default: same)")
    parser.add_argument("--parallel", default="fsdp", choices=("fsdp", "ddp"))
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12, help="steps of the whole run (the resumed run ends there)")
    parser.add_argument("--save-every", type=int, default=2)
    parser.add_argument("--kill-at-step", type=int, default=4, help="kill once a checkpoint of this step exists")
    parser.add_argument("--kill-after", type=float, default=0.0, help="and at least this many seconds in")
    parser.add_argument("--kill-rank", type=int, default=None, help="the rank killed (default: the last)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-args", default="", help="more options of both train commands (one string)")
    parser.add_argument("--resume-args", default="", help="more options of the resumed run only")
    parser.add_argument("--train-timeout", type=float, default=300.0, help="seconds to reach the kill point")
    parser.add_argument("--stop-timeout", type=float, default=120.0, help="seconds for the job to stop after it")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for each later stage")
    args = parser.parse_args(argv)
    args.resume_nproc = args.resume_nproc or args.nproc_per_node
    args.kill_rank = args.nproc_per_node - 1 if args.kill_rank is None else args.kill_rank
    if args.nproc_per_node < 2:
        parser.error("--nproc-per-node must be at least 2 (one rank is killed)")
    if not 0 <= args.kill_rank < args.nproc_per_node:
        parser.error(f"--kill-rank must be in 0..{args.nproc_per_node - 1}")
    if not 0 < args.kill_at_step < args.steps or args.save_every > args.kill_at_step:
        parser.error("need 0 < --kill-at-step < --steps and --save-every <= --kill-at-step")
    return args


class Check:
    """The stages' outcomes, printed as they come and written to ``check.json``."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.stages, self.started = args, [], time.monotonic()

    def record(self, name: str, passed: bool, detail: str, **facts: Any) -> bool:
        self.stages.append({"stage": name, "passed": passed, "detail": detail, **facts})
        print(f"{'PASS' if passed else 'FAIL'} {name}: {detail}", flush=True)
        self.save(passed=False, complete=False)  # the stages so far survive a kill of the check
        return passed

    def save(self, passed: bool, complete: bool) -> None:
        payload = {
            "passed": passed, "complete": complete, "stages": self.stages,
            # described last: a CUDA context here would hold GPU memory while the ranks run
            "environment": describe_environment() if complete else None,
            "command": shlex.join([sys.executable, *sys.argv]), "world_size": self.args.nproc_per_node,
            "resume_world_size": self.args.resume_nproc, "wall_s": time.monotonic() - self.started,
            "arguments": {key: str(value) for key, value in vars(self.args).items()}}
        if complete:
            write_json(self.args.out / "check.json", payload)
        else:  # quietly, after every stage
            text = json.dumps(payload, indent=2, default=str) + "\n"
            atomic_write_bytes(self.args.out / "check.json", text.encode())

    def write(self, why_not_run: str = "not run (an earlier stage failed)") -> bool:
        passed = len(self.stages) == len(STAGES) and all(stage["passed"] for stage in self.stages)
        done = {stage["stage"] for stage in self.stages}
        for name in STAGES:
            if name not in done:
                self.record(name, False, why_not_run)
        self.save(passed, complete=True)
        print(f"{'PASS' if passed else 'FAIL'} multi-GPU check: "
              f"{sum(stage['passed'] for stage in self.stages)}/{len(STAGES)} stages passed", flush=True)
        return passed


STAGES = ("train", "kill", "resume", "export", "eval")


def environment() -> dict[str, str]:
    """This checkout's omnibyte first; one thread per rank on the CPU."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def train_command(args: argparse.Namespace, ranks: int, resume: bool) -> list[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               "-m", "omnibyte.cli", "train", *args.data, "--out", str(args.out / "run"),
               "--parallel", args.parallel, "--preset", args.preset, "--seq-len", str(args.seq_len),
               "--batch-size", str(args.batch_size), "--steps", str(args.steps),
               "--save-every", str(args.save_every), "--log-every", "1", "--eval-every", "0",
               "--device", args.device, "--no-progress", *shlex.split(args.train_args)]
    return command + (["--resume", *shlex.split(args.resume_args)] if resume else [])


def run_logged(command: list[str], log: Path, timeout: float) -> tuple[int | None, str]:
    """Exit status (None on timeout, the job then killed) and output of ``command``."""
    with open(log, "w") as output:
        output.write("$ " + shlex.join(command) + "\n")
        output.flush()
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment(),
                                   start_new_session=True)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(process)
            returncode = None
        except BaseException:  # stopped: the command must not outlive the check
            kill_tree(process)
            raise
    return returncode, log.read_text(errors="replace")


def newest_step(run: Path) -> int | None:
    folders = checkpoint_folders(run)
    return folders[-1][0] if folders else None


def rank_pids(launcher: int, rank: int) -> list[int]:
    """The worker process of ``rank`` under torchrun (the topmost process whose environment says
    ``RANK=rank``: its own children, compile workers, inherit the variable)."""
    found = []
    for pid in descendants(launcher):
        try:
            variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            parent = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if f"RANK={rank}".encode() in variables:
            found.append((pid, parent))
    pids = {pid for pid, _ in found}
    return [pid for pid, parent in found if parent not in pids]


def train_and_kill(args: argparse.Namespace, check: Check) -> int | None:
    """Stages 1 and 2; the newest checkpoint step the killed job left, or None on failure."""
    run, log = args.out / "run", args.out / "logs" / "train.log"
    command = train_command(args, args.nproc_per_node, resume=False)
    with open(log, "w") as output:
        output.write("$ " + shlex.join(command) + "\n")
        output.flush()
        job = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=environment(),
                               start_new_session=True)
        started = time.monotonic()
        try:
            while job.poll() is None and time.monotonic() - started < args.train_timeout:
                step = newest_step(run)
                if step is not None and step >= args.kill_at_step and time.monotonic() - started >= args.kill_after:
                    break
                time.sleep(0.05)
            reached = time.monotonic() - started
            if job.poll() is not None:
                return check.record("train", False, f"the job ended (exit {job.returncode}) before the kill point; "
                                    f"see {log}", returncode=job.returncode) or None
            step = newest_step(run)
            if step is None or step < args.kill_at_step:
                return check.record("train", False, f"no checkpoint of step >= {args.kill_at_step} within "
                                    f"{args.train_timeout:.0f} s (newest: {step}); see {log}") or None
            check.record("train", True, f"{args.nproc_per_node} ranks, checkpoint of step {step} after {reached:.1f} s",
                         seconds=reached, checkpoint_step=step, command=shlex.join(command), log=str(log))
            return kill_one_rank(args, check, job, run)
        finally:
            if job.poll() is None:
                kill_tree(job)


def kill_one_rank(args: argparse.Namespace, check: Check, job: subprocess.Popen, run: Path) -> int | None:
    victims = rank_pids(job.pid, args.kill_rank)
    if len(victims) != 1:
        return check.record("kill", False, f"found {len(victims)} processes of rank {args.kill_rank}") or None
    ranks_before = [pid for pid in descendants(job.pid)]
    step_at_kill = newest_step(run)
    os.kill(victims[0], signal.SIGKILL)
    killed = time.monotonic()
    try:
        returncode = job.wait(timeout=args.stop_timeout)
    except subprocess.TimeoutExpired:
        return check.record("kill", False, f"the job still ran {args.stop_timeout:.0f} s after rank "
                            f"{args.kill_rank} was killed") or None
    stopped = time.monotonic() - killed
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(process_alive(pid) for pid in ranks_before):
        time.sleep(0.1)
    left = [pid for pid in ranks_before if process_alive(pid)]
    step = newest_step(run)
    facts = dict(killed_pid=victims[0], killed_rank=args.kill_rank, returncode=returncode, stop_s=stopped,
                 step_at_kill=step_at_kill, checkpoint_step=step)
    if returncode == 0 or left or step is None:
        why = ("the job exited 0" if returncode == 0 else f"processes {left} outlived the job" if left
               else "no complete checkpoint left")
        return check.record("kill", False, why, **facts) or None
    return check.record("kill", True, f"SIGKILL of rank {args.kill_rank} (pid {victims[0]}): the job stopped in "
                        f"{stopped:.1f} s (exit {returncode}), newest checkpoint step {step}", **facts) and step


def resume(args: argparse.Namespace, check: Check, from_step: int) -> bool:
    run, log = args.out / "run", args.out / "logs" / "resume.log"
    command = train_command(args, args.resume_nproc, resume=True)
    started = time.monotonic()
    returncode, output = run_logged(command, log, args.timeout)
    facts = dict(returncode=returncode, seconds=time.monotonic() - started, command=shlex.join(command),
                 log=str(log), resumed_from=from_step)
    if returncode != 0:
        return check.record("resume", False, f"exit {returncode}; see {log}", **facts)
    if f"resumed from step {from_step} " not in output:
        return check.record("resume", False, f"the log does not say 'resumed from step {from_step}'", **facts)
    final = newest_step(run)
    state = json.loads((run / "checkpoints" / f"step-{final:010d}" / TRAINER_JSON).read_text())["trainer"] \
        if final is not None else {}
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if line.strip() and "loss" in json.loads(line)]
    facts.update(final_step=final, world_size=state.get("world_size"))
    if final != args.steps or state.get("step") != args.steps:
        return check.record("resume", False, f"newest checkpoint is of step {final}, not {args.steps}", **facts)
    if logged != list(range(1, args.steps + 1)):
        return check.record("resume", False, f"metrics.jsonl logs steps {logged}, not 1..{args.steps} once", **facts)
    return check.record("resume", True, f"{args.resume_nproc} ranks resumed from step {from_step} and reached step "
                        f"{final} (exit 0)", **facts)


def export(args: argparse.Namespace, check: Check) -> bool:
    exported, log = args.out / "exported", args.out / "logs" / "export.log"
    command = [sys.executable, "-m", "omnibyte.cli", "export", str(args.out / "run"), "--out", str(exported)]
    returncode, _ = run_logged(command, log, args.timeout)
    if returncode != 0:
        return check.record("export", False, f"exit {returncode}; see {log}", returncode=returncode)
    step = json.loads((exported / "config.json").read_text()).get("step")
    if step != args.steps:
        return check.record("export", False, f"the exported model is of step {step}, not {args.steps}")
    return check.record("export", True, f"model of step {step} in {exported}", returncode=0, step=step)


def evaluate(args: argparse.Namespace, check: Check) -> bool:
    log = args.out / "logs" / "eval.log"
    command = [sys.executable, "-m", "omnibyte.cli", "eval", *args.data, "--model", str(args.out / "exported"),
               "--json", "--device", args.device]
    returncode, output = run_logged(command, log, args.timeout)
    if returncode != 0:
        return check.record("eval", False, f"exit {returncode}; see {log}", returncode=returncode)
    report = json.loads(output[output.index("{"):])
    value = report.get("bits_per_byte")
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return check.record("eval", False, f"no finite bits_per_byte in the report: {value!r}")
    return check.record("eval", True, f"{value:.4f} bits/byte on the data", returncode=0, bits_per_byte=value)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in ("run", "exported"):
        if (args.out / name).exists():
            print(f"{args.out / name} exists: choose an empty --out", file=sys.stderr)
            return 2
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    check = Check(args)
    signal.signal(signal.SIGTERM, raise_stopped)
    try:
        from_step = train_and_kill(args, check)
        if from_step is not None and resume(args, check, from_step) and export(args, check):
            evaluate(args, check)
    except (Stopped, KeyboardInterrupt):
        return 0 if check.write("not run (the check was stopped by a signal)") else 1
    return 0 if check.write() else 1


class Stopped(Exception):
    """SIGTERM (e.g. ``timeout`` around the check): the command in progress is killed."""


def raise_stopped(signal_number: int, frame: Any) -> None:
    raise Stopped()


if __name__ == "__main__":
    sys.exit(main())

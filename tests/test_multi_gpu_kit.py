"""The multi-GPU kit of issue 17 on the CPU (gloo): ``bench/bench_scaling.py`` in its smoke
mode and ``bench/multi_gpu_check.py`` in its tiny mode, each launched as a user launches it
(the scripts start torchrun themselves, as tests/test_parallel.py does)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

import omnibyte

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"),
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds ranks through /proc (Linux)"),
]
ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOT = str(Path(omnibyte.__file__).resolve().parents[1])
PEAK = 989e12


def run_script(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SOURCE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], env=env, capture_output=True,
                          text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_bench_scaling_smoke_on_two_gloo_ranks(tmp_path):
    one, two = tmp_path / "n1", tmp_path / "n2"
    run_script("bench_scaling.py", "--smoke", "--nproc-per-node", "1", "--settings", "base-fsdp,long-context-fsdp",
               "--out", str(one))
    # base-ddp at batch 0 fails on every rank: only its row is lost
    done = run_script("bench_scaling.py", "--smoke", "--nproc-per-node", "2", "--out", str(two),
                      "--settings", "base-fsdp,base-ddp,long-context-fsdp", "--batch", "base-ddp=0",
                      "--compare-to", str(one / "scaling.json"), "--profile-steps", "1")
    assert "training throughput on 2 rank(s)" in done.stdout
    payload = json.loads((two / "scaling.json").read_text())
    reference = {row["setting"]: row for row in json.loads((one / "scaling.json").read_text())["rows"]}
    assert payload["world_size"] == 2 and "bench_scaling.py" in payload["command"]
    assert payload["environment"]["torch"] and payload["reference"]["world_size"] == 1
    rows = payload["rows"]
    assert [row["setting"] for row in rows] == ["base-fsdp", "base-ddp", "long-context-fsdp"]
    failed = rows[1]
    assert "error" in failed and "rank" in failed["error"] and "batch_size" in failed["error"]
    assert Path(failed["log"]).exists()
    for row, arch, seq_len in ((rows[0], "flat", 128), (rows[2], "multiscale", 1024)):
        assert "error" not in row, row
        assert row["arch"] == arch and row["parallel"] == "fsdp" and row["world_size"] == 2
        assert row["seq_len"] == seq_len and row["batch"] == 2 and row["preset"] == "tiny"
        assert len(row["peak_gib_per_rank"]) == 2 and row["device"] == "cpu"
        per_gpu = row["batch"] * seq_len / row["step_s"]
        assert math.isclose(row["bytes_per_s_per_gpu"], per_gpu, rel_tol=1e-9)
        assert math.isclose(row["bytes_per_s"], 2 * per_gpu, rel_tol=1e-9)
        assert math.isclose(row["mfu"], row["flops_per_byte"] * per_gpu / PEAK, rel_tol=1e-9)
        assert math.isclose(row["efficiency"], per_gpu / reference[row["setting"]]["bytes_per_s_per_gpu"],
                            rel_tol=1e-9)
        assert reference[row["setting"]]["world_size"] == 1 and reference[row["setting"]]["parallel"] == "fsdp"
    # --profile-steps: every rank of every finished job writes where its profiled step went
    for setting in ("base-fsdp", "long-context-fsdp"):
        for rank in (0, 1):
            summary = json.loads((two / "profiles" / f"{setting}-n2-b2-rank{rank}.json").read_text())
            assert summary["rank"] == rank and summary["world_size"] == 2 and summary["profiled_steps"] == 1
            assert summary["wall_s_per_step"] > 0
            assert 0 <= summary["compute_busy_s_per_step"] <= summary["gpu_busy_s_per_step"]
            assert "Name" in (two / "profiles" / f"{setting}-n2-b2-rank{rank}.txt").read_text()
    # the comparison again later, from the JSON files alone: the same efficiencies, a file of its own
    run_script("bench_scaling.py", "--from-json", str(two / "scaling.json"), "--compare-to",
               str(one / "scaling.json"), "--out", str(two))
    compared = json.loads((two / "compared.json").read_text())["rows"]
    assert [row.get("efficiency") for row in compared] == [row.get("efficiency") for row in rows]


def test_bench_scaling_bad_arguments_exit_2(tmp_path):
    done = run_script("bench_scaling.py", "--settings", "base-zero3", check=False)
    assert done.returncode == 2 and "unknown settings" in done.stderr
    (tmp_path / "other.json").write_text("{}")
    done = run_script("bench_scaling.py", "--from-json", str(tmp_path / "other.json"), check=False)
    assert done.returncode != 0 and "holds no rows" in done.stderr


def test_bench_scaling_says_when_the_budget_cut_a_job_short(monkeypatch):
    """A job's timeout is the smaller of --setting-timeout and the budget left + 60 s; a row
    killed by the budget's cap must say so, not only "timed out" (issue 17's first 16M try)."""
    import time

    sys.path.insert(0, str(ROOT / "bench"))
    import bench_scaling

    timeouts = []

    def timing_out(job, ranks, timeout, log):
        timeouts.append(timeout)
        return {"setting": job["name"], "error": f"timed out after {timeout:.0f} s"}

    monkeypatch.setattr(bench_scaling, "spawn", timing_out)
    args = bench_scaling.parse_args(["--settings", "long-context-fsdp", "--setting-timeout", "175"])
    row = bench_scaling.run_setting("long-context-fsdp", args, deadline=time.monotonic() + 60)
    assert 115 < timeouts[0] < 121 and "capped by --budget" in row["error"]
    row = bench_scaling.run_setting("long-context-fsdp", args, deadline=time.monotonic() + 1000)
    assert timeouts[1] == 175 and "capped" not in row["error"]


def test_profile_counts_each_gpu_kernel_once():
    """Kernel time by kind counts GPU events only (not the CPU ops that launched them, which the
    profiler also charges); busy time is the union of kernel intervals: an NCCL kernel that
    overlaps compute adds only its exposed part, and none to the compute-busy time."""
    from types import SimpleNamespace

    sys.path.insert(0, str(ROOT / "bench"))
    from common import busy_seconds, kernel_time_by_kind

    def kernel(name, start, end, device_type="DeviceType.CUDA"):
        return SimpleNamespace(name=name, device_type=device_type, time_range=SimpleNamespace(start=start, end=end))

    events = [kernel("sm90_gemm", 0, 100), kernel("ncclDevKernel_AllGather", 50, 180), kernel("elementwise", 90, 120),
              kernel("elementwise", 300, 310), kernel("aten::mm", 0, 1000, "DeviceType.CPU"),
              kernel("nccl:_all_gather_base", 50, 180, "DeviceType.CPU"), kernel("elementwise", 90, 120, "DeviceType.CPU")]
    prof = SimpleNamespace(events=lambda: events)
    kinds, launches = kernel_time_by_kind(prof)
    assert launches == 4 and {kind: round(seconds * 1e6) for kind, seconds in kinds.items()} == {
        "matmul (gemm)": 100, "communication (nccl)": 130, "norm, rope, swiglu, adds, casts (element-wise)": 40}
    assert busy_seconds(prof) * 1e6 == 180 + 10
    assert busy_seconds(prof, lambda name: "nccl" not in name.lower()) * 1e6 == 120 + 10


def test_multi_gpu_check_passes_every_stage_on_cpu(tmp_path):
    out = tmp_path / "check"
    done = run_script("multi_gpu_check.py", "--nproc-per-node", "2", "--resume-nproc", "1", "--out", str(out))
    summary = json.loads((out / "check.json").read_text())
    stages = {stage["stage"]: stage for stage in summary["stages"]}
    assert summary["passed"] and list(stages) == ["train", "kill", "resume", "export", "eval"]
    assert all(stage["passed"] for stage in stages.values())
    assert done.stdout.count("PASS ") == 6 and "5/5 stages passed" in done.stdout
    kill = stages["kill"]
    assert kill["killed_rank"] == 1 and kill["returncode"] != 0 and kill["checkpoint_step"] >= 4
    assert stages["resume"]["resumed_from"] == kill["checkpoint_step"] and stages["resume"]["final_step"] == 12
    assert stages["resume"]["world_size"] == 1 and math.isfinite(stages["eval"]["bits_per_byte"])
    # a second check into the same folder is refused rather than mixed with the first
    again = run_script("multi_gpu_check.py", "--out", str(out), check=False)
    assert again.returncode == 2 and "choose an empty --out" in again.stderr


def test_multi_gpu_check_reports_a_failed_stage(tmp_path):
    """A run that cannot start fails the train stage; the later stages are reported as not run,
    and the exit status says the check failed."""
    out = tmp_path / "check"
    done = run_script("multi_gpu_check.py", "--train-args", "--set num_layers=0", "--out", str(out), check=False)
    summary = json.loads((out / "check.json").read_text())
    assert done.returncode == 1 and not summary["passed"]
    assert [(stage["stage"], stage["passed"]) for stage in summary["stages"]] == [
        ("train", False), ("kill", False), ("resume", False), ("export", False), ("eval", False)]
    assert "before the kill point" in summary["stages"][0]["detail"] and "0/5 stages passed" in done.stdout

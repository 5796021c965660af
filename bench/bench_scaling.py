"""Multi-GPU training throughput (issue 17): FSDP2 and DDP through the real training path
(``Trainer.train_step``: the parallel layer, the task's loss, clipping, fused AdamW), one
``torchrun`` job per setting, on random bytes (no data loading).

The launcher runs each setting (and each batch it tries) as its own job: ``torchrun
--standalone --nproc-per-node N`` for N > 1, a plain ``python`` process for N = 1 (FSDP/DDP on
a process group of one, as ``bench_mfu.py``'s ``fsdp`` setting). A crash, an OOM or a hang
loses only that row: a rank that fails writes its error and exits at once (torchrun then stops
the others), and a job past ``--setting-timeout`` is killed with every rank. No setting starts
once ``--budget`` seconds are spent; the rest are listed as skipped. Each job's output is kept
under ``OUT/logs/``.

On N GPUs (here 8; never run on a GPU yet: ``--budget 420`` keeps a device call under 10
minutes whatever the compile times are), then on one GPU for the reference
(docs/distributed.md, "Making the multi-GPU runs", has the device calls for 2, 4 and 8 GPUs):
    python bench/bench_scaling.py --nproc-per-node 8 --budget 420 --out $OUT/n8
    CUDA_VISIBLE_DEVICES=0 python bench/bench_scaling.py --nproc-per-node 1 --out $OUT/n1
Scaling efficiency (throughput per GPU over the one-GPU throughput of the same setting), now or
later without a GPU:
    python bench/bench_scaling.py --nproc-per-node 8 --compare-to n1/scaling.json --out n8
    python bench/bench_scaling.py --from-json n8/scaling.json --compare-to n1/scaling.json --out n8
        (writes n8/compared.json)
CPU smoke test (gloo, tiny presets, 128-byte windows, no compile; about a minute on 2 cores):
    python bench/bench_scaling.py --smoke --nproc-per-node 2 --out /tmp/scaling

The settings (``--settings``, in the order they run):

* ``base-fsdp`` / ``base-ddp``: flat ``--base-preset`` (``base``) at ``--seq-len`` (8192),
  8 windows per rank (``--batch base-fsdp=4`` changes it); compiled as the trainer compiles (FSDP: each block;
  DDP: the whole training module), cuDNN attention and the chunked loss on CUDA (the settings
  of the best single-GPU MFU in bench/RESULTS.md);
* ``1b-fsdp`` / ``1b-ddp``: flat ``--big-preset`` (``1b``), the batches tried largest first
  until one fits, each in a fresh job (default 7,6,4: one H200 fits 7 with DDP, and the one-GPU
  reference must fit the same batch; ``--batch 1b-fsdp=8,7`` asks whether sharding fits 8);
* ``long-context-fsdp``: multiscale ``--long-preset`` (``long-context``) with stage 0 stretched to
  ``--long-context`` bytes (default 4M: one step takes ~24 s on an H200; the time per byte is
  flat from 2M to 64M, bench/RESULTS.md), batch 1, eager (compiling its blocks was 11% slower);
  its warm-up steps run at ``--long-warmup-context`` bytes so the measured steps are the long ones.

Per setting: bytes/s in total and per GPU, TFLOP/s and MFU per GPU (``model.flops_per_byte``,
PaLM convention, against ``--peak-tflops``, 989: dense bf16 of an H100/H200 SXM; on the CPU the
MFU is against the same GPU peak, i.e. meaningless but computed the same way), the peak memory
of every rank, the step time (rank 0's wall clock; every step ends with an all-reduce of the
loss, so the ranks are in step). ``OUT/scaling.json`` holds the rows, the environment, the
command and the world size.
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
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's omnibyte
from common import (  # noqa: E402
    H100_BF16_PEAK_FLOPS,
    busy_seconds,
    describe_environment,
    kernel_time_by_kind,
    kill_tree,
    print_table,
    synchronize,
    time_steps,
    write_json,
)

# name -> (family, which preset option, parallel mode, compiled on GPU, default batches per rank)
SETTINGS: dict[str, dict[str, Any]] = {
    "base-fsdp": dict(arch="flat", size="base", parallel="fsdp", compile=True, batches=[8]),
    "1b-fsdp": dict(arch="flat", size="big", parallel="fsdp", compile=True, batches=[7, 6, 4]),
    "base-ddp": dict(arch="flat", size="base", parallel="ddp", compile=True, batches=[8]),
    "1b-ddp": dict(arch="flat", size="big", parallel="ddp", compile=True, batches=[7, 6, 4]),
    "long-context-fsdp": dict(arch="multiscale", size="long", parallel="fsdp", compile=False, batches=[1]),
}
# the smoke's multiscale model trains in checkpointed pieces as `long-context` does (its own preset does not)
SMOKE_DEFAULTS = dict(base_preset="tiny", big_preset="tiny", long_preset="tiny", seq_len=128, long_context="1024",
                      long_set=["checkpoint_tokens=64", "checkpoint_layers=true"],
                      long_warmup_context="512", steps=2, warmup=1, long_steps=1, compile="off",
                      budget=300.0, setting_timeout=120.0, default_batch=2)
COLUMNS = ["setting", "preset", "world_size", "batch", "seq_len", "bytes_per_s", "bytes_per_s_per_gpu",
           "tflops_per_gpu", "mfu", "peak_gib", "step_s", "warmup_s", "efficiency", "first_oom", "error"]
SIZES = {"K": 2**10, "M": 2**20, "G": 2**30}
OOM_SIGNS = ("OutOfMemoryError", "out of memory", "GiB of GPU memory")  # the last: check_training_fits


def parse_size(text: str) -> int:
    """``4M`` -> 4,194,304; plain integers as they are."""
    text = text.strip().upper()
    return int(text[:-1]) * SIZES[text[-1]] if text and text[-1] in SIZES else int(text)


def parse_overrides(entries: list[str]) -> dict[str, Any]:
    """``KEY=JSON`` entries (a bare word is a string), as ``omnibyte train --set`` reads them."""
    overrides = {}
    for entry in entries:
        key, _, text = entry.partition("=")
        try:
            overrides[key] = json.loads(text)
        except ValueError:
            overrides[key] = text
    return overrides


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc-per-node", type=int, default=1, help="ranks (GPUs) per setting")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="in the order they run")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU smoke defaults: tiny presets, 128-byte windows, batch 2, no compile, gloo")
    parser.add_argument("--base-preset", default=None, help="flat preset of base-* (default: base)")
    parser.add_argument("--big-preset", default=None, help="flat preset of 1b-* (default: 1b)")
    parser.add_argument("--long-preset", default=None, help="multiscale preset (default: long-context)")
    parser.add_argument("--seq-len", type=int, default=None, help="flat settings' context (default: 8192)")
    parser.add_argument("--long-context", default=None, help="bytes, e.g. 4M, 16M, 64M (default: 4M)")
    parser.add_argument("--long-warmup-context", default=None, help="warm-up steps' context (default: 256K)")
    parser.add_argument("--long-set", action="append", default=None, metavar="KEY=JSON",
                        help="override a field of the multiscale config (repeatable), e.g. checkpoint_tokens=131072")
    parser.add_argument("--batch", action="append", default=[], metavar="SETTING=B[,B...]",
                        help="batches per rank to try, largest first (repeatable), e.g. 1b-fsdp=8,7")
    parser.add_argument("--steps", type=int, default=None, help="timed steps of flat settings (default: 6)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 2)")
    parser.add_argument("--long-steps", type=int, default=None, help="timed steps of long-context (default: 2)")
    parser.add_argument("--compile", choices=("auto", "off"), default=None,
                        help="auto: as each setting says (flat compiled); off: everything eager")
    parser.add_argument("--attention-backend", default=None,
                        help="flat settings' SDPA kernels (default: cudnn on CUDA, auto elsewhere)")
    parser.add_argument("--loss-chunk", type=int, default=8192, help="flat settings' loss chunk on CUDA (0: off)")
    parser.add_argument("--activation-checkpointing", default="none", choices=("none", "block", "selective"))
    parser.add_argument("--budget", type=float, default=None, help="seconds; no job starts after (default: 480)")
    parser.add_argument("--setting-timeout", type=float, default=None, help="seconds per job (default: 240)")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_PEAK_FLOPS / 1e12)
    parser.add_argument("--compare-to", type=Path, default=None, metavar="JSON",
                        help="a one-GPU scaling.json: adds the scaling efficiency of each setting")
    parser.add_argument("--from-json", type=Path, default=None, metavar="JSON",
                        help="run nothing: read the rows of this scaling.json (with --compare-to)")
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="after the timed steps, this many under torch.profiler: OUT/profiles/ per rank")
    parser.add_argument("--out", type=Path, default=None, help="folder for scaling.json and logs/")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # a job: one setting, one batch
    args = parser.parse_args(argv)
    defaults = dict(base_preset="base", big_preset="1b", long_preset="long-context", seq_len=8192,
                    long_context="4M", long_warmup_context="256K", steps=6, warmup=2, long_steps=2, compile="auto",
                    budget=480.0, setting_timeout=240.0, default_batch=None, long_set=[])
    if args.smoke:
        defaults.update(SMOKE_DEFAULTS)
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    return args


# ---- a job: one setting at one batch, on every rank ------------------------------------------

def build_model(job: dict[str, Any]):
    """The job's model on the meta device (the trainer materialises it on each rank's device)."""
    from omnibyte.models import make_config, model_class_for
    from omnibyte.train import parallel

    model_class = model_class_for(job["arch"])
    if job["arch"] == "flat":
        overrides = {}
        if job["seq_len"] > make_config("flat", job["preset"]).max_sequence_length:
            overrides["max_sequence_length"] = job["seq_len"]
        config = make_config("flat", job["preset"], **overrides)
    else:  # multiscale: stage 0's patch stretched so that the context is seq_len bytes
        document = {**make_config(job["arch"], job["preset"]).to_dict(), **job["config_overrides"]}
        inner = math.prod(stage["patch_size"] for stage in document["stages"][1:])
        document["stages"][0] = dict(document["stages"][0], patch_size=max(1, job["seq_len"] // inner))
        config = model_class.config_class.from_dict(document)
    return parallel.build_on_meta(lambda: model_class(config))


def random_corpus(num_bytes: int):
    import numpy as np

    from omnibyte.data import ByteCorpus, Document

    return ByteCorpus([Document("random.bin", np.random.default_rng(0).bytes(num_bytes))])


def train_config(job: dict[str, Any], seq_len: int):
    import torch

    from omnibyte.train.trainer import TrainConfig

    return TrainConfig(seq_len=seq_len, batch_size=job["batch"], steps=10**6, eval_every=0, save_every=0,
                       warmup_steps=100, device="cuda" if torch.cuda.is_available() else "cpu",
                       compile=job["compile"], parallel=job["parallel"], loss_chunk=job["loss_chunk"],
                       attention_backend=job["attention_backend"],
                       activation_checkpointing=job["activation_checkpointing"])


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """Warm-up steps (compilation happens there), then the timed ones; rank 0's row (the other
    ranks' rows hold the same numbers but only rank 0's is kept)."""
    import torch
    import torch.distributed as dist

    from omnibyte.train.trainer import Trainer

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    on_gpu = torch.cuda.is_available()
    seq_len, warmup_len = job["seq_len"], min(job["warmup_seq_len"] or job["seq_len"], job["seq_len"])
    corpus = random_corpus(max(32 << 20, 2 * seq_len + 2))
    out_dir = tempfile.mkdtemp(prefix="bench_scaling_")  # nothing is saved (save_every 0, no fit)
    trainer = Trainer(build_model(job), corpus, train_config(job, warmup_len), out_dir, progress=False)

    def timed_length() -> None:  # the same model, optimizer and parallel wrappers; longer windows
        if warmup_len != seq_len:
            trainer.config = train_config(job, seq_len)
            trainer.sampler = trainer.task.train_batches(corpus, seq_len, job["batch"], 0)

    warmup_s, step_s = time_steps(trainer.train_step, job["warmup"], job["steps"], before_timing=timed_length)
    world = trainer.world_size
    if job.get("profile_steps") and job.get("profile_dir"):
        profile_steps(trainer.train_step, job, world)
    peak = torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None
    peaks = [peak] * world
    if world > 1 and dist.is_initialized():
        dist.all_gather_object(peaks, peak)
    per_gpu = job["batch"] * seq_len / step_s
    flops_per_byte = trainer.model.flops_per_byte(seq_len)
    return {"setting": job["name"], "arch": job["arch"], "preset": job["preset"], "parallel": trainer.parallel_mode,
            "compile": job["compile"], "world_size": world, "batch": job["batch"], "seq_len": seq_len,
            "global_batch_bytes": job["batch"] * seq_len * world, "parameters": trainer.model.num_parameters(),
            "flops_per_byte": flops_per_byte, "step_s": step_s, "warmup_s": warmup_s,
            "bytes_per_s": per_gpu * world, "bytes_per_s_per_gpu": per_gpu,
            "tflops_per_gpu": flops_per_byte * per_gpu / 1e12,
            "mfu": flops_per_byte * per_gpu / (job["peak_tflops"] * 1e12),
            "peak_gib": max(peaks) if on_gpu else None, "peak_gib_per_rank": peaks,
            "device": str(trainer.device), "attention_backend": job["attention_backend"],
            "loss_chunk": job["loss_chunk"], "activation_checkpointing": job["activation_checkpointing"],
            "config_overrides": job["config_overrides"],
            "environment": describe_environment(trainer.device)}  # the launcher keeps one, drops the rest


def profile_steps(step: Any, job: dict[str, Any], world: int) -> None:
    """``job["profile_steps"]`` more steps under the profiler; this rank's summary (wall time,
    kernel time by kind, the time some kernel ran and the time a non-NCCL kernel ran, all per step)
    and its top kernels go to ``profile_dir``. Where the step is slower on N ranks than on one,
    this says whether the kernels themselves got slower or the GPU waited."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    import torch

    rank = int(os.environ.get("RANK", "0"))
    count = job["profile_steps"]
    activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * torch.cuda.is_available()
    synchronize()
    started = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        for _ in range(count):
            step()
        synchronize()
    wall = (time.perf_counter() - started) / count
    kinds, launches = kernel_time_by_kind(prof)
    summary = {"setting": job["name"], "world_size": world, "rank": rank, "batch": job["batch"],
               "seq_len": job["seq_len"], "profiled_steps": count, "wall_s_per_step": wall,
               "kernel_s_per_step": {kind: seconds / count for kind, seconds in kinds.items()},
               "kernel_launches_per_step": launches / count,
               "gpu_busy_s_per_step": busy_seconds(prof) / count,
               "compute_busy_s_per_step": busy_seconds(prof, lambda name: "nccl" not in name.lower()) / count}
    folder = Path(job["profile_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{job['name']}-n{world}-b{job['batch']}-rank{rank}"
    write_json(folder / f"{stem}.json", summary)
    sort_key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    (folder / f"{stem}.txt").write_text(prof.key_averages().table(sort_by=sort_key, row_limit=30))


def run_worker(job: dict[str, Any]) -> int:
    """Every rank: measure, then write ``rank-R.json`` (the row, or the error). A rank that
    fails exits at once so that torchrun stops the others instead of leaving them waiting in a
    collective."""
    rank = int(os.environ.get("RANK", "0"))
    result = Path(job["result_dir"]) / f"rank-{rank}.json"
    try:
        row = measure(job)
    except BaseException as error:  # noqa: BLE001 - recorded for the launcher, then a hard exit
        import traceback

        traceback.print_exc()
        message = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}"
        result.write_text(json.dumps({"rank": rank, "error": message}))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    result.write_text(json.dumps({"rank": rank, "row": row}))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


# ---- the launcher: every setting in its own job, within the budget ---------------------------

def job_command(ranks: int, job: dict[str, Any]) -> list[str]:
    worker = [__file__, "--worker", json.dumps(job)]
    if ranks == 1:
        return [sys.executable, *worker]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *worker]


def spawn(job: dict[str, Any], ranks: int, timeout: float, log: Path) -> dict[str, Any]:
    """One job; its row (rank 0's), or a row with the error: a rank's own message, a timeout,
    or the exit status with the log's last line."""
    base = {"setting": job["name"], "preset": job["preset"], "world_size": ranks, "batch": job["batch"],
            "seq_len": job["seq_len"]}
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder, open(log, "w") as output:
        job = {**job, "result_dir": folder}
        command = job_command(ranks, job)
        output.write("$ " + shlex.join(command) + "\n")
        output.flush()
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(process)
            return {**base, "error": f"timed out after {timeout:.0f} s"}
        except BaseException:  # stopped: the job's ranks must not outlive the launcher
            kill_tree(process)
            raise
        results = [json.loads(path.read_text()) for path in sorted(Path(folder).glob("rank-*.json"))]
    errors = [f"rank {result['rank']}: {result['error']}" for result in results if "error" in result]
    rows = [result["row"] for result in results if result.get("rank") == 0 and "row" in result]
    if errors:
        return {**base, "error": "; ".join(errors)[:300]}
    if returncode == 0 and rows:
        return rows[0]
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return {**base, "error": f"exit {returncode}: {(lines[-1] if lines else 'no output')[:200]}"}


def setting_job(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    setting = SETTINGS[name]
    on_gpu = torch.cuda.is_available()
    long = setting["arch"] == "multiscale"
    preset = {"base": args.base_preset, "big": args.big_preset, "long": args.long_preset}[setting["size"]]
    flat_backend = args.attention_backend or ("cudnn" if on_gpu else "auto")
    return {"name": name, "arch": setting["arch"], "preset": preset, "parallel": setting["parallel"],
            "compile": setting["compile"] and args.compile == "auto",
            "seq_len": parse_size(args.long_context) if long else args.seq_len,
            "warmup_seq_len": parse_size(args.long_warmup_context) if long else None,
            "config_overrides": parse_overrides(args.long_set) if long else {},
            "steps": args.long_steps if long else args.steps, "warmup": args.warmup,
            "attention_backend": "auto" if long else flat_backend,
            "loss_chunk": args.loss_chunk if on_gpu and not long else 0,
            "activation_checkpointing": args.activation_checkpointing, "peak_tflops": args.peak_tflops,
            "profile_steps": args.profile_steps, "profile_dir": str(args.out / "profiles") if args.out else None}


def batches_of(name: str, args: argparse.Namespace) -> list[int]:
    for entry in args.batch:
        key, _, values = entry.partition("=")
        if key == name:
            return [int(value) for value in values.split(",") if value]
    return [args.default_batch] if args.default_batch else list(SETTINGS[name]["batches"])


def run_setting(name: str, args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    """The setting at its batches, largest first, until one fits (each in a fresh job)."""
    job = setting_job(name, args)
    first_oom, row = None, None
    for batch in batches_of(name, args):
        left = deadline - time.monotonic()
        if left <= 20:
            return row or {"setting": name, "preset": job["preset"], "batch": batch, "error": "skipped (budget)"}
        log = args.out / "logs" / f"{name}-n{args.nproc_per_node}-b{batch}.log" if args.out else \
            Path(tempfile.mkdtemp()) / "job.log"
        # a job may run past the budget by a minute, never more: a long setting needs a budget to match
        timeout = min(args.setting_timeout, left + 60)
        row = spawn({**job, "batch": batch}, args.nproc_per_node, timeout, log)
        if timeout < args.setting_timeout and "timed out" in row.get("error", ""):
            row["error"] += f" (capped by --budget: {left:.0f} s left + 60)"
        row["log"] = str(log)
        if "error" not in row:
            row["first_oom"] = first_oom
            return row
        if not any(sign in row["error"] for sign in OOM_SIGNS):
            return row
        first_oom = batch
    return row


def add_efficiency(rows: list[dict[str, Any]], reference: dict[str, Any]) -> None:
    """``efficiency``: bytes/s per GPU over the reference's (same setting), and the batches."""
    by_setting = {row["setting"]: row for row in reference["rows"] if "error" not in row}
    for row in rows:
        one = by_setting.get(row["setting"])
        if one is None or "error" in row:
            continue
        row["efficiency"] = row["bytes_per_s_per_gpu"] / one["bytes_per_s_per_gpu"]
        row["reference_bytes_per_s_per_gpu"] = one["bytes_per_s_per_gpu"]
        row["reference_world_size"], row["reference_batch"] = one.get("world_size"), one.get("batch")


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SystemExit(f"cannot read {what} {path}: {error}")
    if not isinstance(payload, dict) or not isinstance(payload.get("rows"), list):
        raise SystemExit(f"{what} {path} holds no rows (not a scaling.json)")
    return payload


class Stopped(Exception):
    """SIGTERM (e.g. ``timeout`` around the launcher): the job in progress is killed, the rows
    so far are written."""


def raise_stopped(signal_number: int, frame: Any) -> None:
    raise Stopped()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return run_worker(json.loads(args.worker))
    names = [name for name in args.settings.split(",") if name]
    unknown = [name for name in names if name not in SETTINGS]
    if unknown or args.nproc_per_node < 1:
        print(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}" if unknown
              else "--nproc-per-node must be at least 1", file=sys.stderr)
        return 2
    reference = read_json(args.compare_to, "--compare-to") if args.compare_to else None
    started = time.monotonic()
    if args.from_json:
        payload = read_json(args.from_json, "--from-json")
        finish(payload, payload["rows"], reference, args, args.out and args.out / "compared.json")
        return 0
    import torch

    signal.signal(signal.SIGTERM, raise_stopped)
    # the GPU is described by a job's rank 0: a CUDA context in the launcher would hold memory
    # on GPU 0 while the jobs run
    payload = {"environment": {**describe_environment("cpu"), "gpu_count": torch.cuda.device_count(),
                               "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")},
               "command": shlex.join([sys.executable, *sys.argv]), "world_size": args.nproc_per_node,
               "arguments": {key: str(value) for key, value in vars(args).items()}, "complete": False}
    rows: list[dict[str, Any]] = []
    deadline = started + args.budget
    path = args.out and args.out / "scaling.json"
    try:
        for name in names:
            rows.append(run_setting(name, args, deadline))
            if "environment" in rows[-1]:
                payload["environment"].update(rows[-1].pop("environment"))
            print_table(rows[-1:], COLUMNS)
            payload["wall_s"] = time.monotonic() - started
            if path:  # what is measured so far survives a kill of the launcher
                write_json(path, {**payload, "rows": rows})
    except (Stopped, KeyboardInterrupt):
        rows += [{"setting": name, "error": "not run (stopped by a signal)"} for name in names[len(rows):]]
    payload.update(complete=True, wall_s=time.monotonic() - started)
    finish(payload, rows, reference, args, path)
    return 0


def finish(payload: dict[str, Any], rows: list[dict[str, Any]], reference: dict[str, Any] | None,
           args: argparse.Namespace, path: Path | None) -> None:
    """Efficiencies (with a reference), the table, the JSON. Rows read back with --from-json go
    into compared.json, beside the run's own scaling.json, never over it."""
    if reference is not None:
        add_efficiency(rows, reference)
        payload["reference"] = {"path": str(args.compare_to), "world_size": reference.get("world_size"),
                                "environment": reference.get("environment")}
    payload["rows"] = rows
    print_table(rows, COLUMNS, title=f"training throughput on {payload.get('world_size')} rank(s)")
    if path:
        write_json(path, payload)


if __name__ == "__main__":
    sys.exit(main())

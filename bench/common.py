"""Helpers shared by the bench scripts: environment description, CUDA-synchronised timing,
peak memory, a table printer and a JSON writer.

Bench scripts are run as files (``python bench/bench_x.py``), so they import this module with
``sys.path.insert(0, str(Path(__file__).resolve().parent))`` followed by ``from common import ...``.
"""
from __future__ import annotations

import datetime
import json
import platform
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

H100_BF16_PEAK_FLOPS = 989e12  # dense bf16 tensor-core peak of an H100 SXM


def describe_environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """Date, host, Python/torch versions and the accelerator used."""
    device = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(device)
        info.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    else:
        info.update(gpu=None, cpu=platform.processor() or platform.machine(),
                    threads=torch.get_num_threads())
    return info


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work (a no-op on CPU)."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], repeats: int = 1, warmup: int = 0,
              device: torch.device | str | None = None) -> float:
    """Seconds per call of ``fn`` after ``warmup`` untimed calls, GPU work included."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - started) / max(repeats, 1)


def time_steps(step: Callable[[], Any], warmup: int, steps: int,
               before_timing: Callable[[], None] | None = None) -> tuple[float, float]:
    """Training-style timing: (seconds of ``warmup`` untimed calls of ``step``, then
    ``before_timing``; seconds per call of ``steps`` timed ones). CUDA's peak memory statistics
    are reset before the timed calls, so a peak read afterwards is theirs."""
    started = time.perf_counter()
    for _ in range(warmup):
        step()
    if before_timing is not None:
        before_timing()
    synchronize()
    warmup_s = time.perf_counter() - started
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    return warmup_s, time_call(step, repeats=steps)


def reset_peak_memory(device: torch.device | str | None = None) -> None:
    if torch.device(device or "cpu").type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device | str | None = None) -> float | None:
    """Peak CUDA memory allocated since the last reset, in GiB (None off CUDA)."""
    if torch.device(device or "cpu").type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
        return f"{value:.3e}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> None:
    """Print ``rows`` (dicts) as an aligned text table of ``columns``."""
    cells = [[format_value(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("  ".join(column.rjust(width) for column, width in zip(columns, widths)))
    print("  ".join("-" * width for width in widths))
    for line in cells:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths)))


def write_json(path: str | Path | None, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON (atomically); ``None`` writes nothing."""
    if not path:
        return
    from omnibyte.fileio import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(payload, indent=2, default=str) + "\n").encode())
    print(f"wrote {path}")


# ---- process trees (torchrun's ranks run in sessions of their own) ---------------------------

def descendants(pid: int) -> list[int]:
    """The processes below ``pid``, children first, read from /proc (Linux). torchrun's ranks
    run in sessions of their own, so killing the launcher's process group would miss them."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in children.get(parent, [])]
        found += frontier
    return found


def process_alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its parent)."""
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split() or ["Z"])[0] != "Z"
    except OSError:
        return False


def kill_tree(process, wait_s: float = 30.0) -> None:
    """SIGKILL a ``subprocess.Popen`` and everything below it, then wait until they are gone."""
    import os
    import signal

    pids = [process.pid, *descendants(process.pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()
    deadline = time.time() + wait_s
    while time.time() < deadline and any(process_alive(pid) for pid in pids[1:]):
        time.sleep(0.05)


def kernel_kind(name: str) -> str:
    """A GPU kernel's kind from its name (cuBLAS/cuDNN/NCCL/inductor naming)."""
    name = name.lower()
    if "nccl" in name:
        return "communication (nccl)"
    if any(key in name for key in ("flash", "fmha", "attention", "sdpa")):
        return "attention (flash/efficient)"
    if any(key in name for key in ("gemm", "cutlass", "sm90", "xmma", "cublas", "nvjet")):
        return "matmul (gemm)"
    if "embedding" in name:
        return "embedding_bag"
    if any(key in name for key in ("softmax", "nll", "cross")):
        return "loss (softmax, nll)"
    return "norm, rope, swiglu, adds, casts (element-wise)"


def gpu_kernels(prof: Any) -> list[Any]:
    """The events of a finished ``torch.profiler`` run that ran on the GPU (kernels, copies):
    not the CPU-side ops that launched them, which key_averages() also charges with GPU time
    (a Triton kernel's launcher has the kernel's name; ``nccl:*`` and ``record_param_comms``
    carry their collective's time), nor the profiler's own "Command Buffer Full" stalls."""
    return [event for event in prof.events()
            if str(getattr(event, "device_type", "")).endswith("CUDA") and not event.name.startswith("Command Buffer")]


def kernel_time_by_kind(prof: Any) -> tuple[dict[str, float], int]:
    """Seconds of GPU kernel time by ``kernel_kind`` in a finished ``torch.profiler`` run, and the
    number of kernel launches."""
    kinds: dict[str, float] = {}
    kernels = gpu_kernels(prof)
    for event in kernels:
        kind = kernel_kind(event.name)
        kinds[kind] = kinds.get(kind, 0.0) + (event.time_range.end - event.time_range.start) / 1e6
    return kinds, len(kernels)


def busy_seconds(prof: Any, include: Callable[[str], bool] = lambda name: True) -> float:
    """Seconds in which at least one GPU kernel accepted by ``include`` ran (the union of their
    intervals over all streams): kernels that overlap, as NCCL's do with compute, count once."""
    intervals = sorted((event.time_range.start, event.time_range.end) for event in gpu_kernels(prof)
                       if include(event.name))
    total, current_start, current_end = 0.0, None, None
    for start, end in intervals:
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total / 1e6


def validate_times(count: int) -> Callable[[Any], None]:
    """A trainer callback that spreads ``count`` validations over the steps planned so far (for
    runs whose steps the trainer fits to a time budget, ``fit_steps_to_time``)."""
    def spread(trainer: Any) -> None:
        trainer.config.eval_every = max(trainer.config.steps // count, 1)

    return spread

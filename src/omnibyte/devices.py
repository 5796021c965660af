"""Choosing the device, the autocast dtype and the number of CPU threads."""
from __future__ import annotations

import contextlib
import math
import os
import re
from pathlib import Path
from typing import Callable, Iterable

import torch

from omnibyte.errors import OmnibyteError

DEVICE_NAME = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; 'cpu', 'cuda', 'cuda:N' and 'mps' are checked
    against what this machine has, so an unusable device is one line, not a traceback later."""
    if not isinstance(name, str) or not DEVICE_NAME.match(name):
        raise OmnibyteError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OmnibyteError(f"--device {name} asked for, but no CUDA GPU is available")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise OmnibyteError(f"--device {name} asked for, but this machine has "
                                f"{torch.cuda.device_count()} CUDA GPU(s)")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise OmnibyteError("--device mps asked for, but Apple's MPS is not available here")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA; a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---- CPU threads ----------------------------------------------------------------------------
# torch starts one intra-op thread per logical CPU of the machine. On a laptop with SMT, or
# under a CPU quota, or next to a busy process, that oversubscribes the cores: OpenMP threads
# spin waiting for each other, and a training step can take ten times longer. omnibyte uses one
# thread per physical core the process may run on instead.

SYSFS_CPUS = Path("/sys/devices/system/cpu")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def allowed_cpus() -> set[int]:
    """The logical CPUs this process may run on (its affinity; all of them where unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def core_of_cpu(cpu: int, sysfs: Path = SYSFS_CPUS) -> tuple[int, int] | None:
    """(package, core) of a logical CPU from sysfs; None where the topology is not readable."""
    topology = sysfs / f"cpu{cpu}" / "topology"
    try:
        package = int((topology / "physical_package_id").read_text())
        core = int((topology / "core_id").read_text())
    except (OSError, ValueError):
        return None
    return package, core


def cpu_quota(cgroup: Path = CGROUP_ROOT) -> float | None:
    """CPUs' worth of time the cgroup grants per period (``docker --cpus``); None: no quota."""
    try:  # cgroup v2: "max 100000" or "200000 100000"
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def choose_cpu_threads(
    cpus: Iterable[int],
    core_of: Callable[[int], tuple[int, int] | None],
    omp_num_threads: str | None = None,
    quota: float | None = None,
) -> tuple[int, int]:
    """(intra-op, inter-op) threads for a process that may run on ``cpus``.

    Intra-op: ``OMP_NUM_THREADS`` when it is set to a positive integer (the user chose);
    otherwise one per physical core among ``cpus`` (SMT siblings share a core, so they count
    once; a CPU of unknown topology counts as a core of its own), at most the CPU quota
    (rounded down, at least 1). Inter-op: 1, as omnibyte runs one operator at a time (eager
    training and decoding), so a second pool would only compete with the first."""
    if omp_num_threads is not None:
        with contextlib.suppress(ValueError):
            requested = int(omp_num_threads.strip().split(",")[0])
            if requested >= 1:
                return requested, 1
    cores = {core_of(cpu) or ("cpu", cpu) for cpu in cpus}
    threads = max(1, len(cores))
    if quota is not None and quota > 0:
        threads = min(threads, max(1, math.floor(quota)))
    return threads, 1


_interop_set = False


def configure_cpu_threads() -> int:
    """Set torch's intra-op threads (and, while that is still possible, its inter-op threads)
    per ``choose_cpu_threads`` for this process; returns the intra-op count in force.

    Never raises the count: a lower one was chosen by the user (``torch.set_num_threads``),
    and is kept. Called by the CLI at start and by the Trainer on CPU."""
    global _interop_set
    cpus = allowed_cpus()
    intra, inter = choose_cpu_threads(cpus, core_of_cpu, os.environ.get("OMP_NUM_THREADS"), cpu_quota())
    if intra < torch.get_num_threads():
        torch.set_num_threads(intra)
    if not _interop_set:
        _interop_set = True
        with contextlib.suppress(RuntimeError):  # only possible before any inter-op work started
            torch.set_num_interop_threads(inter)
    return torch.get_num_threads()


# ---- the CPU allocator ---------------------------------------------------------------------------
# glibc serves blocks above its mmap threshold (128 KiB, rising to at most 32 MiB as such blocks
# are freed) with fresh mmaps and returns freed heap tops to the system, so a loop that makes and
# frees large tensors zero-fills new pages on every pass. Integer coding does exactly that: a
# 21 KB file spent 41 of its 72 s in the kernel (23M page faults), 0.1 s with these settings
# (bench/RESULTS.md, "CPU decoding speed"). `omnibyte compress`/`decompress` keep blocks up to
# 32 MiB in the heap and never trim it, so their memory stays at its peak until they exit.
MALLOC_MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
MALLOC_TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def configure_cpu_allocator() -> bool:
    """Keep freed memory for reuse (glibc's ``mallopt``); True when set. Left alone where the user
    tuned malloc (``MALLOC_*_`` or ``GLIBC_TUNABLES``) and where the C library is not glibc.
    Called by the CLI for compress and decompress; a program that uses the API may call it too."""
    import ctypes
    import ctypes.util

    if any(name.startswith("MALLOC_") for name in os.environ) or "GLIBC_TUNABLES" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt, Windows)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD))


# ---- attention kernels for training -----------------------------------------------------------
ATTENTION_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math")


def attention_backend(name: str = "auto"):
    """Context that restricts ``scaled_dot_product_attention`` to one kernel family (``auto``:
    PyTorch's own choice). Training shapes are fixed, so cuDNN's per-shape plan is built once."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kinds = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    if name not in kinds:
        raise OmnibyteError(f"unknown attention backend {name!r} (choose from {', '.join(ATTENTION_BACKENDS)})")
    return sdpa_kernel(kinds[name])


def check_training_fits(estimate: int | None, device: torch.device, what: str) -> None:
    """Refuse, in one line, a training step whose estimated peak memory (``estimate`` bytes,
    from ``ByteModel.training_memory``) is more than the GPU has: an out-of-memory error half-way
    through a long step costs minutes and can leave the process unusable. ``what`` names the
    step's shape for the message."""
    if estimate is None or device.type != "cuda":
        return
    free, _ = torch.cuda.mem_get_info(device)
    available = free + torch.cuda.memory_reserved(device)  # what this process holds counts too
    if estimate > available:
        raise OmnibyteError(f"a training step of {what} needs about {estimate / 2**30:,.1f} GiB of GPU memory "
                            f"(estimated), more than the {available / 2**30:,.1f} GiB {device} has free: "
                            f"lower --seq-len or --batch-size")

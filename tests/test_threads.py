"""CPU threads: one per physical core the process may use, OMP_NUM_THREADS and CPU quotas
respected, never more than the user already chose; unknown devices are one line; glibc's
allocator kept from returning memory for compression."""
import os
import platform

import pytest
import torch

from omnibyte import devices
from omnibyte.devices import choose_cpu_threads, core_of_cpu, cpu_quota
from omnibyte.errors import OmnibyteError


def smt_machine(cores: int, threads_per_core: int = 2):
    """Logical CPU -> (package, core) of a machine whose siblings are numbered like Linux does
    (cpu N and cpu N + cores share a core)."""
    return lambda cpu: (0, cpu % cores)


@pytest.mark.parametrize("cpus, core_of, omp, quota, expected", [
    (range(8), smt_machine(4), None, None, (4, 1)),  # SMT siblings count once
    (range(4), smt_machine(4), None, None, (4, 1)),  # no SMT
    ({0, 4}, smt_machine(4), None, None, (1, 1)),  # affinity: two siblings of one core
    ({0, 1, 4, 5}, smt_machine(4), None, None, (2, 1)),
    (range(2), lambda cpu: None, None, None, (2, 1)),  # unknown topology: each CPU a core
    (range(16), smt_machine(8), "3", None, (3, 1)),  # the user's OMP_NUM_THREADS wins
    (range(16), smt_machine(8), " 2,1", None, (2, 1)),  # nested OpenMP lists: the outer level
    (range(16), smt_machine(8), "0", None, (8, 1)),  # nonsense is ignored
    (range(16), smt_machine(8), "many", None, (8, 1)),
    (range(16), smt_machine(8), None, 2.5, (2, 1)),  # docker --cpus=2.5
    (range(16), smt_machine(8), None, 0.5, (1, 1)),
    (range(2), smt_machine(2), None, 64.0, (2, 1)),
    (set(), smt_machine(2), None, None, (1, 1)),
])
def test_thread_choice(cpus, core_of, omp, quota, expected):
    assert choose_cpu_threads(cpus, core_of, omp, quota) == expected


def test_topology_and_quota_are_read_from_sysfs_and_cgroups(tmp_path):
    for cpu, (package, core) in enumerate([(0, 0), (0, 1), (0, 0), (0, 1)]):
        topology = tmp_path / "cpu" / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")
    assert [core_of_cpu(cpu, tmp_path / "cpu") for cpu in range(5)] == [(0, 0), (0, 1), (0, 0), (0, 1), None]
    assert choose_cpu_threads(range(4), lambda cpu: core_of_cpu(cpu, tmp_path / "cpu")) == (2, 1)
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    assert cpu_quota(cgroup) is None
    (cgroup / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(cgroup) is None
    (cgroup / "cpu.max").write_text("150000 100000\n")
    assert cpu_quota(cgroup) == 1.5
    (cgroup / "cpu.max").unlink()
    (cgroup / "cpu").mkdir()
    (cgroup / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (cgroup / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(cgroup) is None
    (cgroup / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    assert cpu_quota(cgroup) == 4.0


def test_configure_lowers_but_never_raises_the_thread_count(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(devices, "allowed_cpus", lambda: {0, 1, 2, 3})
        monkeypatch.setattr(devices, "core_of_cpu", lambda cpu: (0, cpu // 4))  # 4 CPUs, one core
        monkeypatch.setattr(devices, "cpu_quota", lambda: None)
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(2)
        assert devices.configure_cpu_threads() == 1
        assert torch.get_num_threads() == 1
        monkeypatch.setattr(devices, "core_of_cpu", lambda cpu: (0, cpu))  # 4 cores now
        assert devices.configure_cpu_threads() == 1  # the lower count chosen before stays
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "CPU", "", "mps:0"])
def test_unknown_devices_are_one_line(name):
    with pytest.raises(OmnibyteError, match="unknown device") as error:
        devices.resolve_device(name)
    assert "\n" not in str(error.value)


def test_unavailable_devices_are_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(OmnibyteError, match="no CUDA GPU"):
        devices.resolve_device("cuda:1")
    if not torch.backends.mps.is_available():
        with pytest.raises(OmnibyteError, match="MPS is not available"):
            devices.resolve_device("mps")
    assert devices.resolve_device("cpu").type == "cpu"


GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_the_allocator_keeps_freed_memory_unless_the_user_tuned_malloc(monkeypatch):
    """On glibc the CLI raises malloc's mmap and trim thresholds (integer coding re-made its
    large temporaries from fresh zero pages on every pass); a user's own malloc settings win."""
    for name in [name for name in os.environ if name.startswith("MALLOC_")] + ["GLIBC_TUNABLES"]:
        monkeypatch.delenv(name, raising=False)
    assert devices.configure_cpu_allocator() is True
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert devices.configure_cpu_allocator() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert devices.configure_cpu_allocator() is False


def test_the_cli_configures_the_allocator_for_coding_only(monkeypatch, tmp_path, capsys):
    from omnibyte import cli

    calls = []
    monkeypatch.setattr(cli, "configure_cpu_allocator", lambda: calls.append(True) or True)
    assert cli.main(["info"]) == 0 and calls == []
    assert cli.main(["decompress", str(tmp_path / "missing.omb")]) == 2 and calls == [True]

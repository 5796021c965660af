"""decode_attention (models/decode_attention.py): what can be checked without running Triton,
and the kernel itself under Triton's interpreter, in a process of its own
(tests/decode_attention_interpreted.py says why)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omnibyte.models import decode_attention

REPOSITORY = Path(__file__).resolve().parents[1]
INTERPRETED_CHECKS = REPOSITORY / "tests" / "decode_attention_interpreted.py"
BENCH = REPOSITORY / "bench" / "bench_decode_attention.py"
needs_triton = pytest.mark.skipif(not decode_attention.triton_available(), reason="Triton is not installed")


@pytest.mark.slow
@needs_triton
def test_kernel_under_the_triton_interpreter():
    environment = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(INTERPRETED_CHECKS)],
                            capture_output=True, text=True, env=environment, cwd=REPOSITORY)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


# generation through the kernel, then: the kernel ran (it counts its calls) and torch._dynamo was
# never imported (a custom op's first call imports it: seconds of a short run's start-up)
GENERATE_WITHOUT_DYNAMO = """
import sys
from omnibyte.models import build_model, decode_attention
calls = []
run = decode_attention._run_kernels
decode_attention._run_kernels = lambda *args: calls.append(1) or run(*args)
build_model("flat", "tiny").generate(b"abc", 5, seed=0, fast=True)
assert calls, "the kernel did not run"
assert "torch._dynamo" not in sys.modules, "torch._dynamo was imported"
"""


@pytest.mark.slow
@needs_triton
def test_generating_through_the_kernel_does_not_import_dynamo():
    environment = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", GENERATE_WITHOUT_DYNAMO], capture_output=True, text=True,
                            env=environment, cwd=REPOSITORY)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
@needs_triton
def test_bench_smoke_run_on_the_interpreter(tmp_path):
    """The GPU benchmark's code path, on tiny shapes: both backends agree with the reference."""
    result = subprocess.run([sys.executable, str(BENCH), "--device", "cpu", "--interpret", "--presets", "small",
                             "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPOSITORY)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads((tmp_path / "decode_attention.json").read_text())["rows"]
    assert len(rows) == 2 and all(row["matches"] and row["triton_max_diff"] < 2e-3 for row in rows)


def test_fake_implementation_gives_the_shape_without_running():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 3, 8, 32, dtype=torch.bfloat16)
        keys = torch.empty(2, 2, 100, 32, dtype=torch.bfloat16)
        # the op torch.compile records (an eager call runs the kernels directly)
        out = torch.ops.omnibyte.decode_attention(q, keys, keys, torch.zeros(2, 3, dtype=torch.long), 0.125, 2)
    assert out.shape == (2, 8, 3, 32) and out.dtype == torch.bfloat16


def test_usable_only_where_the_kernel_applies(monkeypatch):
    q, keys = torch.zeros(1, 1, 8, 64), torch.zeros(1, 2, 32, 64)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not decode_attention.usable(q, keys)  # CPU tensors, no interpreter
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert decode_attention.usable(q, keys) == decode_attention.triton_available()
    refused = {
        "head size not a power of two": (torch.zeros(1, 1, 8, 48), torch.zeros(1, 2, 32, 48)),
        "head size under 16": (torch.zeros(1, 1, 8, 8), torch.zeros(1, 2, 32, 8)),
        "more than 16 new tokens": (torch.zeros(1, 17, 8, 64), keys),
        "heads not a multiple of kv heads": (torch.zeros(1, 1, 6, 64), torch.zeros(1, 4, 32, 64)),
        "integer dtype": (q.long(), keys.long()),
    }
    for reason, (queries, cache) in refused.items():
        assert not decode_attention.usable(queries, cache), reason
    monkeypatch.setattr(decode_attention, "triton_available", lambda: False)
    assert not decode_attention.usable(q, keys)


def test_set_backend_refuses_unknown_names():
    with pytest.raises(ValueError, match="triton, sdpa"):
        decode_attention.set_backend("cudnn")



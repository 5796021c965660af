"""The README's examples run as written: its Python block, and its CPU command-line block.

Each runs in a fresh folder (they write ``runs/...`` and a few files), as a separate process,
under a time limit well above the minute they take on an idle 2-core CPU.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
TIME_LIMIT_S = 600  # a busy CI machine is several times slower than an idle laptop


def code_block(section: str, language: str) -> str:
    """The first ```language block after the ``## section`` heading."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    match = re.compile(rf"```{language}\n(.*?)```", re.DOTALL).search(text, start)
    assert match is not None, f"no {language} block in section {section!r}"
    return match.group(1)


def test_the_python_example_uses_a_cpu_sized_model_and_files_that_exist():
    code = code_block("Python", "python")
    assert '"tiny"' in code and '"small"' not in code.split("#")[0]
    assert "sysconfig" in code and "device=\"cpu\"" in code


def test_readme_python_block_runs_as_written(tmp_path):
    script = tmp_path / "readme_example.py"
    script.write_text(code_block("Python", "python"))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=TIME_LIMIT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "detected kind: code" in result.stdout
    assert (tmp_path / "runs" / "readme" / "model.safetensors").exists()


def test_readme_command_line_block_runs_as_written(tmp_path):
    script = "set -euo pipefail\n" + code_block("Command line", "bash")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env,
                            timeout=TIME_LIMIT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("out.py", "s-0.txt", "s-3.txt", "tool.py.omb", "tool.py", "tool.png", "patches.png"):
        assert (tmp_path / name).exists(), name
    stdlib = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
                            capture_output=True, text=True).stdout.strip()
    assert (tmp_path / "tool.py").read_bytes() == (Path(stdlib) / "json" / "tool.py").read_bytes()

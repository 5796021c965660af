"""The CLI contract: train / eval / generate / info, and one-line errors on bad input."""
import json
import subprocess
import sys

import pytest

from omnibyte.cli import main

TEXT = b"hello byte world, " * 300


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "data").mkdir()
    (root / "data" / "a.txt").write_bytes(TEXT)
    (root / "data" / "b.py").write_bytes(b"def f(x):\n    return x + 1\n" * 50)
    out = root / "run"
    code = main(["train", str(root / "data"), "--arch", "flat", "--preset", "tiny", "--seq-len", "64",
                 "--batch-size", "4", "--steps", "6", "--out", str(out), "--device", "cpu",
                 "--no-progress", "--eval-every", "3", "--val-fraction", "0"])
    assert code == 0
    return root, out


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "omnibyte.cli", *args], capture_output=True, text=True)


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("omnibyte: error:")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_train_writes_a_complete_run_and_resume_continues(trained):
    root, out = trained
    for name in ("config.json", "model.safetensors", "trainer_state.safetensors", "metrics.jsonl",
                 "loss_curve.png", "train_config.json"):
        assert (out / name).exists(), name
    assert main(["train", str(root / "data"), "--out", str(out), "--resume", "--steps", "8",
                 "--no-progress", "--val-fraction", "0"]) == 0
    info = json.loads(subprocess.run([sys.executable, "-m", "omnibyte.cli", "info", "--model", str(out), "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["trained_steps"] == 8 and info["arch"] == "flat"


def test_eval_json_reports_bits_per_byte_per_type(trained, capsys):
    root, out = trained
    assert main(["eval", "--model", str(out), str(root / "data"), "--json", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0 < report["bits_per_byte"] < 8.5
    assert set(report["by_type"]) == {".txt", ".py"}
    assert report["bytes"] == len(TEXT) + len(b"def f(x):\n    return x + 1\n" * 50)
    assert 0 <= report["accuracy"] <= 1 and report["min_true_byte_prob"] <= report["max_true_byte_prob"]


def test_generate_writes_bytes_to_file_and_stdout(trained, tmp_path):
    _, out = trained
    target = tmp_path / "sample.bin"
    assert main(["generate", "--model", str(out), "--prompt", "hello", "--max-bytes", "40", "--seed", "1",
                 "-o", str(target), "--device", "cpu"]) == 0
    assert len(target.read_bytes()) == 40
    result = subprocess.run([sys.executable, "-m", "omnibyte.cli", "generate", "--model", str(out), "--prompt",
                             "hello", "--max-bytes", "40", "--seed", "1", "--device", "cpu"], capture_output=True)
    assert result.returncode == 0 and result.stdout == target.read_bytes()


def generate(out, *args: str) -> int:
    return main(["generate", "--model", str(out), "--device", "cpu", "--max-bytes", "12", *args])


def test_generate_several_prompts_and_samples_write_numbered_files(trained, tmp_path, capsys):
    _, out = trained
    (tmp_path / "prompt.bin").write_bytes(b"def f(")
    target = tmp_path / "batch.bin"
    assert generate(out, "--prompt", "hello", "--prompt-file", str(tmp_path / "prompt.bin"), "--prompt", "",
                    "--num-samples", "2", "--seed", "7", "-o", str(target)) == 0
    files = sorted(tmp_path.glob("batch-*.bin"))
    assert [path.name for path in files] == [f"batch-{k}.bin" for k in range(6)]
    assert all(len(path.read_bytes()) == 12 for path in files)
    assert capsys.readouterr().err.count("wrote 12 bytes") == 6

    # same seed, same samples
    again = tmp_path / "again" / "batch.bin"
    assert generate(out, "--prompt", "hello", "--prompt-file", str(tmp_path / "prompt.bin"), "--prompt", "",
                    "--num-samples", "2", "--seed", "7", "-o", str(again)) == 0
    assert [path.read_bytes() for path in sorted(again.parent.glob("batch-*.bin"))] == [
        path.read_bytes() for path in files]

    # sample K of the batch (prompts in command-line order, N samples each) is prompt K // 2 alone
    # with seed 7 + K
    prompts = ["hello", "def f(", ""]
    for k, path in enumerate(files):
        alone = tmp_path / f"alone-{k}.bin"
        assert generate(out, "--prompt", prompts[k // 2], "--seed", str(7 + k), "-o", str(alone)) == 0
        assert alone.read_bytes() == path.read_bytes(), k


def test_generate_several_samples_to_stdout_under_headers(trained, capsysbinary):
    _, out = trained
    assert generate(out, "--prompt", "a", "--prompt", "b", "--seed", "3", "--temperature", "0") == 0
    text = capsysbinary.readouterr().out
    assert text.startswith(b"==> sample 0 (prompt 0) <==\n")
    first, second = text.split(b"==> sample 1 (prompt 1) <==\n")
    assert len(first) == len(b"==> sample 0 (prompt 0) <==\n") + 12 + 1 and len(second) == 12 + 1


def test_generate_refuses_to_overwrite_numbered_files_without_force(trained, tmp_path, capsys):
    _, out = trained
    (tmp_path / "s-1.txt").write_bytes(b"keep me")
    args = ["--prompt", "x", "--num-samples", "2", "--seed", "0", "-o", str(tmp_path / "s.txt")]
    assert generate(out, *args) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "s-1.txt exists" in error[0] and "--force" in error[0]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["s-1.txt"]
    assert generate(out, *args, "--force") == 0
    assert len((tmp_path / "s-0.txt").read_bytes()) == 12 and len((tmp_path / "s-1.txt").read_bytes()) == 12


def test_generate_option_errors_are_one_line(trained, tmp_path):
    _, out = trained
    assert_one_line_error(run_cli("generate", "--model", str(out), "--num-samples", "0"), "--num-samples")
    assert_one_line_error(run_cli("generate", "--model", str(out), "--prompt-file", str(tmp_path / "nope")),
                          "nope", "No such file")


def test_missing_path_and_empty_folder(tmp_path):
    assert_one_line_error(run_cli("train", str(tmp_path / "nope"), "--out", str(tmp_path / "r")), "nope")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("train", str(tmp_path / "empty"), "--out", str(tmp_path / "r")))


def test_corrupt_foreign_and_missing_checkpoints(trained, tmp_path):
    _, out = trained
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((out / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes()[:300])
    assert_one_line_error(run_cli("info", "--model", str(corrupt)), "model.safetensors")

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    assert_one_line_error(run_cli("eval", "--model", str(foreign), str(tmp_path)), "not an omnibyte config")

    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    document = json.loads((out / "config.json").read_text())
    document["config"]["num_layers"] = 5
    (mismatched / "config.json").write_text(json.dumps(document))
    (mismatched / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    assert_one_line_error(run_cli("generate", "--model", str(mismatched)), "does not match")

    assert_one_line_error(run_cli("info", "--model", str(tmp_path / "absent")), "not found")


def test_invalid_config_and_options(tmp_path):
    data = tmp_path / "d.txt"
    data.write_bytes(TEXT)
    assert_one_line_error(run_cli("train", str(data), "--out", str(tmp_path / "r"), "--set",
                                  "num_key_value_heads=3"), "num_key_value_heads")
    assert_one_line_error(run_cli("train", str(data), "--out", str(tmp_path / "r"), "--arch", "lstm"), "lstm")
    assert_one_line_error(run_cli("train", str(data), "--out", str(tmp_path / "r"), "--steps", "0"), "steps")
    assert_one_line_error(run_cli("train", str(data), "--out", str(tmp_path / "r"), "--seq-len", "4096"),
                          "context")


def test_demo_trains_reports_and_samples(tmp_path, capsys):
    assert main(["demo", "--minutes", "0.05", "--out", str(tmp_path / "demo"), "--device", "cpu"]) == 0
    output = capsys.readouterr().out
    assert "held-out bits/byte" in output and "sample" in output
    assert (tmp_path / "demo" / "model.safetensors").exists()


def test_ci_runs_the_readme_test_command():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    command = (root / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert command in (root / "README.md").read_text()

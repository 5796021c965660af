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
    (tmp_path / "again").mkdir()
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


def test_generate_speculative_writes_the_same_samples(trained, capsysbinary):
    _, out = trained
    prompt = "hello hello hello hello "
    outputs = []
    for speculative in ([], ["--speculative"]):  # two samples (batched), then one streamed to stdout
        assert generate(out, "--prompt", prompt, "--num-samples", "2", "--seed", "5", *speculative) == 0
        assert generate(out, "--prompt", prompt, "--seed", "5", *speculative) == 0
        outputs.append(capsysbinary.readouterr().out)
    assert outputs[0].count(b"==> sample") == 2
    assert outputs[1] == outputs[0]


@pytest.mark.slow  # compiles the trained model's step (seconds on 2 CPU cores)
def test_generate_compiled_writes_the_same_samples(trained, capsysbinary):
    _, out = trained
    outputs = []
    for compiled in ([], ["--compile"]):  # the CPU decodes plainly, or with fast, compiled steps
        assert generate(out, "--prompt", "hello", "--num-samples", "2", "--seed", "5", *compiled) == 0
        outputs.append(capsysbinary.readouterr().out)
    assert outputs[0].count(b"==> sample") == 2 and outputs[1] == outputs[0]


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


def test_ci_runs_the_readme_test_command():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    command = (root / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert command in (root / "README.md").read_text()


# ---- the first hour: conventions --------------------------------------------------------

def subcommand_parsers():
    """(name, parser) of every subcommand."""
    import argparse

    from omnibyte.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, list(action.choices.items())


def test_version(capsys):
    import omnibyte

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"omnibyte {omnibyte.__version__}"


def test_every_option_of_every_command_has_help_text():
    parser, commands = subcommand_parsers()
    missing = [f"omnibyte {name} {' '.join(action.option_strings) or action.dest}"
               for name, sub in [("", parser), *commands] for action in sub._actions
               if not (action.help or "").strip()]
    assert not missing, missing
    assert {name for name, _ in commands} >= {"train", "eval", "generate", "info", "demo", "detect", "anomaly"}


def test_help_shows_defaults(capsys):
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--steps N|auto optimizer steps in all" in text and "(default: 1000)" in text and "(default: 0.05)" in text
    assert main(["generate", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 256)" in text and "(default: None)" not in text and "(default: False)" not in text


def test_an_option_name_means_one_thing_in_every_command():
    """--batch-size, --context and --max-bytes: the commands that have them share their help text."""
    from omnibyte.cli.common import BATCH_SIZE_HELP, CONTEXT_HELP

    _, commands = subcommand_parsers()
    helps: dict[str, dict[str, str]] = {}
    for name, sub in commands:
        for action in sub._actions:
            for option in action.option_strings:
                helps.setdefault(option, {})[name] = action.help or ""
    assert all(text.startswith(BATCH_SIZE_HELP) for text in helps["--batch-size"].values()), helps["--batch-size"]
    assert "compress" in helps["--batch-size"]
    assert set(helps["--context"].values()) == {CONTEXT_HELP}
    assert set(helps["--max-bytes"]) == {"generate"}


def test_unknown_and_missing_devices_are_one_line(trained, tmp_path):
    _, out = trained
    assert_one_line_error(run_cli("info", "--model", str(out), "--device", "cpu"))  # info has no --device
    assert_one_line_error(run_cli("eval", "--model", str(out), str(tmp_path), "--device", "mps"), "mps")
    assert_one_line_error(run_cli("generate", "--model", str(out), "--device", "tpu"), "tpu")


def test_load_cli_model_refuses_devices_torch_knows_but_omnibyte_does_not(trained):
    import argparse

    from omnibyte.cli.common import load_cli_model
    from omnibyte.errors import OmnibyteError

    _, out = trained
    with pytest.raises(OmnibyteError, match="unknown device 'meta'"):
        load_cli_model(argparse.Namespace(model=out, device="meta"))


def test_only_rank_zero_prints(trained, capsys, monkeypatch):
    _, out = trained
    monkeypatch.setenv("RANK", "1")
    assert main(["info", "--model", str(out)]) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    assert main(["info", "--model", str(out)]) == 0
    assert "architecture" in capsys.readouterr().out


def test_eval_per_file_adds_a_row_per_file(trained, capsys):
    root, out = trained
    assert main(["eval", "--model", str(out), str(root / "data"), "--device", "cpu"]) == 0
    plain = capsys.readouterr().out
    assert main(["eval", "--model", str(out), str(root / "data"), "--device", "cpu", "--per-file"]) == 0
    per_file = capsys.readouterr().out
    assert "a.txt" not in plain and "a.txt" in per_file and "b.py" in per_file
    assert main(["eval", "--model", str(out), str(root / "data"), "--device", "cpu", "--json", "--per-file"]) == 0
    assert len(json.loads(capsys.readouterr().out)["by_file"]) == 2


def test_eval_context_longer_than_the_model_is_refused(trained, capsys):
    root, out = trained
    assert main(["eval", "--model", str(out), str(root / "data"), "--device", "cpu", "--context", "100000"]) == 2
    assert "exceeds the model's context" in capsys.readouterr().err


def test_training_shows_validation_and_info_the_saved_step(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_bytes(TEXT)
    (tmp_path / "data" / "b.txt").write_bytes(TEXT[::-1])
    out = tmp_path / "run"
    assert main(["train", str(tmp_path / "data"), "--seq-len", "32", "--batch-size", "2", "--steps", "4",
                 "--eval-every", "2", "--eval-windows", "2", "--out", str(out), "--device", "cpu",
                 "--no-progress", "--val-fraction", "0.3"]) == 0
    output = capsys.readouterr().out
    assert "step 2: validation" in output and "step 4: validation" in output and "bits/byte" in output
    assert main(["info", "--model", str(out)]) == 0
    assert "saved model   from step" in capsys.readouterr().out


def test_resuming_a_finished_run_says_so_in_one_line(trained, capsys):
    root, out = trained
    steps = json.loads(subprocess.run([sys.executable, "-m", "omnibyte.cli", "info", "--model", str(out), "--json"],
                                      capture_output=True, text=True, check=True).stdout)["trained_steps"]
    before = (out / "model.safetensors").read_bytes()
    assert main(["train", str(root / "data"), "--out", str(out), "--resume", "--steps", str(steps),
                 "--no-progress", "--val-fraction", "0"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines() == [captured.out.strip()] and "already finished" in captured.out
    assert captured.err == "" and (out / "model.safetensors").read_bytes() == before


# ---- the demo -------------------------------------------------------------------------------

def test_demo_trains_reports_and_samples(tmp_path, capsys):
    assert main(["demo", "--steps", "3", "--out", str(tmp_path / "demo"), "--device", "cpu"]) == 0
    output = capsys.readouterr().out
    assert "held-out bits/byte" in output and "sample" in output and "trained 3 steps" in output
    assert (tmp_path / "demo" / "model.safetensors").exists()
    # an earlier demo's folder is replaced ...
    assert main(["demo", "--steps", "1", "--out", str(tmp_path / "demo"), "--device", "cpu"]) == 0
    assert "trained 1 steps" in capsys.readouterr().out


def test_demo_never_deletes_a_folder_it_did_not_make(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["demo", "--steps", "1", "--out", str(mine), "--device", "cpu"]) == 2
    assert "not an earlier demo run" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    # a user's file put into a demo's folder keeps it from being replaced
    from omnibyte.cli.demo import MARKER

    demo = tmp_path / "demo"
    demo.mkdir()
    for name in (MARKER, "config.json", "model.safetensors", "notes.txt"):
        (demo / name).write_text("keep")
    assert main(["demo", "--steps", "1", "--out", str(demo), "--device", "cpu"]) == 2
    assert "notes.txt" in capsys.readouterr().err and (demo / "notes.txt").read_text() == "keep"
    (tmp_path / "file").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "file"), "--device", "cpu"]) == 2


def test_commands_say_when_a_run_folder_holds_its_best_model_not_its_last(trained, tmp_path, capsys):
    import shutil

    _, out = trained
    run = tmp_path / "run"
    shutil.copytree(out, run)
    document = json.loads((run / "config.json").read_text())
    last = json.loads(subprocess.run([sys.executable, "-m", "omnibyte.cli", "info", "--model", str(run), "--json"],
                                     capture_output=True, text=True, check=True).stdout)["trained_steps"]
    document["step"] = last - 1  # as if validation had chosen an earlier model
    (run / "config.json").write_text(json.dumps(document))
    assert main(["generate", "--model", str(run), "--device", "cpu", "--max-bytes", "4", "--seed", "0",
                 "-o", str(tmp_path / "sample.bin")]) == 0
    assert f"using the best model by validation, from step {last - 1} of {last}" in capsys.readouterr().err
    assert main(["info", "--model", str(run)]) == 0
    captured = capsys.readouterr()
    assert f"from step {last - 1} (the best by validation)" in captured.out and captured.err == ""
    # an error stays one line: the note is only said when the command succeeds
    assert main(["generate", "--model", str(run), "--device", "cpu", "--max-bytes", "5000"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_sigterm_during_training_saves_and_exits_143(tmp_path):
    import signal
    import time

    (tmp_path / "d.txt").write_bytes(TEXT)
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "omnibyte.cli", "train", str(tmp_path / "d.txt"), "--out", str(out),
                                "--steps", "100000", "--seq-len", "32", "--batch-size", "2", "--log-every", "1",
                                "--no-progress", "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM" in stdout and "Traceback" not in stderr
    assert (out / "trainer_state.safetensors").exists()


def test_save_every_zero_saves_only_at_the_end_and_resumes(tmp_path):
    (tmp_path / "d.txt").write_bytes(TEXT)
    args = ["train", str(tmp_path / "d.txt"), "--out", str(tmp_path / "run"), "--seq-len", "32", "--batch-size", "2",
            "--save-every", "0", "--no-progress", "--device", "cpu", "--val-fraction", "0"]
    assert main([*args, "--steps", "2"]) == 0
    assert main([*args, "--steps", "3", "--resume"]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["step"] == 3

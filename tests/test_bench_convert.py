"""``bench/bench_convert.py``'s schedule calibration: the cosine schedule must end with the time
budget even when the first steps it measures are slow (s18: another job starting on the same
host made ABC -> MIDI train 98 of its 195 s)."""
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_convert  # noqa: E402


def run_with_calibration(monkeypatch, seconds: float, step_seconds) -> tuple[int, float]:
    """Steps until the schedule or the time limit ends the run, on a fake clock; (steps, clock)."""
    clock = [1000.0]
    monkeypatch.setattr(bench_convert.time, "time", lambda: clock[0])
    calibrate = bench_convert.Calibrate(seconds)
    trainer = SimpleNamespace(step=0, config=SimpleNamespace(steps=10**6, eval_every=10**6))
    while trainer.step < trainer.config.steps and clock[0] - 1000.0 <= seconds:
        trainer.step += 1
        clock[0] += step_seconds(trainer.step)
        calibrate(trainer)
    return trainer.step, clock[0] - 1000.0


def test_the_schedule_ends_with_the_budget_after_a_slow_start(monkeypatch):
    # 1 s a step while the rate is first measured, then 0.25 s: a single measurement would plan
    # about 96 steps and end the schedule at 43 s of 100
    steps, elapsed = run_with_calibration(monkeypatch, 100.0, lambda step: 1.0 if step <= 25 else 0.25)
    assert 85.0 <= elapsed <= 100.0, elapsed
    assert steps > 250


def test_a_steady_rate_plans_the_budget_once(monkeypatch):
    steps, elapsed = run_with_calibration(monkeypatch, 60.0, lambda step: 0.1)
    assert 54.0 <= elapsed <= 60.0 and 540 <= steps <= 600

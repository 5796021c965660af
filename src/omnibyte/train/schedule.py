"""Learning-rate schedule: linear warmup, then cosine decay to a floor."""
from __future__ import annotations

import math


def learning_rate(step: int, peak_lr: float, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float = 0.1) -> float:
    """LR for optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return peak_lr * (min_lr_ratio + (1 - min_lr_ratio) * cosine)


class TimeFittedSteps:
    """Plans the number of optimizer steps so that the schedule ends when ``seconds`` of training
    are up (``TrainConfig.fit_steps_to_time``): "train for ten minutes" then ends with the
    learning rate at its floor instead of being cut off half-way down the cosine.

    The step rate is measured from ``MEASURE_FROM`` steps after the start (the first steps
    compile and warm up), the plan is first made ``FIRST_PLAN`` steps after the start, and made
    again whenever a quarter of what is left is done, so that one slow stretch early on does not
    end the schedule too soon. ``MARGIN`` of the time is planned; the rest is left for the
    validations and the final save. Under several ranks only rank 0's plan counts (the trainer
    broadcasts it), and every rank calls ``due``/``accept`` at the same steps."""

    MEASURE_FROM = 5
    FIRST_PLAN = 25
    MARGIN = 0.95
    LAST_PLAN = 8  # no new plan once fewer steps than this are left

    def __init__(self, seconds: float, start_step: int, now: float):
        self.seconds, self.started, self.start_step = seconds, now, start_step
        self.mark: tuple[int, float] | None = None
        self.next_plan: float = start_step + self.FIRST_PLAN
        self.plans = 0  # plans accepted so far

    def due(self, step: int) -> bool:
        return step == self.start_step + self.MEASURE_FROM or step >= self.next_plan

    def observe(self, step: int, now: float) -> int | None:
        """At a due step: the planned total number of steps, or None while only measuring."""
        if step == self.start_step + self.MEASURE_FROM:
            self.mark = (step, now)
        if self.mark is None or step < self.next_plan:
            return None
        rate = (step - self.mark[0]) / max(now - self.mark[1], 1e-9)
        left = self.seconds * self.MARGIN - (now - self.started)
        return max(step + int(rate * left), step + 1)

    def accept(self, step: int, planned: int) -> None:
        """The plan in force (rank 0's): the next one comes after a quarter of what is left."""
        self.plans += 1
        remaining = planned - step
        self.next_plan = step + remaining // 4 if remaining >= self.LAST_PLAN else math.inf

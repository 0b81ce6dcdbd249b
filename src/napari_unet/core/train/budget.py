"""What a time budget holds on this machine, said before a run ends and after it.

A painting is learnt in training steps, not in minutes, and a step's time differs several-fold
between CPUs (bf16 units or not, AVX-512 or AVX2 only) and with the load of the machine. The loop
measures its own steps over the first :data:`~napari_unet.core.train.config.PROBE_STEPS` and
:class:`BudgetEstimate` turns that into the steps the budget holds; below :data:`LEARN_STEPS` the
run is said to be too short (and by how many minutes it should be given) before it ends, and its
result says what it got (:func:`too_few_steps`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The steps a painting needs with the fine-tuning recipe (TrainConfig's defaults: 2 patches of
# 128 px, contracting path frozen). On held-out rods (two painted frames, docs/benchmarks.md
# "Ours against the forest with the new recipe") instance F1 was 0.10 after 118 steps, 0.52 after
# 257 and 0.93 after 538: fewer than LEARN_STEPS learn little, GOOD_STEPS is what to give when
# there is time. (The old recipe's 4 patches of 256 px needed 120 / 300: a step of it is 5 of these.)
LEARN_STEPS = 250
GOOD_STEPS = 500
# a time budget spends up to a tenth of itself on validation (core/train/loop.py)
TRAINING_SHARE = 0.9


@dataclass(frozen=True)
class BudgetEstimate:
    """The steps a time budget holds at the measured speed.

    Attributes
    ----------
    seconds_per_step : float
        One training step's measured time on this machine, now (seconds).
    budget_s : float
        The run's time budget (seconds).
    """

    seconds_per_step: float
    budget_s: float

    @property
    def steps(self) -> int:
        """Training steps the budget holds (validation takes up to a tenth of it)."""
        return int(TRAINING_SHARE * self.budget_s / max(self.seconds_per_step, 1e-9))

    @property
    def too_few(self) -> bool:
        """Whether the budget holds fewer steps than a painting needs (:data:`LEARN_STEPS`)."""
        return self.steps < LEARN_STEPS

    def minutes_for(self, steps: int) -> float:
        """The budget (minutes, rounded up to a half) that holds ``steps`` steps at this speed."""
        m = steps * self.seconds_per_step / TRAINING_SHARE / 60.0
        return max(0.5, math.ceil(2.0 * m) / 2.0)

    def sentence(self) -> str:
        """What the budget holds, and when it is too short, what would do."""
        s = (f"a step takes {_seconds(self.seconds_per_step)} on this machine: "
             f"{_minutes(self.budget_s / 60.0)} hold about {self.steps} steps")
        if not self.too_few:
            return s
        return (f"{s}, too few to learn the painting (it needs at least {LEARN_STEPS}): give it "
                f"{_minutes(self.minutes_for(GOOD_STEPS))} ({GOOD_STEPS} steps), at least "
                f"{_minutes(self.minutes_for(LEARN_STEPS))}")


def too_few_steps(steps: int, seconds_per_step: float | None, learnt: bool) -> str:
    """The warning a result carries when its run made too few steps to learn ("" when not).

    Parameters
    ----------
    steps : int
        The steps the run made.
    seconds_per_step : float or None
        Their measured mean time (None: unknown), to say how long enough steps would take.
    learnt : bool
        The run ended early because validation said the painting was learnt: no warning.
    """
    if learnt or steps >= LEARN_STEPS:
        return ""
    s = (f"only {steps} steps: too few to learn the painting (it needs at least {LEARN_STEPS}), "
         f"results will be poor")
    if seconds_per_step:
        est = BudgetEstimate(seconds_per_step, 60.0)
        s += (f"; at {_seconds(seconds_per_step)} per step, {GOOD_STEPS} steps take about "
              f"{_minutes(est.minutes_for(GOOD_STEPS))}")
    return s


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s >= 1 else f"{s:.2f} s"


def _minutes(m: float) -> str:
    m = round(m, 2)
    return "1 minute" if m == 1 else f"{m:g} minutes"

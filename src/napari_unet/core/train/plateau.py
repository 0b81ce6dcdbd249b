"""Ending the schedule when the painting is learnt (early stopping on the validation loss).

Two painted frames are learnt long before a generous time budget is spent, and what comes after
is memorising them: the loss on the held-back objects reaches its minimum early and then rises,
and the frames not trained on lose foreground IoU with it (the figures: docs/benchmarks.md,
"Ending when the painting is learnt"). So the validation loss (cross-entropy of background against objects on the held-back
pixels: smooth, where instance F1 on a dozen objects jumps) is watched. When it has not reached
a new minimum for ``patience`` validations, training goes back to the weights of that minimum,
the learning rate decays from where it is to the schedule's floor over a quarter of the time
spent so far, and training ends there, early, and says so. Lows count only once validation
scores the weights above the starting model (an early low of a still undecided network ended
brightfield runs before they had learnt anything, and the starting model came back), and the
end comes only after the training patches have covered the painting :data:`MIN_PASSES` times
(a 15-s run is ended by its budget, not by the noise of its first validations). Without
validation the budget is the only end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FLOOR = 0.05  # the schedule's final learning-rate factor (network.schedule)
MIN_PASSES = 100.0  # training patches cover the painting's known pixels this many times first


@dataclass
class Plateau:
    """``patience``: validations without a new minimum (better by more than ``tol``, relative)
    that end the run; none before ``min_progress`` of the run. The clock (``x``) is seconds for
    a time budget, steps otherwise."""

    patience: int
    min_progress: float = 0.2
    tol: float = 0.01
    share: float = 0.25  # the final decay lasts this share of the clock spent so far
    best: float = math.inf
    since_best: int = 0
    start: float | None = None  # clock at which the final decay began
    start_factor: float = 1.0
    window: float = 0.0
    improved: bool = False  # the last observed loss was a new minimum

    @property
    def ending(self) -> bool:
        return self.start is not None

    def observe(self, loss: float | None, progress: float, x: float, factor: float,
                passes: float = math.inf, learnt: bool = True) -> bool:
        """Record one validation loss; True when the final decay begins now. ``passes``: how
        many times over the training patches have covered the painting so far; ``learnt``:
        whether validation scores the weights above the starting model's (before that, a low
        loss is a soft, undecided network, not a learnt painting, and is not counted)."""
        self.improved = False
        if self.patience <= 0 or self.ending or loss is None or not math.isfinite(loss) or not learnt:
            return False
        self.improved = loss < self.best * (1.0 - self.tol)
        if self.improved:
            self.best, self.since_best = loss, 0
            return False
        self.since_best += 1
        if self.since_best < self.patience or progress < self.min_progress or passes < MIN_PASSES:
            return False
        self.start, self.start_factor, self.window = x, max(factor, FLOOR), max(self.share * x, 1e-9)
        return True

    def factor(self, x: float) -> float:
        """Learning-rate factor during the final decay (cosine from where it was to the floor)."""
        assert self.start is not None
        u = min(max((x - self.start) / self.window, 0.0), 1.0)
        return FLOOR + (self.start_factor - FLOOR) * 0.5 * (1.0 + math.cos(math.pi * u))

    def done(self, x: float) -> bool:
        return self.start is not None and x >= self.start + self.window

    def remaining(self, x: float) -> float:
        return 0.0 if self.start is None else max(0.0, self.start + self.window - x)

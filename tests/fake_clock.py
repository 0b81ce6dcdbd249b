"""A fake clock for tests of time budgets: training decisions that the wall clock drives (when a
budget ends, how many steps it holds, how many networks an ensemble gets) become exact, whatever
the machine's speed or load.

The training loop (``core.train.loop``) and the ensemble driver (``core.train.members``) read the
time as ``time.perf_counter()`` through their module's ``time``; :func:`use_fake_clock` replaces
that name in both modules with a :class:`FakeClock` that stands still except when the loop does
work: every training step (one ``sample_batch``) costs ``step_s`` seconds, every validation
``val_s`` seconds. A test then knows the elapsed time exactly: 10 steps are 1.0 s at 0.1 s each.
"""

from __future__ import annotations

import functools

import pytest


class FakeClock:
    """A stand-in for the ``time`` module: ``perf_counter``/``monotonic``/``time`` give ``now``,
    which moves only by :meth:`advance` (or ``sleep``)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = float(start)

    def advance(self, seconds: float) -> None:
        self.now += float(seconds)

    def perf_counter(self) -> float:
        return self.now

    monotonic = time = perf_counter

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)


def use_fake_clock(monkeypatch: pytest.MonkeyPatch, step_s: float, val_s: float) -> FakeClock:
    """Drive training by a :class:`FakeClock`: ``step_s`` seconds per training step, ``val_s``
    per validation (the start's score included), nothing else takes time."""
    from napari_unet.core.train import loop, members

    clock = FakeClock()

    def costing(fn, seconds):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            clock.advance(seconds)
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(loop, "time", clock)
    monkeypatch.setattr(members, "time", clock)
    monkeypatch.setattr(loop, "sample_batch", costing(loop.sample_batch, step_s))
    monkeypatch.setattr(loop, "validate", costing(loop.validate, val_s))
    return clock

"""Small immutable progress events yielded by every long operation (predict, train, batch).

A widget forwards them to a progress bar, the CLI to tqdm, a test iterates them. Consumers stop the
work by closing the generator (or, in a napari thread worker, ``worker.quit()``) between events.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeVar

R = TypeVar("R")


@dataclass(frozen=True)
class TileDone:
    """One batch of overlap tiles predicted. ``done``/``total`` count tiles over the whole job."""

    done: int
    total: int
    plane: int = 0
    planes: int = 1
    device: str = "cpu"


@dataclass(frozen=True)
class StepDone:
    """One optimisation step of training.

    ``loss`` is the training loss of the step; ``val_score`` the latest validation score (the
    mean of ``val_iou``, the foreground IoU, and ``val_f1``, the instance F1@0.5, on the held-back
    whole objects; higher is better; None when nothing is held back); ``best_score`` the best so
    far; ``eta_s`` the estimated seconds left; ``validation`` a sentence saying what is validated
    (or why nothing is). With a time budget ``total`` is an estimate that settles as steps go, and
    once the first steps are measured ``budget`` says how many steps the budget holds on this
    machine, ``budget_short`` whether that is too few to learn the painting (the sentence then
    says how many minutes would do).
    """

    step: int
    total: int
    loss: float
    val_score: float | None = None
    best_score: float | None = None
    eta_s: float | None = None
    val_iou: float | None = None
    val_f1: float | None = None
    validation: str = ""
    painting_version: int | None = None  # live training: the painting this step trained on
    network: int = 0  # an ensemble's networks train one after the other: this one's index
    networks: int = 1  # and how many there are
    budget: str = ""
    budget_short: bool = False


@dataclass(frozen=True)
class LiveWaiting:
    """Live training is waiting for a painting it can train on; ``message`` says what is missing."""

    message: str
    painting_version: int = 0


@dataclass(frozen=True)
class PreviewDone:
    """Live training segmented the view the user looks at with its current weights.

    ``pair``: which (image, labels) pair, ``plane``: the plane index of a stack (() for 2D),
    ``box``: (y0, y1, x0, x1) in plane pixels, ``labels``: the instances there (box shape; ids
    restart at 1 in each preview), ``step``: the training step whose averaged weights made it,
    ``seconds``: how long it took; ``agreement``: the share of the painting in the box that the
    preview agrees with (the mean of the painted objects' share it calls foreground and the painted
    background's share it calls background), None when the box holds too little painting to say
    (:func:`~napari_unet.core.train.live_inbox.painting_agreement`): a preview that disagrees with
    the painting it was trained on does not mean anything yet."""

    pair: int
    plane: tuple[int, ...]
    box: tuple[int, int, int, int]
    labels: Any
    step: int
    seconds: float = 0.0
    agreement: float | None = None


@dataclass(frozen=True)
class ItemDone:
    """One image (file, layer or plane block) of a batch job finished, skipped or failed."""

    done: int
    total: int
    name: str
    status: str = "done"  # "done", "skipped" (already complete) or "failed"
    message: str = ""


def run_to_end(gen: Generator[Any, None, R]) -> R:
    """Drive a progress generator to its end, ignoring the events; return its return value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def relay(gen: Generator[Any, None, R], fn: Any) -> Generator[Any, None, R]:
    """Yield ``fn(event)`` for each event of ``gen`` and return its value: ``result = yield from
    relay(inner, fn)`` re-labels an inner job's progress for an outer one."""
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        yield fn(ev)

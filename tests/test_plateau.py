"""Ending the schedule when the painting is learnt: early stopping on the validation loss."""

import math

import pytest
from helpers import drain, tiny_model

from napari_unet.core.train import TrainConfig, train, train_model, training_summary
from napari_unet.core.train import plateau as plateau_module
from napari_unet.core.train.plateau import FLOOR, MIN_PASSES, Plateau


def test_the_final_decay_begins_after_patience_validations_without_a_new_minimum():
    p = Plateau(patience=3, min_progress=0.2)
    losses = [1.0, 0.8, 0.6, 0.605, 0.62, 0.64, 0.7]
    began = [p.observe(v, progress=0.1 * (i + 1), x=10.0 * (i + 1), factor=0.8) for i, v in enumerate(losses)]
    # the minimum is at the third validation; the third one after it begins the end (x = 60)
    assert began == [False, False, False, False, False, True, False] and p.best == 0.6
    assert p.ending and p.start == 60.0 and p.window == pytest.approx(15.0)
    assert p.factor(60.0) == pytest.approx(0.8) and p.factor(75.0) == pytest.approx(FLOOR)
    assert FLOOR < p.factor(67.5) < 0.8
    assert not p.done(74.9) and p.done(75.0) and p.remaining(70.0) == pytest.approx(5.0)


def test_no_end_early_in_the_run_on_a_missing_loss_or_when_switched_off():
    early = Plateau(patience=1, min_progress=0.5)
    assert [early.observe(v, progress=0.1, x=1.0, factor=1.0) for v in (1.0, 1.1, 1.2)] == [False] * 3
    assert early.observe(1.3, progress=0.5, x=5.0, factor=1.0)  # once past min_progress
    off = Plateau(patience=0)
    assert not any(off.observe(v, progress=0.9, x=9.0, factor=1.0) for v in (1.0, 2.0, 3.0, 4.0))
    none = Plateau(patience=1)
    assert not any(none.observe(v, progress=0.9, x=9.0, factor=1.0) for v in (None, math.nan, None))
    # not before the painting has been seen MIN_PASSES times over: a short run ends by its budget
    young = Plateau(patience=1, min_progress=0.0)
    assert not young.observe(1.0, 0.5, 1.0, 1.0, passes=1.0)
    assert not young.observe(1.2, 0.6, 2.0, 1.0, passes=MIN_PASSES - 1)
    assert young.observe(1.3, 0.7, 3.0, 1.0, passes=MIN_PASSES)
    # nothing counts while validation scores the weights no better than the start
    undecided = Plateau(patience=1, min_progress=0.0)
    assert not any(undecided.observe(v, 0.5, 1.0, 1.0, learnt=False) for v in (0.2, 0.3, 0.4, 0.5))
    assert undecided.best == math.inf
    assert not undecided.observe(0.6, 0.5, 2.0, 1.0) and undecided.best == 0.6
    # a small wobble (< 1 %) is no new minimum
    wob = Plateau(patience=2, min_progress=0.0)
    assert [wob.observe(v, 0.5, 1.0, 1.0) for v in (1.0, 0.995, 0.994)] == [False, False, True]


def test_training_ends_early_when_the_validation_loss_stops_improving_and_says_so(monkeypatch, colony):
    monkeypatch.setattr(plateau_module, "MIN_PASSES", 0.0)  # a test-sized run
    observe = Plateau.observe  # and a network that cannot learn counts as learnt: the wiring

    def learnt_anyway(self, *args, **kw):
        kw["learnt"] = True
        return observe(self, *args, **kw)

    monkeypatch.setattr(Plateau, "observe", learnt_anyway)
    imgs, labs = colony
    # a learning rate too small to move the validation loss: it plateaus from the first validation
    cfg = dict(steps=40, batch_size=2, patch_size=32, val_every=2, val_min_total=0, val_min_objects=1,
               precision="fp32", lr=1e-12)
    base = dict(classes=3, training_names=True, provenance={"origin": "test"})
    events, model = drain(train(imgs, labs, model=tiny_model(**base), config=TrainConfig(**cfg), device="cpu",
                                seed=0), keep_events=True)
    # the status line says so while the final decay runs, and the step estimate knows the end
    assert not any("finishing early" in e.validation for e in events[:7])
    assert all("finishing early" in e.validation and e.total == 10 for e in events[7:])  # from step 8 on
    prov = model.provenance
    end = prov["ended_early"]
    # patience 3 after a fifth of the run (step 8), then a decay over a quarter of the 8 steps
    assert end is not None and end["step"] == 8 and prov["steps"] == 10
    assert "validation loss" in end["reason"] and end["best_validation_loss"] > 0
    assert end["from_step"] == 2  # the lowest loss (its first validation): decayed from there
    assert "ended early" in training_summary(prov)
    assert prov["validation"]["best"]["score"] is not None  # the final weights are validated
    off = train_model(imgs, labs, model=tiny_model(**base), config=TrainConfig(**cfg, plateau_patience=0),
                      device="cpu", seed=0)
    assert off.provenance["ended_early"] is None and off.provenance["steps"] == 40
    assert "ended early" not in training_summary(off.provenance)

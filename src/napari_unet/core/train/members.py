"""Fine-tuning an ensemble: :func:`train` trains the networks one after the other on the same
painting and returns their average (:class:`~napari_unet.core.network.ensemble.UNetEnsemble`).

Why: on a few painted frames, what a long budget adds to one network is memorising them, and one
fine-tuned network is a draw (the same recipe with another seed scores far better or far worse on
frames not trained on). Spending a long budget on several networks of the size that learns the
painting, and averaging them, removes the draw and keeps what memorising loses; a budget cut
into networks too short to learn the painting trades instance F1 for IoU, so a network gets at
least :data:`~.config.NETWORK_STEPS` steps (:meth:`~.config.TrainConfig.members_for`). The
measured figures: docs/benchmarks.md, "An ensemble instead of one network" and "Figures moved
out of the code".

How: the budget (``minutes`` or ``steps``) is shared: each network gets what is left divided by
the networks still to come, so one that ends early (its painting learnt) leaves its time to the
next. Each network holds back its own objects for validation (``holdback_seed``: together they
learn all of the painting, like nnU-Net's cross-validation folds) and its own seed. A network that
validation scores below the starting model, or that was stopped before validation scored it above
the start, is left out; with one left, that network is the model. A base model that is itself an
ensemble gives each network its own starting network (network i starts from base network i modulo
its size).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from napari_unet.core.events import StepDone, run_to_end
from napari_unet.core.modelfile.files import UNetModel
from napari_unet.core.network.ensemble import UNetEnsemble
from napari_unet.core.train.config import TrainConfig
from napari_unet.core.train.loop import train_network
from napari_unet.core.train.optimisation import should_stop


def _learnt(prov: dict[str, Any], margin: float, stopped: bool) -> bool:
    """Whether a network joins the ensemble: not when validation kept the starting model over it,
    and, when the user stopped it, only if validation scored it above the start by ``margin``
    (without validation: unless it was stopped before its first step)."""
    v = prov["validation"]
    if not v["available"]:
        return not stopped or prov["steps"] > 0
    if v["kept"] == "start":
        return False
    if not stopped:
        return True
    best, start = v.get("best"), v.get("start")
    return best is not None and start is not None and best["score"] > start["score"] + margin


def _summary(m: UNetModel, kept: bool) -> dict[str, Any]:
    p = m.provenance
    v = p["validation"]
    end = p.get("ended_early")
    return {"seed": p["seed"], "holdback_seed": p["training"]["holdback_seed"], "steps": p["steps"],
            "seconds": p["training_seconds_measured"], "validation": v["best"], "start": v["start"],
            "kept_weights": v["kept"], "ended_early_s": None if end is None else end["seconds"],
            "in_ensemble": kept}


def _combine(nets: list[UNetModel], all_runs: list[UNetModel], kept: list[bool], seconds: float,
             name: str | None, tc: TrainConfig) -> UNetModel:
    first = nets[0]
    prov = dict(first.provenance)
    prov["steps_planned"], prov["minutes_planned"] = tc.steps, tc.minutes
    # the run's settings (each network's share of the budget and hold-back are in "ensemble")
    prov["training"] = {**first.provenance["training"], **tc.to_dict()}
    prov["ensemble"] = [_summary(m, k) for m, k in zip(all_runs, kept, strict=True)]
    prov["steps"] = sum(m.provenance["steps"] for m in all_runs)
    prov["training_seconds_measured"] = round(seconds, 1)
    if len(nets) == 1:
        out = len(all_runs) - 1
        desc = first.description + (
            f"; {out} other network(s) trained and left out (validated no better than the starting "
            f"model)" if out and kept.count(True) == 1 else "")
        return dataclasses.replace(first, provenance=prov, description=desc)
    priors = [m.postprocessing.background_prior for m in nets]
    post = first.postprocessing
    if all(p is not None for p in priors):
        post = dataclasses.replace(post, background_prior=round(float(np.mean(priors)), 6))
    prov["background_prior"] = post.background_prior
    s = prov["validation"]  # the ensemble is scored by its networks, each on its own hold-back
    scores = [m.provenance["validation"]["best"] for m in nets]
    if all(v is not None for v in scores):
        best = {k: float(np.mean([v[k] for v in scores])) for k in ("iou", "f1", "score")}
        best["objects"] = sum(v["objects"] for v in scores)
        prov["validation"] = {**s, "kept": "ensemble", "best": best, "note": (
            f"{s['note']} (each network its own objects; the figures are the mean of theirs)")}
    else:
        prov["validation"] = {**s, "kept": "ensemble"}
    base = first.provenance["base_model"]
    desc = (f"an ensemble of {len(nets)} networks "
            + (f"fine-tuned from {base['name']}" if base else "trained from scratch")
            + f" on {first.provenance['planes']} painted plane(s), {prov['steps']} steps in all "
              f"(the mean of their probabilities: {len(nets)}x the compute of one network to "
              f"segment); {prov['validation']['note']}")
    return UNetModel(net=UNetEnsemble([m.net for m in nets]), normalization=first.normalization,
                     postprocessing=post, name=name or first.name, description=desc,
                     provenance=prov)


def train(images: Any, labels: Any, masks: Any = None, *, config: TrainConfig | None = None,
          seed: int | None = None, stop: Callable[[], bool] | Any = None, name: str | None = None,
          **kwargs: Any) -> Generator[StepDone, None, UNetModel]:
    """Fine-tune a model (or train a new one) on painted labels: a generator of progress events.

    One network, or an ensemble (``config.members``; by default, with a time budget and
    validation, as many as the budget holds networks' worth of steps on this machine, at most
    three: :meth:`~napari_unet.core.train.config.TrainConfig.members_for`). Closing the generator
    ends training as Stop does.

    Parameters
    ----------
    images : array-like or list of array-like
        A 2D image (Y, X), a multichannel image (with ``channel_axis=``), or a stack (Z, Y, X);
        or a list of those. Any integer or float dtype.
    labels : array-like or list of array-like
        The matching integer labels, same shapes in pixels (a napari Labels layer: one id per
        object, 0 = not painted).
    masks : array-like or list, optional
        None, or one boolean mask (or None) per image, nonzero where the painting is complete.
        Without masks and without ``background_label`` the whole frame counts as complete.
    config : TrainConfig, optional
        Steps or a time budget in minutes, learning rate, loss, augmentation, members
        (default: ``TrainConfig()``).
    seed : int, optional
        Same seed, data and device -> same weights on the CPU; None draws one.
    stop : callable or object with ``is_set()``, optional
        Checked before every step; when it says stop, training ends and the kept model is
        returned.
    name : str, optional
        The returned model's name.
    **kwargs
        Passed to :func:`~napari_unet.core.train.loop.train_network`: ``model`` (the
        :class:`~napari_unet.core.modelfile.files.UNetModel` to fine-tune, not modified),
        ``architecture``, ``mode`` ("auto", "binary", "boundary"), ``background_label``,
        ``channel_axis``, ``device``.

    Yields
    ------
    StepDone
        After every step: steps counted over all networks, the loss, and (``network`` /
        ``networks``, ``validation``) which network trains and how it scores.

    Returns
    -------
    UNetModel
        The trained model (an ensemble's mean when more than one network was kept), with its
        training provenance.

    Raises
    ------
    napari_unet.core.train.annotations.AnnotationError
        Labels that cannot be trained on (nothing painted, shapes that do not match), at the
        first ``next()``, with a sentence saying what to paint.
    ValueError
        Invalid arguments (a config field, an image dtype), at the first ``next()``.
    """
    tc = config or TrainConfig()
    seed = secrets.randbelow(2**31) if seed is None else int(seed)
    t0 = time.perf_counter()
    runs: list[UNetModel] = []
    kept: list[bool] = []
    offset = 0
    k: int | None = None  # the ensemble's size: the first network decides it from the painting
    i = 0
    closed = False
    while (k is None or i < k) and not closed:
        if i > 0:
            left = None if tc.minutes is None else tc.minutes - (time.perf_counter() - t0) / 60.0
            if should_stop(stop) or (left is not None and left <= 0):
                break
            done = sum(m.provenance["steps"] for m in runs)
            if tc.minutes is None and done >= tc.steps:
                break
            n_left = k - i
            cfg = dataclasses.replace(tc, holdback_seed=tc.holdback_seed + i,
                                      steps=max(1, (tc.steps - done) // n_left),
                                      minutes=None if left is None else left / n_left)
        else:
            cfg = tc
        gen = train_network(images, labels, masks, config=cfg, seed=seed + i, stop=stop,
                            name=name, member=i, members=k, **kwargs)
        model: UNetModel | None = None
        while True:
            try:
                ev = next(gen)
            except StopIteration as end:
                model = end.value
                break
            if ev.networks > 1:
                k = ev.networks
                eta = ev.eta_s
                if tc.minutes is not None:
                    eta = max(0.0, 60.0 * tc.minutes - (time.perf_counter() - t0))
                ev = dataclasses.replace(ev, step=offset + ev.step,
                                         total=offset + ev.total * (k - i), eta_s=eta)
            try:
                yield ev
            except GeneratorExit:  # closed by the caller: keep what is trained, as Stop does
                model = gen.close()  # the network's model on Python >= 3.13, else None
                closed = True
                break
        if model is None:
            break
        if k is None:
            k = int(model.provenance.get("members_planned", 1))
        if k == 1:
            return model
        runs.append(model)
        kept.append(_learnt(model.provenance, tc.start_margin, closed or should_stop(stop)))
        offset += model.provenance["steps"]
        i += 1
    if not runs:  # closed before a network was trained (Python < 3.13: close() gives nothing back)
        return None  # type: ignore[return-value]
    nets = [m for m, ok in zip(runs, kept, strict=True) if ok]
    if not nets:  # no network learnt: the first network's own choice (the start, with its warning)
        return _combine([runs[0]], runs, kept, time.perf_counter() - t0, name, tc)
    return _combine(nets, runs, kept, time.perf_counter() - t0, name, tc)


def train_model(images: Any, labels: Any, masks: Any = None, **kwargs: Any) -> UNetModel:
    """Train to the end and return the model: the plain-function form of :func:`train`.

    Parameters
    ----------
    images, labels, masks : array-like or list of array-like
        As for :func:`train`: images (Y, X) / (Z, Y, X), integer labels of the same shapes
        (0 = not painted), optional masks where the painting is complete.
    **kwargs
        Keyword arguments of :func:`train` (``config``, ``seed``, ``stop``, ``name``, ``model``,
        ``device``, ...).

    Returns
    -------
    UNetModel
        The trained model.

    Raises
    ------
    napari_unet.core.train.annotations.AnnotationError
        Labels that cannot be trained on.
    ValueError
        Invalid arguments.
    """
    return run_to_end(train(images, labels, masks, **kwargs))

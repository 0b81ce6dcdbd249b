"""Live training: the U-Net learns while the user paints (no Qt here: the widget, a test or a
script drive the same generator).

A :class:`LiveInbox` is the small, thread-safe channel between whoever paints and the training
loop. The painter calls :meth:`LiveInbox.paint` with the new labels of a changed box (a napari
paint event's bounding box), :meth:`LiveInbox.view` with the box the user is looking at, and
:meth:`LiveInbox.stop`. :func:`live_train` is a generator:

- while nothing trainable is painted (no objects, or no background) it yields
  :class:`~..events.LiveWaiting` with a sentence that says what is missing;
- then it trains from the base model and never stops by itself: before every step, a changed
  painting is taken in (targets, weight maps and the hold-back rebuilt from the painting as it is
  now, the network, optimiser state and averaged weights untouched), so a stroke is trained on
  from the next step;
- every ``preview_every`` seconds, and at once when the view changed, the current averaged
  weights segment the viewed box with the exact overlap-tile prediction of validation (it equals
  ``segment`` of the whole image there) and it yields :class:`~..events.PreviewDone`;
- on :meth:`LiveInbox.stop` (or ``stop()``) it returns the model: the final averaged weights, its
  provenance saying it was trained live, on what, for how long.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import replace
from typing import Any

import numpy as np

from napari_unet.core.events import LiveWaiting, PreviewDone, StepDone
from napari_unet.core.modelfile.files import UNetModel
from napari_unet.core.modelfile.normalization import Normalization
from napari_unet.core.train.annotations import AnnotationError
from napari_unet.core.train.config import TrainConfig, default_architecture
from napari_unet.core.train.data import as_list, prepare_data
from napari_unet.core.train.live_inbox import LiveInbox
from napari_unet.core.train.loop import train_network
from napari_unet.core.train.start import widened_config

# Adam's rate of a live run when the config leaves it open: the highest rate tried, which scored
# best on the unpainted rest in bench_live (figures: docs/benchmarks.md, "Figures moved out of
# the code")
LIVE_LR = 5e-3


# What a live step trains (docs/benchmarks.md, "What a Live step trains" and "Why the brightfield
# Live run failed before the clip"): small patches (more steps in the same time), half of them
# centred on painted background (a sparse painting's background is otherwise rarely seen, and the
# whole image can become one object), background weighed against all objects together, the
# contracting path frozen (the base's features kept; a step takes less time), and each step's
# gradient norm clipped to LIVE_GRAD_CLIP (without it brightfield runs diverged, the network then
# predicting one class everywhere)
LIVE_PATCH = 128
LIVE_BATCH = 4
LIVE_GRAD_CLIP = 1.0


def live_config(**changes: Any) -> TrainConfig:
    """The :class:`TrainConfig` of a live run; ``changes`` override its fields."""
    base = dict(lr=LIVE_LR, patch_size=LIVE_PATCH, batch_size=LIVE_BATCH, foreground_fraction=0.5,
                background_fraction=0.5, class_balance="objects", freeze_encoder=True, ema=0.98,
                grad_clip=LIVE_GRAD_CLIP)
    return TrainConfig(**{**base, **changes})


def live_train(images: Any, inbox: LiveInbox, *, model: UNetModel | None = None,
               config: TrainConfig | None = None, mode: str | None = None,
               background_label: int | None = None, channel_axis: int | None = None,
               device: Any = "auto", seed: int | None = None, stop: Any = None,
               preview_every: float = 3.0, poll: float = 0.2, name: str | None = None,
               ) -> Generator[LiveWaiting | StepDone | PreviewDone, None, UNetModel | None]:
    """Train while the user paints: a generator of waiting, step and preview events.

    Waits (yielding :class:`~napari_unet.core.events.LiveWaiting` every ``poll`` seconds) until
    the painting has objects and background; then trains until ``inbox.stop()`` or ``stop()``,
    taking in every change of the painting before the next step, and previews the viewed box
    every ``preview_every`` seconds.

    Parameters
    ----------
    images : array-like or list of array-like
        The images painted on, as for :func:`~napari_unet.core.train.members.train`: (Y, X),
        multichannel with ``channel_axis``, or stacks (Z, Y, X).
    inbox : LiveInbox
        Brings the painting (integer labels of the images' shapes, 0 = not painted), the viewed
        box and the stop.
    model : UNetModel, optional
        The base model (not modified); None starts a new network.
    config : TrainConfig, optional
        None is :func:`live_config` (``lr`` None is ``LIVE_LR``); its ``prior_adaptation`` is
        ignored: live models record no background prior.
    mode : {None, "auto", "binary", "boundary"}, optional
        None/"auto" is "boundary" here (the first strokes are too few to tell whether objects
        touch).
    background_label : int, optional
        The id painted on background (scribbles).
    channel_axis : int, optional
        The images' channel axis, if any.
    device : str or torch.device, default "auto"
        "auto", "cpu", "cuda" or "mps".
    seed : int, optional
        Patches and augmentation; None draws one.
    stop : callable or object with ``is_set()``, optional
        Checked before every step, as ``inbox.stop()``.
    preview_every : float, default 3.0
        Seconds between previews of the viewed box.
    poll : float, default 0.2
        Seconds between looks at an untrainable painting.
    name : str, optional
        The returned model's name.

    Yields
    ------
    LiveWaiting, StepDone or PreviewDone
        A sentence saying what is missing from the painting; a training step; the viewed box's
        labels (:class:`~napari_unet.core.events.PreviewDone`, (y0, y1, x0, x1) in pixels).

    Returns
    -------
    UNetModel or None
        The final averaged weights with provenance saying they were trained live; None when
        stopped before anything could be trained on.

    Raises
    ------
    ValueError
        A 3D model (Live trains 2D models) or invalid arguments.
    """
    from napari_unet.core.train.optimisation import should_stop
    from napari_unet.core.train.start import refuse_3d, resolve_mode

    refuse_3d(model)

    ims = as_list(images, "images")
    # no prior adaptation in Live: the share of background in a few scribbles says nothing of
    # the image (measured on bench_live: no gain), and a model stopped after a dozen steps had
    # every object erased by it (EM on posteriors that are not calibrated yet)
    tc = replace(config or live_config(), prior_adaptation=False)
    if tc.lr is None:
        tc = replace(tc, lr=LIVE_LR)
    if mode in (None, "auto"):
        # the first strokes are too few to tell whether objects touch: the boundary class
        # separates packed objects and costs nothing where they lie apart
        mode = "boundary"
    norm = model.normalization if model is not None else Normalization()
    if model is not None:
        cfg = model.config
    else:
        c = 1 if channel_axis is None else int(np.shape(ims[0])[channel_axis])
        cfg = default_architecture(c, "binary")
    checked = -1
    while True:
        if inbox.stopped or should_stop(stop):
            return None
        labels, masks, version = inbox.snapshot()
        masks_arg = None if all(m is None for m in masks) else masks
        if version != checked:
            checked = version
            try:  # the checks of training: a dry run of the data preparation
                m, widen = resolve_mode(model, mode, labels, background_label)
                prepare_data(ims, labels, masks_arg,
                             config=widened_config(cfg) if widen else cfg,
                             normalization=norm, mode=m, background_label=background_label,
                             channel_axis=channel_axis, train_config=tc)
                break
            except AnnotationError as exc:
                message = f"waiting for a painting to learn from: {exc}"
        yield LiveWaiting(message=message, painting_version=version)
        time.sleep(poll)
    gen = train_network(ims, labels, masks_arg, model=model, config=tc, mode=mode,
                        background_label=background_label, channel_axis=channel_axis,
                        device=device, seed=seed, stop=stop, name=name,
                        live=(inbox, version, preview_every))
    return (yield from gen)

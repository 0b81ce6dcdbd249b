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

import threading
import time
from collections.abc import Generator
from dataclasses import replace
from typing import Any

import numpy as np

from napari_unet.core.events import LiveWaiting, PreviewDone, StepDone
from napari_unet.core.modelfile.files import UNetModel
from napari_unet.core.modelfile.normalization import Normalization
from napari_unet.core.postprocess.instances import instances_from_semantic, semantic_labels
from napari_unet.core.postprocess.prior import adapt_background_prior
from napari_unet.core.train.annotations import AnnotationError, split_planes
from napari_unet.core.train.config import TrainConfig, default_architecture
from napari_unet.core.train.data import as_list, patch_sizes, prepare_data
from napari_unet.core.train.network import widened_config
from napari_unet.core.train.validation import predict_probabilities

LIVE_WARMUP_STEPS = 20  # linear warm-up of the learning rate, then constant (no end to decay to)
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
LIVE_GRAD_CLIP = 1.0


def live_config(**changes: Any) -> TrainConfig:
    """The :class:`TrainConfig` of a live run; ``changes`` override its fields."""
    base = dict(lr=LIVE_LR, patch_size=LIVE_PATCH, foreground_fraction=0.5,
                background_fraction=0.5, class_balance="objects", freeze_encoder=True, ema=0.98,
                grad_clip=LIVE_GRAD_CLIP)
    return TrainConfig(**{**base, **changes})


class LiveInbox:
    """Painting changes, the viewed box and Stop, from the painter to a running live training.

    ``labels``: the labels arrays (one per image, as for :func:`~.members.train`) as they are when
    live training starts; the inbox keeps its own copies (the user's layers are never written).
    ``masks``: None, or one mask (or None) per image, where unpainted means background.
    Every method may be called from any thread.
    """

    def __init__(self, labels: Any, masks: Any = None) -> None:
        labs = as_list(labels, "labels")
        if not labs:
            raise ValueError("live training needs at least one labels image")
        self._labels = [np.array(lab, copy=True) for lab in labs]
        mks = as_list(masks, "masks") if masks is not None else [None] * len(labs)
        if len(mks) != len(labs):
            raise ValueError(f"got {len(labs)} labels images but {len(mks)} masks")
        self._masks = [None if m is None else np.array(m, dtype=bool, copy=True) for m in mks]
        self._lock = threading.Lock()
        self._version = 0
        self._changed_at = time.monotonic()  # the painting as it was at the start
        self._view: tuple[int, tuple[int, ...], tuple[int, int, int, int]] | None = None
        self._view_version = 0
        self._stop = threading.Event()

    # -- the painter's side ---------------------------------------------------------------
    def paint(self, pair: int, origin: tuple[int, ...], values: Any, mask: Any = None) -> None:
        """The labels of image ``pair`` in the box starting at ``origin`` (one index per axis of
        the labels) are now ``values`` (and the mask ``mask``, when given)."""
        vals = np.asarray(values)
        with self._lock:
            lab = self._labels[pair]
            if vals.ndim != lab.ndim or len(origin) != lab.ndim:
                raise ValueError(f"a change of labels {lab.shape} needs {lab.ndim}-D values and "
                                 f"origin, got {vals.shape} at {tuple(origin)}")
            key = tuple(slice(int(o), int(o) + s) for o, s in zip(origin, vals.shape, strict=True))
            if any(k.start < 0 or k.stop > n for k, n in zip(key, lab.shape, strict=True)):
                raise ValueError(f"the changed box {tuple(origin)} + {vals.shape} lies outside "
                                 f"the labels {lab.shape}")
            lab[key] = vals
            if mask is not None:
                if self._masks[pair] is None:
                    self._masks[pair] = np.zeros(lab.shape, bool)
                self._masks[pair][key] = np.asarray(mask, dtype=bool)
            self._version += 1
            self._changed_at = time.monotonic()

    def set_labels(self, pair: int, labels: Any) -> None:
        """Replace the whole labels image ``pair`` (e.g. after an undo)."""
        a = np.asarray(labels)
        self.paint(pair, (0,) * a.ndim, a)

    def view(self, pair: int, box: tuple[int, int, int, int], plane: tuple[int, ...] = ()) -> None:
        """The user looks at ``box`` = (y0, y1, x0, x1) of plane ``plane`` of image ``pair``."""
        v = (int(pair), tuple(int(i) for i in plane), tuple(int(b) for b in box))
        with self._lock:
            if v != self._view:
                self._view = v  # type: ignore[assignment]
                self._view_version += 1

    def stop(self) -> None:
        self._stop.set()

    # -- the training side ----------------------------------------------------------------
    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    @property
    def version(self) -> int:
        """Increases with every change of the painting."""
        with self._lock:
            return self._version

    def seconds_since_change(self) -> float:
        """Seconds since the painting last changed (or since the inbox was made)."""
        with self._lock:
            return time.monotonic() - self._changed_at

    def snapshot(self) -> tuple[list[np.ndarray], list[np.ndarray | None], int]:
        """Copies of the labels and masks as they are now, and their version."""
        with self._lock:
            return ([lab.copy() for lab in self._labels],
                    [None if m is None else m.copy() for m in self._masks], self._version)

    def shape(self, pair: int) -> tuple[int, ...]:
        """The shape of labels image ``pair``."""
        return tuple(self._labels[pair].shape)

    def current_view(self) -> tuple[tuple[int, tuple[int, ...], tuple[int, int, int, int]] | None, int]:
        with self._lock:
            return self._view, self._view_version


class LivePreview:
    """The training loop's side of the preview: normalised, mirror-padded planes of the images
    (computed once per plane, whole-plane statistics as at inference) and when to predict."""

    def __init__(self, images: list[Any], inbox: LiveInbox, normalization: Normalization,
                 channel_axis: int | None, every: float) -> None:
        self.images, self.inbox, self.normalization = images, inbox, normalization
        self.channel_axis, self.every = channel_axis, float(every)
        self._planes: dict[tuple[int, tuple[int, ...]], tuple[np.ndarray, int]] = {}
        self._done_version = -1
        self._done_at = -np.inf

    def _plane(self, pair: int, plane: tuple[int, ...], pad: int) -> np.ndarray:
        key = (pair, plane)
        if key not in self._planes or self._planes[key][1] != pad:
            img = np.asarray(self.images[pair])
            lab = np.zeros(img.shape if self.channel_axis is None else
                           np.delete(img.shape, self.channel_axis), np.uint8)
            planes = split_planes(img, lab, None, self.channel_axis)
            chw = planes[plane[0] if plane else 0][0]
            stats = self.normalization.stats(chw, channel_axis=0)
            x = Normalization.apply(chw, stats)
            while len(self._planes) >= 4:  # a few planes of a stack, not all of them
                self._planes.pop(next(iter(self._planes)))
            self._planes[key] = (np.pad(x, ((0, 0), (pad, pad), (pad, pad)), mode="reflect"), pad)
        return self._planes[key][0]

    def due(self) -> bool:
        view, version = self.inbox.current_view()
        if view is None:
            return False
        return version != self._done_version or time.monotonic() - self._done_at >= self.every

    def run(self, net: Any, data: Any, device: Any, post: Any, bias: Any, step: int
            ) -> PreviewDone | None:
        """Segment the viewed box with ``net`` in float32, as ``segment`` would (not in the
        training's bf16: the preview shows what the model will give)."""
        view, version = self.inbox.current_view()
        if view is None:
            return None
        t0 = time.perf_counter()
        pair, plane, (y0, y1, x0, x1) = view
        self._done_version, self._done_at = version, time.monotonic()
        if not 0 <= pair < len(self.images):
            return None
        h, w = self.inbox.shape(pair)[-2:]
        y0, y1 = max(0, min(y0, h)), max(0, min(y1, h))
        x0, x1 = max(0, min(x0, w)), max(0, min(x1, w))
        if y1 <= y0 or x1 <= x0:
            return None
        # tiles as large as the view (up to 512 output pixels): less halo recomputed than with
        # training patches; any valid size on the pooling grid gives the same output
        out_size, in_size = patch_sizes(net.config, 512, max(y1 - y0, x1 - x0, data.out_size))
        halo = (in_size - out_size) // 2
        pad = halo + out_size + 1
        was_training = net.training
        net.eval()
        try:
            prob = predict_probabilities(net, self._plane(pair, plane, pad), pad, (y0, y1, x0, x1),
                                         out_size, halo, device, bias)
        finally:
            net.train(was_training)
        # as segment does (a no-op for live models, which record no prior)
        prob, _ = adapt_background_prior(prob, post.background_prior)
        fgp = prob[list(post.instance_classes)].sum(0)
        labels = instances_from_semantic(semantic_labels(prob), post, fgp, prob)
        return PreviewDone(pair=pair, plane=plane, box=(y0, y1, x0, x1), labels=labels, step=step,
                           seconds=time.perf_counter() - t0)


class LiveData:
    """Rebuilds the training data when the painting changed (the loop asks before each step)."""

    def __init__(self, inbox: LiveInbox, build: Any, version: int) -> None:
        self.inbox, self.build, self.version = inbox, build, version
        self.trained_version = version  # the painting the current data was built from
        self.changes = 0  # changes of the painting trained on
        self.message = ""  # why the latest painting could not be used (the previous one is kept)

    def refresh(self) -> Any | None:
        """New TrainingData when the painting changed and can be trained on, else None."""
        if self.inbox.version == self.version:
            return None
        labels, masks, version = self.inbox.snapshot()
        self.version = version
        try:
            data = self.build(labels, masks)
        except AnnotationError as exc:
            self.message = f"the painting as it is now cannot be trained on ({exc}); training " \
                           f"goes on with the previous one"
            return None
        self.changes += 1
        self.trained_version = version
        self.message = ""
        return data


def live_train(images: Any, inbox: LiveInbox, *, model: UNetModel | None = None,
               config: TrainConfig | None = None, mode: str | None = None,
               background_label: int | None = None, channel_axis: int | None = None,
               device: Any = "auto", seed: int | None = None, stop: Any = None,
               preview_every: float = 3.0, poll: float = 0.2, name: str | None = None,
               ) -> Generator[LiveWaiting | StepDone | PreviewDone, None, UNetModel | None]:
    """Train live on ``images`` (as for :func:`~.members.train`) while ``inbox`` brings the painting.

    ``mode``: None/"auto" is "boundary" here (see the code). Waits (yielding
    :class:`LiveWaiting` every ``poll`` seconds) until the painting has objects and background; then trains until ``inbox.stop()`` or ``stop()``, taking in every change of the
    painting before the next step, and previews the viewed box every ``preview_every`` seconds.
    ``config``: None is :func:`live_config` (``lr`` None is ``LIVE_LR``); its
    ``prior_adaptation`` is ignored: live models record no background prior. Returns the model
    (None when stopped before anything could be trained on)."""
    from napari_unet.core.train.loop import train_network  # the loop imports this module
    from napari_unet.core.train.network import _should_stop, refuse_3d, resolve_mode

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
        if inbox.stopped or _should_stop(stop):
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

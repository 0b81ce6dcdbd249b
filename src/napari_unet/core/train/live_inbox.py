"""What passes between the painter and a live training, and what the loop does with it.

:class:`LiveInbox` is the small thread-safe channel the painter fills (changed boxes of the
painting, the viewed box, Stop); :class:`LiveData` rebuilds the training data from it before a
step when the painting changed; :class:`LivePreview` segments the viewed box with the current
weights. The training loop (:mod:`.loop`) uses them; :func:`.live.live_train` starts a live run.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from napari_unet.core.events import PreviewDone
from napari_unet.core.modelfile.normalization import Normalization
from napari_unet.core.postprocess.instances import instances_from_semantic, semantic_labels
from napari_unet.core.postprocess.prior import adapt_background_prior
from napari_unet.core.train.annotations import AnnotationError, split_planes
from napari_unet.core.train.data import as_list, patch_sizes
from napari_unet.core.train.validation import predict_probabilities

LIVE_WARMUP_STEPS = 20  # linear warm-up of the learning rate, then constant (no end to decay to)
# a preview "means something" once it agrees with this share of the painting in view (balanced:
# the mean of the painted objects' and the painted background's shares it gets right)
MEANINGFUL_AGREEMENT = 0.9
MIN_AGREEMENT_PIXELS = 20  # fewer painted pixels of a kind in view: no agreement is computed


def painting_agreement(foreground: np.ndarray, painted: np.ndarray, background_label: int | None,
                       mask: np.ndarray | None = None) -> float | None:
    """How much of the painting a preview agrees with: the mean of the share of painted object
    pixels it calls foreground and the share of painted background pixels it calls background.

    ``foreground``: the preview's foreground (bool, the box's shape); ``painted``: the labels
    painted there (0 = not painted); ``background_label``: the id painted on background;
    ``mask``: where unpainted means background (None: nowhere). None when the box holds fewer
    than :data:`MIN_AGREEMENT_PIXELS` painted pixels of objects or of background: a share of
    nothing is not a score.
    """
    fg = np.asarray(foreground, bool)
    lab = np.asarray(painted)
    bg = lab == background_label if background_label is not None else np.zeros(lab.shape, bool)
    obj = (lab != 0) & ~bg
    if mask is not None:
        bg |= np.asarray(mask, bool) & (lab == 0)
    if obj.sum() < MIN_AGREEMENT_PIXELS or bg.sum() < MIN_AGREEMENT_PIXELS:
        return None
    return 0.5 * (float(fg[obj].mean()) + float((~fg[bg]).mean()))


def preview_meaning(agreement: float | None) -> str:
    """What a preview's agreement with the painting tells the user, in a sentence."""
    if agreement is None:
        return ("Preview: too little painting in view to tell whether it has learnt it yet "
                "(paint objects and background here).")
    pct = f"{100 * agreement:.0f} %"
    if agreement < MEANINGFUL_AGREEMENT:
        return (f"Preview: still learning, it agrees with {pct} of your painting in view; do not "
                f"judge it yet.")
    return (f"Preview: it agrees with {pct} of your painting in view; judge it on the cells you "
            f"have not painted.")


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

    def painted(self, pair: int, plane: tuple[int, ...], box: tuple[int, int, int, int]
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Copies of the labels (and mask, or None) of image ``pair`` in ``box`` of ``plane``."""
        y0, y1, x0, x1 = box
        key = (*plane, slice(y0, y1), slice(x0, x1))
        with self._lock:
            m = self._masks[pair]
            return self._labels[pair][key].copy(), None if m is None else m[key].copy()

    def current_view(self) -> tuple[tuple[int, tuple[int, ...], tuple[int, int, int, int]] | None, int]:
        with self._lock:
            return self._view, self._view_version


class LivePreview:
    """The training loop's side of the preview: normalised, mirror-padded planes of the images
    (computed once per plane, whole-plane statistics as at inference) and when to predict."""

    def __init__(self, images: list[Any], inbox: LiveInbox, normalization: Normalization,
                 channel_axis: int | None, every: float, background_label: int | None = None
                 ) -> None:
        self.images, self.inbox, self.normalization = images, inbox, normalization
        self.channel_axis, self.every = channel_axis, float(every)
        self.background_label = background_label
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
        painted, mask = self.inbox.painted(pair, plane, (y0, y1, x0, x1))
        agreement = painting_agreement(prob[0] < 0.5, painted, self.background_label, mask)
        return PreviewDone(pair=pair, plane=plane, box=(y0, y1, x0, x1), labels=labels, step=step,
                           seconds=time.perf_counter() - t0, agreement=agreement)


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

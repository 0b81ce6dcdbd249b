"""Painted data -> training data: checked pairs, targets, weight maps (once per painting), the
validation hold-back, and the random patches of one step.

Images are normalised once per plane with the model's :class:`~..normalize.Normalization`
(whole-plane statistics, as at inference), never per patch. The border weight map (eq. 2) is
computed once per painted plane here and warped with each patch by the augmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_unet.core.modelfile.normalization import Normalization
from napari_unet.core.network.unet import UNetConfig
from napari_unet.core.train.annotations import (
    IGNORE,
    AnnotationError,
    NothingAnnotated,
    labels_to_target,
    num_classes_for,
    split_planes,
    touches_other,
)
from napari_unet.core.train.config import TrainConfig
from napari_unet.core.train.validation import Holdback, choose_holdback
from napari_unet.core.train.weight_map import weight_map


@dataclass
class Plane:
    """One painted 2D plane, padded by ``pad`` pixels so that any patch can be cut from it."""

    image: np.ndarray  # (C, H + 2 pad, W + 2 pad) normalised, mirror-padded
    target: np.ndarray  # (H + 2 pad, W + 2 pad) int8: -1 unknown or held back
    weights: np.ndarray  # (H + 2 pad, W + 2 pad) float32, 0 where target is -1
    centres: np.ndarray  # flat indices (unpadded coordinates) of known training pixels
    fg_centres: np.ndarray  # the same, on object pixels only
    bg_centres: np.ndarray  # the same, on painted background pixels only
    holdback: Holdback | None  # the held-back validation objects
    shape: tuple[int, int]
    pad: int


@dataclass
class TrainingData:
    """Painted data prepared for training: normalised planes, targets, weight maps, splits."""

    planes: list[Plane]
    mode: str
    num_classes: int
    out_size: int  # output patch size
    in_size: int  # input tile size
    halo: int  # (in_size - out_size) // 2
    shapes: list[tuple[int, ...]]
    known_pixels: int
    val_pixels: int
    objects: int = 0  # complete painted objects (all planes)
    val_objects: int = 0  # objects held back for validation
    validation_note: str = ""  # why nothing is held back, or what is
    object_area: float | None = None  # median painted object, pixels
    class_weights: np.ndarray | None = None  # (K,) mean weight per class over the training pixels
    background_share: float | None = None  # background among the known training pixels

    @property
    def has_validation(self) -> bool:
        return any(p.holdback is not None for p in self.planes)

    def logit_adjustment(self) -> np.ndarray:
        """-log(mean weight of each class), centred (zero for a class absent from the training)."""
        w = self.class_weights
        if w is None:
            return np.zeros(self.num_classes)
        present = w > 0
        adj = np.zeros(self.num_classes)
        adj[present] = -np.log(w[present])
        adj[present] -= adj[present].mean()
        return adj


def as_list(x: Any, name: str) -> list[Any]:
    if x is None:
        return []
    if isinstance(x, np.ndarray) or hasattr(x, "__array__") and not isinstance(x, list | tuple):
        return [x]
    if isinstance(x, list | tuple):
        return list(x)
    raise TypeError(f"{name} must be an array or a list of arrays, got {type(x).__name__}")


def patch_sizes(cfg: UNetConfig, patch_size: int, max_extent: int) -> tuple[int, int]:
    """(output size, input size) of a training patch: about ``patch_size`` output pixels, no bigger
    than needed for the largest plane, and valid for the model."""
    want = max(1, min(int(patch_size), int(max_extent)))
    if cfg.padding == "valid":
        n_in = cfg.input_size(want)
        return cfg.output_size(n_in), n_in
    g = cfg.grid
    n = max(g, int(math.ceil(want / g)) * g)
    return n, n


def _painted_planes(images: Any, labels: Any, masks: Any, background_label: int | None,
                    channel_axis: int | None, in_channels: int | None
                    ) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple]], list[tuple]]:
    """Checked (image (C, Y, X), labels, mask, (pair, pairs, plane)) planes that have something
    painted; errors say which pair (:class:`AnnotationError`'s ``pair``)."""
    ims, labs = as_list(images, "images"), as_list(labels, "labels")
    if not ims:
        raise AnnotationError("no training images given")
    if len(ims) != len(labs):
        raise AnnotationError(f"got {len(ims)} images but {len(labs)} labels images: give one labels "
                              f"image per image")
    mks = as_list(masks, "masks") if masks is not None else [None] * len(ims)
    if len(mks) != len(ims):
        raise AnnotationError(f"got {len(ims)} images but {len(mks)} masks: give one mask per image "
                              f"(None where there is none)")
    out, shapes = [], []
    n = len(ims)
    for k, (im, lab, mk) in enumerate(zip(ims, labs, mks, strict=True)):
        try:
            planes = split_planes(im, lab, mk, channel_axis)
        except AnnotationError as exc:
            raise exc.at(k, n) from None
        shapes.append(tuple(np.shape(im)))
        used = 0
        for chw, lp, mp, z in planes:
            if in_channels is not None and chw.shape[0] != in_channels:
                raise AnnotationError(
                    f"the image has {chw.shape[0]} channel(s) but the model reads {in_channels}"
                    + (": convert the image to grey (or choose one of its channels), or choose a "
                       "model made for colour images" if in_channels == 1 else ""),
                    pair=k, pairs=n)
            painted = (lp != 0) if background_label is None else (lp != 0) | (lp == background_label)
            if z is not None and mp is None and not np.any(painted):
                continue  # an unpainted plane of a stack
            if z is not None and mp is not None and not np.any(mp) and not np.any(painted):
                continue
            out.append((chw, lp, mp, (k, n, z)))
            used += 1
        if used == 0:
            raise AnnotationError("no plane of this stack has a painted pixel: paint objects in "
                                  "one or more of its planes", pair=k, pairs=n)
    return out, shapes


def touching_fraction(labels: Any, background_label: int | None = None) -> float:
    """Share of the painted objects that touch another painted object (8-neighbourhood), over a
    labels image or a list of them (planes of stacks separately); 0 when nothing is painted."""
    touching = total = 0
    for lab in as_list(labels, "labels"):
        a = np.asarray(lab)
        planes = [a] if a.ndim == 2 else list(a.reshape(-1, *a.shape[-2:]))
        for p in planes:
            obj = p if background_label is None else np.where(p == background_label, 0, p)
            ids = np.unique(obj)
            ids = ids[ids != 0]
            if ids.size == 0:
                continue
            total += int(ids.size)
            touching += int(np.unique(obj[touches_other(obj)]).size)
    return touching / total if total else 0.0


def choose_mode(labels: Any, background_label: int | None = None, threshold: float = 0.1) -> str:
    """"boundary" (background / boundary / interior) when at least ``threshold`` of the painted
    objects touch another one (packed cells: only a border class can separate them), else
    "binary" (the paper's two classes with separating background lines)."""
    return "boundary" if touching_fraction(labels, background_label) >= threshold else "binary"


def prepare_data(images: Any, labels: Any, masks: Any = None, *, config: UNetConfig,
                 normalization: Normalization, mode: str, background_label: int | None = None,
                 channel_axis: int | None = None, train_config: TrainConfig | None = None,
                 names: Any = None) -> TrainingData:
    """Check and prepare (image, labels[, mask]) pairs for training. The inputs are not modified.

    ``images``/``labels``/``masks``: an array or a list of arrays, one per pair; a pair may be a
    stack (Z, Y, X) whose painted planes are used (planes with nothing known are skipped).
    ``names``: optional, one per pair (e.g. the layer or file names): messages name the pair by
    it (else by its position, "image 2 of 3").
    Raises AnnotationError (a ValueError) with a message for the user.
    """
    try:
        return _prepare(images, labels, masks, config, normalization, mode, background_label,
                        channel_axis, train_config)
    except AnnotationError as exc:
        raise exc.named(list(names) if names is not None else None) from None


def _prepare(images: Any, labels: Any, masks: Any, config: UNetConfig, normalization: Normalization,
             mode: str, background_label: int | None, channel_axis: int | None,
             train_config: TrainConfig | None) -> TrainingData:
    tc = train_config or TrainConfig()
    painted, shapes = _painted_planes(images, labels, masks, background_label, channel_axis,
                                      config.in_channels)
    raw = []  # (chw (C, Y, X), Target, painted instances known)
    for chw, lp, mp, (k, n, z) in painted:
        try:
            tg = labels_to_target(lp, mp, background_label, mode)
        except AnnotationError as exc:
            if isinstance(exc, NothingAnnotated) and z is not None:
                continue  # a plane of a stack with nothing known in it
            raise exc.at(k, n, z) from None
        inst = np.where(tg.known, lp if background_label is None else np.where(lp == background_label, 0, lp), 0)
        raw.append((chw, tg, inst))
    classes = set()
    for _, tg, _ in raw:
        classes |= tg.classes_present()
    if 0 not in classes or not (classes - {0}):
        what = "background" if 0 not in classes else "objects"
        if what == "objects":
            how = "Paint some objects, each with its own id."
        elif background_label is not None:  # scribbles: only pixels painted with it are background
            how = (f"With background label {background_label} (scribbles) only pixels painted with "
                   f"it are background: paint some background with {background_label}, or train "
                   f"without a background label (every unpainted pixel is then background).")
        elif masks is not None:
            how = ("Inside the region where the annotation is complete every unpainted pixel is "
                   "background: make the region cover some background, or leave some of it "
                   "unpainted.")
        else:
            how = "Every pixel is painted as an object: leave the background unpainted (0)."
        raise AnnotationError(
            f"only one class is painted (no {what}): training needs both objects and background. "
            + how)

    num_classes = num_classes_for(mode)
    max_extent = max(max(tg.target.shape) for _, tg, _ in raw)
    out_size, in_size = patch_sizes(config, tc.patch_size, max_extent)
    halo = (in_size - out_size) // 2
    pad = halo + out_size + 1
    holdbacks, n_objects, note = choose_holdback([(tg.known, inst) for _, tg, inst in raw], tc)
    areas = np.concatenate([np.bincount(np.unique(inst, return_inverse=True)[1].ravel())[1:]
                            if inst.any() else np.zeros(0, np.int64) for _, _, inst in raw])
    planes: list[Plane] = []
    wsum = np.zeros(num_classes)
    wcount = np.zeros(num_classes)
    known_total = val_total = 0
    for (chw, tg, _), hb in zip(raw, holdbacks, strict=True):
        if chw.dtype.kind == "f" and not np.all(np.isfinite(chw)):  # before clipping hides inf
            raise AnnotationError("the image contains NaN or infinite values; replace them first "
                                  "(e.g. with numpy.nan_to_num)")
        stats = normalization.stats(chw, channel_axis=0)
        img = Normalization.apply(chw, stats)
        # border term where objects meet: background lines ("binary") or boundary pixels ("boundary")
        w = weight_map(tg.target, tg.objects, num_classes, tc.w0, tc.sigma, balance=tc.class_balance,
                       border_classes=(0,) if mode == "binary" else (0, 1))
        t = tg.target.copy()
        if hb is not None:
            y0, y1, x0, x1 = hb.box
            hb.target = np.where(hb.mask, t[y0:y1, x0:x1], IGNORE).astype(np.int8)
            t[y0:y1, x0:x1][hb.region] = IGNORE
            w[y0:y1, x0:x1][hb.region] = 0.0
        known = t >= 0
        centres = np.flatnonzero(known)
        if centres.size == 0:
            continue
        known_total += int(tg.known.sum())
        val_total += 0 if hb is None else int(hb.region.sum())
        tk = t[known].astype(np.int64)
        wsum += np.bincount(tk, weights=w[known], minlength=num_classes)[:num_classes]
        wcount += np.bincount(tk, minlength=num_classes)[:num_classes]
        planes.append(Plane(
            image=np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode="reflect"),
            target=np.pad(t, pad, mode="constant", constant_values=IGNORE),
            weights=np.pad(w, pad, mode="constant"),
            centres=centres.astype(np.int64),
            fg_centres=np.flatnonzero(t > 0).astype(np.int64),
            bg_centres=np.flatnonzero(t == 0).astype(np.int64),
            holdback=hb,
            shape=tg.target.shape,
            pad=pad,
        ))
    class_weights = np.divide(wsum, wcount, out=np.zeros(num_classes), where=wcount > 0)
    val_objects = sum(p.holdback.n_objects for p in planes if p.holdback is not None)
    return TrainingData(planes, mode, num_classes, out_size, in_size, halo, shapes, known_total,
                        val_total, n_objects, val_objects, note,
                        float(np.median(areas)) if areas.size else None, class_weights,
                        float(wcount[0] / wcount.sum()) if wcount.sum() > 0 else None)


def sample_batch(data: TrainingData, rng: np.random.Generator, n: int, sampling: str = "pixels",
                 foreground_fraction: float = 0.0, background_fraction: float = 0.0,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` random patches centred on known training pixels: image (n, C, I, I), target and
    weights (n, I, I) (I the input tile size; the target is cropped to the output after augmenting).
    ``sampling``: "pixels" (a plane in proportion to its training pixels) or "images" (planes
    equally likely). ``foreground_fraction`` / ``background_fraction``: shares of patches centred
    on an object pixel / a painted background pixel (the rest on any known pixel)."""
    counts = np.array([p.centres.size for p in data.planes], np.float64)
    if sampling == "images":
        counts = (counts > 0).astype(np.float64)
    which = rng.choice(len(data.planes), size=n, p=counts / counts.sum())
    i_sz, half, halo = data.in_size, data.out_size // 2, data.halo
    imgs, tgts, wts = [], [], []
    for k in which:
        p = data.planes[k]
        pool = p.centres
        if (foreground_fraction > 0 and p.fg_centres.size) or \
                (background_fraction > 0 and p.bg_centres.size):
            u = rng.random()  # one draw: u < fg -> an object, u >= 1 - bg -> background
            if u < foreground_fraction and p.fg_centres.size:
                pool = p.fg_centres
            elif u >= 1 - background_fraction and p.bg_centres.size:
                pool = p.bg_centres
        flat = pool[rng.integers(pool.size)]
        cy, cx = divmod(int(flat), p.shape[1])
        y0 = cy - half - halo + p.pad
        x0 = cx - half - halo + p.pad
        imgs.append(p.image[:, y0 : y0 + i_sz, x0 : x0 + i_sz])
        tgts.append(p.target[y0 : y0 + i_sz, x0 : x0 + i_sz])
        wts.append(p.weights[y0 : y0 + i_sz, x0 : x0 + i_sz])
    return np.stack(imgs), np.stack(tgts), np.stack(wts)

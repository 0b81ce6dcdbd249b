"""Segmentation scores: foreground IoU, instance F1 at IoU > 0.5, ISBI 2012 pixel error and Rand error.

Inputs are label images: integer arrays, 0 = background, every other value one object (a label is one object
even where its pixels are not connected; label binary masks with ``skimage.measure.label`` first). Float arrays
are accepted when every value is an integer; bool arrays are foreground masks with one object.

Shapes: a 2D image (Y, X) or a stack of 2D images (..., Y, X). In a stack every plane is an independent 2D
image (the U-Net is 2D: a time-lapse or z-stack labelled plane by plane):
- foreground IoU and pixel error are pooled over all pixels of all planes;
- instances are matched plane by plane and the counts (tp, fp, fn, n_pred, n_gt) summed over planes; a label
  present in three planes counts as three objects;
- the Rand error counts pairs of pixels within the same plane only, pooled over planes.

The optional ``mask`` (same shape, nonzero = inside) restricts every score to the pixels inside it, e.g. the
annotated region of a partly annotated image. Objects are considered by their pixels inside the mask: their
size and overlaps are counted inside the mask only, and an object with no pixel in the mask is ignored.

Inputs are never modified. Validation happens once, at the public function.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment

__all__ = [
    "Matching",
    "evaluate",
    "foreground_iou",
    "instance_f1",
    "instance_precision",
    "instance_recall",
    "match_instances",
    "pixel_error",
    "rand_error",
]


# ---------------------------------------------------------------------------- validation
def _as_labels(x: Any, name: str) -> np.ndarray:
    """``x`` as an integer label array (a view where possible, never written to)."""
    a = np.asarray(x)
    if a.ndim < 2:
        raise ValueError(
            f"{name} must be a 2D image (Y, X) or a stack of them (..., Y, X), got shape {a.shape}"
        )
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    if a.dtype == bool:
        return a.view(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a) | (a != np.round(a))
        if bad.any():
            example = a[bad].flat[0]
            raise ValueError(
                f"{name} must be a label image (integers, 0 = background), but it is a float image with "
                f"non-integer values (e.g. {example!r}); threshold or label probabilities first"
            )
        a = a.astype(np.int64)
    elif not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be a label image of integers, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.signedinteger):
        low = a.min()
        if low < 0:
            raise ValueError(
                f"{name} has negative labels (minimum {low}); labels must be >= 0, 0 = background"
            )
    return a


def _check(pred: Any, gt: Any, mask: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    p = _as_labels(pred, "pred")
    g = _as_labels(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(
            f"pred and gt must have the same shape, got pred {p.shape} and gt {g.shape}"
        )
    if mask is None:
        return p, g, None
    m = np.asarray(mask)
    if m.shape != p.shape:
        raise ValueError(f"mask must have the shape of pred and gt {p.shape}, got {m.shape}")
    m = m != 0  # a new array: the caller's mask is untouched
    if not m.any():
        raise ValueError("mask selects no pixel: nothing to score")
    return p, g, m


def _check_threshold(iou_threshold: float) -> float:
    t = float(iou_threshold)
    if not 0.0 <= t < 1.0:
        raise ValueError(
            f"iou_threshold must be in [0, 1) (a match needs IoU > threshold), got {iou_threshold}"
        )
    return t


def _binary(x: np.ndarray, foreground: int | Sequence[int] | None) -> np.ndarray:
    """Foreground of a label image (> 0) or of a semantic class map (value in ``foreground``)."""
    if foreground is None:
        return x > 0
    classes = np.atleast_1d(np.asarray(foreground))
    if classes.size == 0 or not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(
            f"foreground must be a class value or a sequence of class values (int), got {foreground!r}"
        )
    return np.isin(x, classes)


# ---------------------------------------------------------------------------- contingency tables
@dataclass(frozen=True)
class _Table:
    """Sparse contingency table of one plane: pred object ``pi[k]`` and gt object ``gi[k]`` share
    ``counts[k]`` pixels. Objects are indices into ``p_ids`` / ``g_ids`` (the label values present, sorted);
    ``p_sizes`` / ``g_sizes`` are their pixel counts (inside the mask)."""

    p_ids: np.ndarray
    g_ids: np.ndarray
    p_sizes: np.ndarray
    g_sizes: np.ndarray
    pi: np.ndarray
    gi: np.ndarray
    counts: np.ndarray


def _relabel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label values present, index of each pixel's label in them, pixels per label) of a 1D label array."""
    top = int(x.max())
    if top <= 4 * x.size + 1024:  # small labels: O(n) look-up table instead of a sort
        hist = np.bincount(x.astype(np.intp, copy=False), minlength=top + 1)
        ids = np.flatnonzero(hist)
        lut = np.zeros(top + 1, np.intp)
        lut[ids] = np.arange(ids.size)
        return ids, lut[x], hist[ids]
    ids, inv, sizes = np.unique(x, return_inverse=True, return_counts=True)
    return ids, inv.ravel(), sizes


def _contingency(p: np.ndarray, g: np.ndarray) -> _Table:
    """Contingency table of two 1D label arrays of equal, nonzero length."""
    p_ids, p_inv, p_sizes = _relabel(p)
    g_ids, g_inv, g_sizes = _relabel(g)
    n_cells = p_ids.size * g_ids.size
    key = p_inv.astype(np.int64) * g_ids.size + g_inv
    if n_cells <= max(key.size, 1 << 16):
        counts = np.bincount(key, minlength=n_cells)
        pairs = np.flatnonzero(counts)
        counts = counts[pairs]
    else:
        pairs, counts = np.unique(key, return_counts=True)
    pi, gi = np.divmod(pairs, g_ids.size)
    return _Table(p_ids, g_ids, p_sizes, g_sizes, pi, gi, counts)


def _plane_tables(p: np.ndarray, g: np.ndarray, m: np.ndarray | None) -> Iterator[_Table]:
    """One contingency table per 2D plane, over the pixels inside the mask; planes with none are skipped."""
    plane = p.shape[-2:]
    p3, g3 = p.reshape(-1, *plane), g.reshape(-1, *plane)
    m3 = None if m is None else m.reshape(-1, *plane)
    for k in range(p3.shape[0]):
        if m3 is None:
            pk, gk = p3[k].ravel(), g3[k].ravel()
        else:
            pk, gk = p3[k][m3[k]], g3[k][m3[k]]
        if pk.size:
            yield _contingency(pk, gk)


# ---------------------------------------------------------------------------- instances
@dataclass(frozen=True)
class Matching:
    """One-to-one matching of predicted to ground-truth objects at IoU > ``iou_threshold``.

    ``tp`` matched pairs, ``fp`` unmatched predicted objects, ``fn`` unmatched ground-truth objects;
    ``n_pred`` / ``n_gt`` objects counted (inside the mask; summed over the planes of a stack).
    precision = tp / n_pred, recall = tp / n_gt, f1 = 2 tp / (n_pred + n_gt). With no object in either
    image all three are 1.0 (nothing to find, nothing found); otherwise a 0 / 0 is 0.0.
    """

    tp: int
    fp: int
    fn: int
    n_pred: int
    n_gt: int
    iou_threshold: float

    @staticmethod
    def _ratio(num: int, den: int, empty: bool) -> float:
        if den == 0:
            return 1.0 if empty else 0.0
        return num / den

    @property
    def precision(self) -> float:
        return self._ratio(self.tp, self.n_pred, self.n_pred + self.n_gt == 0)

    @property
    def recall(self) -> float:
        return self._ratio(self.tp, self.n_gt, self.n_pred + self.n_gt == 0)

    @property
    def f1(self) -> float:
        return self._ratio(2 * self.tp, self.n_pred + self.n_gt, self.n_pred + self.n_gt == 0)


def _match_plane(t: _Table, threshold: float) -> tuple[int, int, int]:
    """(tp, n_pred, n_gt) of one plane."""
    p_fg, g_fg = t.p_ids != 0, t.g_ids != 0
    n_pred, n_gt = int(p_fg.sum()), int(g_fg.sum())
    both = p_fg[t.pi] & g_fg[t.gi]
    a, b, inter = t.pi[both], t.gi[both], t.counts[both]
    iou = inter / (t.p_sizes[a] + t.g_sizes[b] - inter)
    keep = iou > threshold
    a, b, iou = a[keep], b[keep], iou[keep]
    # Pairs whose pred and gt objects have no other candidate are matched as they are (at a threshold
    # >= 0.5 that is every pair: each object can overlap at most one other by more than half the union).
    alone = (np.bincount(a, minlength=t.p_ids.size)[a] == 1) & (
        np.bincount(b, minlength=t.g_ids.size)[b] == 1
    )
    tp = int(alone.sum())
    if not alone.all():
        a, b, iou = a[~alone], b[~alone], iou[~alone]
        ua, ia = np.unique(a, return_inverse=True)
        ub, ib = np.unique(b, return_inverse=True)
        # Most matches first, then the largest IoU sum: the IoU bonus of all matches together is < 1.
        score = np.zeros((ua.size, ub.size))
        score[ia, ib] = 1.0 + iou / (iou.size + 1)
        rows, cols = linear_sum_assignment(score, maximize=True)
        tp += int(np.count_nonzero(score[rows, cols]))
    return tp, n_pred, n_gt


def _match(tables: Iterable[_Table], threshold: float) -> Matching:
    tp = n_pred = n_gt = 0
    for t in tables:
        dtp, dp, dg = _match_plane(t, threshold)
        tp, n_pred, n_gt = tp + dtp, n_pred + dp, n_gt + dg
    return Matching(tp, n_pred - tp, n_gt - tp, n_pred, n_gt, threshold)


def match_instances(pred: Any, gt: Any, mask: Any = None, iou_threshold: float = 0.5,
                    volume: bool = False) -> Matching:
    """Match predicted objects to ground-truth objects one to one.

    A pred object and a gt object can be matched when their IoU (pixels, inside the mask) is greater than
    ``iou_threshold``; among those pairs a one-to-one assignment with the most matches is chosen
    (``scipy.optimize.linear_sum_assignment``; ties broken by the largest IoU sum). Above 0.5 every candidate
    pair is unique, so this only matters for lower thresholds.

    Parameters
    ----------
    pred, gt : array-like
        Label images of the same shape, (Y, X) or a stack (..., Y, X): integers (float arrays
        whose values are all integers, bool masks as one object), 0 = background, every other
        value one object.
    mask : array-like, optional
        Same shape, nonzero = scored (e.g. the annotated region); None scores every pixel.
    iou_threshold : float, default 0.5
        A pair matches when its IoU is greater than this.
    volume : bool, default False
        False: stacks are matched plane by plane and the counts summed; True: objects are 3D (an
        id is one object across all planes, IoU over voxels).

    Returns
    -------
    Matching
        tp, fp, fn, n_pred, n_gt (counts of objects), precision, recall, f1 (floats in [0, 1]).

    Raises
    ------
    ValueError
        Arrays of different shapes, empty, or not label images; a mask that selects nothing; an
        IoU threshold outside [0, 1); the message names the argument.
    """
    threshold = _check_threshold(iou_threshold)
    p, g, m = _check(pred, gt, mask)
    if volume:
        pv, gv = (p.ravel(), g.ravel()) if m is None else (p[m], g[m])
        return _match([_contingency(pv, gv)] if pv.size else [], threshold)
    return _match(_plane_tables(p, g, m), threshold)


def instance_f1(pred: Any, gt: Any, mask: Any = None, iou_threshold: float = 0.5) -> float:
    """F1 score of the one-to-one object matching at IoU > ``iou_threshold``.

    Parameters
    ----------
    pred, gt : array-like
        Label images of the same shape, (Y, X) or a stack (..., Y, X): integers (float arrays
        whose values are all integers, bool masks as one object), 0 = background, every other
        value one object.
    mask : array-like, optional
        Same shape, nonzero = scored (e.g. the annotated region); None scores every pixel.
    iou_threshold : float, default 0.5
        A pair matches when its IoU is greater than this (see :func:`match_instances`).

    Returns
    -------
    float
        2 tp / (2 tp + fp + fn), in [0, 1]; stacks are matched plane by plane.

    Raises
    ------
    ValueError
        Arrays of different shapes, empty, or not label images; a mask that selects nothing; an
        IoU threshold outside [0, 1); the message names the argument.
    """
    return match_instances(pred, gt, mask, iou_threshold).f1


def instance_precision(pred: Any, gt: Any, mask: Any = None, iou_threshold: float = 0.5) -> float:
    """Matched fraction of the predicted objects (see :func:`match_instances`)."""
    return match_instances(pred, gt, mask, iou_threshold).precision


def instance_recall(pred: Any, gt: Any, mask: Any = None, iou_threshold: float = 0.5) -> float:
    """Matched fraction of the ground-truth objects (see :func:`match_instances`)."""
    return match_instances(pred, gt, mask, iou_threshold).recall


# ---------------------------------------------------------------------------- pixel scores
def _foreground_iou(p: np.ndarray, g: np.ndarray, m: np.ndarray | None, foreground: Any) -> float:
    pb, gb = _binary(p, foreground), _binary(g, foreground)
    inter, union = pb & gb, pb | gb
    if m is not None:
        inter &= m
        union &= m
    n_union = int(np.count_nonzero(union))
    return 1.0 if n_union == 0 else int(np.count_nonzero(inter)) / n_union


def foreground_iou(
    pred: Any, gt: Any, mask: Any = None, *, foreground: int | Sequence[int] | None = None
) -> float:
    """Intersection over union of the foreground (the paper's cell-tracking score, section 4).

    Parameters
    ----------
    pred, gt : array-like
        Label images of the same shape, (Y, X) or a stack (..., Y, X): integers (float arrays
        whose values are all integers, bool masks as one object), 0 = background, every other
        value one object.
    mask : array-like, optional
        Same shape, nonzero = scored (e.g. the annotated region); None scores every pixel.
    foreground : int or sequence of int, optional
        For semantic class maps: the class value(s) that count as foreground; None: label > 0.

    Returns
    -------
    float
        |pred fg & gt fg| / |pred fg | gt fg| in [0, 1], counted over the pixels inside ``mask``
        and pooled over the planes of a stack; 1.0 when neither image has foreground.

    Raises
    ------
    ValueError
        Arrays of different shapes, empty, or not label images; a mask that selects nothing.
    """
    p, g, m = _check(pred, gt, mask)
    return _foreground_iou(p, g, m, foreground)


def _pixel_error(p: np.ndarray, g: np.ndarray, m: np.ndarray | None, foreground: Any) -> float:
    wrong = _binary(p, foreground) != _binary(g, foreground)
    if m is None:
        return int(np.count_nonzero(wrong)) / wrong.size
    return int(np.count_nonzero(wrong & m)) / int(np.count_nonzero(m))


def pixel_error(
    pred: Any, gt: Any, mask: Any = None, *, foreground: int | Sequence[int] | None = None
) -> float:
    """ISBI 2012 pixel error: the fraction of pixels whose foreground/boundary classification differs.

    Foreground is label > 0 (for ISBI 2012 ground truth: cells 255, membranes 0), or, for semantic class maps,
    a value in ``foreground`` (a class value or a sequence of them). Counted over the pixels inside ``mask``
    and pooled over the planes of a stack. This scores a binary (thresholded) result; the challenge's
    leaderboard took the best value over thresholds of a probability map, which is the caller's loop.
    """
    p, g, m = _check(pred, gt, mask)
    return _pixel_error(p, g, m, foreground)


# ---------------------------------------------------------------------------- Rand error
def _rand_error(tables: Sequence[_Table]) -> float:
    from skimage.metrics import adapted_rand_error

    rows, cols, data = [], [], []
    n_rows = n_cols = 0
    for t in tables:
        keep = t.g_ids[t.gi] != 0  # gt background is not scored (SNEMI3D / ISBI 2012 convention)
        rows.append(t.gi[keep] + n_rows)
        cols.append(t.pi[keep] + n_cols)
        data.append(t.counts[keep])
        n_rows, n_cols = n_rows + t.g_ids.size, n_cols + t.p_ids.size
    if not data:
        return 0.0
    counts = np.concatenate(data).astype(np.float64)
    # Block-diagonal table, one block per plane: pixel pairs are counted within a plane only.
    table = sparse.csr_array(
        (counts, (np.concatenate(rows), np.concatenate(cols))), shape=(n_rows, n_cols)
    )
    gt_sizes, pred_sizes = table.sum(axis=1), table.sum(axis=0)
    same_gt = gt_sizes @ gt_sizes - gt_sizes.sum()  # ordered pairs of pixels in one gt object
    same_pred = pred_sizes @ pred_sizes - pred_sizes.sum()
    if (
        same_gt + same_pred == 0
    ):  # no pixel shares an object with another in either image: they agree
        return 0.0
    with np.errstate(
        divide="ignore", invalid="ignore"
    ):  # its precision or recall may be 0 / 0; the error is not
        return float(adapted_rand_error(table=table)[0])


def rand_error(pred: Any, gt: Any, mask: Any = None) -> float:
    """ISBI 2012 (foreground-restricted, SNEMI3D "adapted") Rand error: 1 - Rand F-score.

    Pairs of pixels in the same object in pred and in gt, F-score of their precision and recall, computed by
    ``skimage.metrics.adapted_rand_error``. As there, pixels with gt label 0 are not scored (the error is
    restricted to gt objects), while pred label 0 is one segment like any other label. Pixels outside
    ``mask`` are not scored either. In a stack, pairs are counted within each plane and pooled over planes.
    0.0 when no pair of scored pixels shares an object in either image (e.g. gt has no foreground in the mask).
    """
    p, g, m = _check(pred, gt, mask)
    return _rand_error(list(_plane_tables(p, g, m)))


# ---------------------------------------------------------------------------- all at once
def evaluate(
    pred: Any, gt: Any, mask: Any = None, iou_threshold: float = 0.5
) -> dict[str, float | int]:
    """All scores of a label image against ground truth, validated and tabulated once.

    See the module docstring for stacks and ``mask``.

    Parameters
    ----------
    pred, gt : array-like
        Label images of the same shape, (Y, X) or a stack (..., Y, X): integers (float arrays
        whose values are all integers, bool masks as one object), 0 = background, every other
        value one object.
    mask : array-like, optional
        Same shape, nonzero = scored (e.g. the annotated region); None scores every pixel.
    iou_threshold : float, default 0.5
        Instances match when their IoU is greater than this.

    Returns
    -------
    dict of str to float or int
        Plain Python numbers (JSON-ready): foreground_iou, precision, recall, f1, tp, fp, fn,
        n_pred, n_gt (instances at IoU > ``iou_threshold``), pixel_error (share of pixels whose
        foreground/background differs), rand_error and iou_threshold.

    Raises
    ------
    ValueError
        Arrays of different shapes, empty, or not label images; a mask that selects nothing; an
        IoU threshold outside [0, 1); the message names the argument.
    """
    threshold = _check_threshold(iou_threshold)
    p, g, m = _check(pred, gt, mask)
    tables = list(_plane_tables(p, g, m))
    match = _match(tables, threshold)
    return {
        "foreground_iou": _foreground_iou(p, g, m, None),
        "precision": match.precision,
        "recall": match.recall,
        "f1": match.f1,
        "tp": match.tp,
        "fp": match.fp,
        "fn": match.fn,
        "n_pred": match.n_pred,
        "n_gt": match.n_gt,
        "pixel_error": _pixel_error(p, g, m, None),
        "rand_error": _rand_error(tables),
        "iou_threshold": threshold,
    }

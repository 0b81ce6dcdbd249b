"""Learning from corrections: which pixels of a corrected segmentation count as known.

A user segments an image, fixes the wrong objects in the result (erases, repaints, splits,
merges) and fine-tunes on it. The untouched predictions are not truth: they may be as wrong as
the ones fixed, only not looked at. What counts as known is

- every object the user edited (the ids a change removed and the ids it painted), as it is now,
  with a margin of its surroundings (where the user saw that nothing else was missing), and the
  changed pixels themselves (an erased false object is known background);
- everything the user explicitly marked as checked (:meth:`CorrectionTracker.check`);
- or the whole image when the user says so (``trust_rest``).

:class:`CorrectionTracker` keeps the segmentation as it was before the corrections (its
``original``) and compares the labels with it when asked: what differs is what was corrected.
That holds however the labels were changed (napari's brush, eraser, fill or polygon, a program's
``data_setitem``, undo and redo: an undone correction is no correction), without knowing how an
editor records its history.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi


class CorrectionTracker:
    """Known pixels of a segmentation being corrected (see the module docstring).

    Parameters
    ----------
    original : array of int, (Y, X) or (Z, Y, X)
        The segmentation before any correction (copied; a stack's edits stay in their plane).
    margin : int, optional
        Pixels of surroundings known around an edited object (default: a fifth of its
        diameter, at least 3 px).
    trust_rest : bool
        The whole image is known.
    """

    def __init__(self, original: Any, margin: int | None = None,
                 trust_rest: bool = False) -> None:
        orig = np.asarray(original)
        if orig.ndim not in (2, 3):
            raise ValueError(f"corrections are tracked on 2D labels or stacks of planes, got "
                             f"shape {orig.shape}")
        self.original = np.array(orig, copy=True)
        self.shape = tuple(int(s) for s in orig.shape)
        self.margin = margin
        self.trust_rest = bool(trust_rest)
        self._known = np.zeros(self.shape, bool)

    def _labels(self, labels: Any) -> np.ndarray:
        lab = np.asarray(labels)
        if lab.shape != self.shape:
            raise ValueError(f"labels {lab.shape} are not the tracked shape {self.shape}")
        return lab

    def changed(self, labels: Any) -> np.ndarray:
        """(shape) bool: the pixels whose label differs from the original."""
        return self._labels(labels) != self.original

    def corrected(self, labels: Any) -> bool:
        """Whether anything differs from the original (or was marked as checked)."""
        return bool(self._known.any() or self.changed(labels).any())

    def edited_ids(self, labels: Any) -> dict[tuple[int, ...], set[int]]:
        """{plane: ids}: per plane (``()`` for 2D labels) the ids a change removed or painted."""
        lab = self._labels(labels)
        out: dict[tuple[int, ...], set[int]] = {}
        planes = [()] if lab.ndim == 2 else [(z,) for z in range(lab.shape[0])]
        for p in planes:
            ch = lab[p] != self.original[p]
            if ch.any():
                ids = set(np.unique(lab[p][ch]).tolist()) | \
                    set(np.unique(self.original[p][ch]).tolist())
                out[p] = {int(i) for i in ids if i != 0}
        return out

    def check(self, region: Any) -> None:
        """Mark ``region`` (bool, the labels' shape) as checked: known as it is now."""
        r = np.asarray(region, bool)
        if r.shape != self.shape:
            raise ValueError(f"the checked region {r.shape} is not the labels' shape {self.shape}")
        self._known |= r

    def _plane_known(self, lab: np.ndarray, orig: np.ndarray) -> np.ndarray:
        changed = lab != orig
        if not changed.any():
            return changed
        ids = (set(np.unique(lab[changed]).tolist()) |
               set(np.unique(orig[changed]).tolist())) - {0}
        obj = np.isin(lab, sorted(ids)) if ids else np.zeros(lab.shape, bool)
        known = obj | changed
        if obj.any():
            present = np.unique(lab[obj])
            areas = np.bincount(np.searchsorted(present, lab[obj]))
            ring = self.margin if self.margin is not None else \
                max(3, int(round(0.2 * np.sqrt(float(np.median(areas))))))
            known = ndi.binary_dilation(known, iterations=int(ring)) if ring > 0 else known
        return known

    def mask(self, labels: Any) -> np.ndarray:
        """(shape) bool: where ``labels`` (as corrected now) count as complete."""
        if self.trust_rest:
            return np.ones(self.shape, bool)
        lab = self._labels(labels)
        out = self._known.copy()
        if lab.ndim == 2:
            out |= self._plane_known(lab, self.original)
        else:
            for z in range(lab.shape[0]):
                out[z] |= self._plane_known(lab[z], self.original[z])
        return out

"""Learning from corrections: which pixels of a corrected segmentation count as known.

A user segments an image, fixes the wrong objects in the result (erases, repaints, splits,
merges) and fine-tunes on it. The untouched predictions are not truth: they may be as wrong as
the ones fixed, only not looked at. What counts as known is

- every object the user edited (the ids a change removed and the ids it painted), as it is now,
  with a margin of its surroundings (where the user saw that nothing else was missing), and the
  changed pixels themselves (an erased false object is known background);
- everything the user explicitly marked as checked (:meth:`CorrectionTracker.check`);
- or the whole image when the user says so (``trust_rest``).

:class:`CorrectionTracker` follows the edits as napari reports them (a Labels layer's paint
event: (indices, old values, new values) atoms), never by diffing whole arrays. Its
:meth:`~CorrectionTracker.mask` is a ``mask`` for training (nonzero where the annotation is
complete: unpainted there is background).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi


class CorrectionTracker:
    """Known pixels of a segmentation being corrected (see the module docstring).

    ``shape``: the labels' shape ((Y, X) or (Z, Y, X); a stack's edits stay in their plane).
    ``margin``: pixels of surroundings known around an edited object (default: a fifth of its
    diameter, at least 3 px). ``trust_rest``: the whole image is known.
    """

    def __init__(self, shape: tuple[int, ...], margin: int | None = None,
                 trust_rest: bool = False) -> None:
        if len(shape) not in (2, 3):
            raise ValueError(f"corrections are tracked on 2D labels or stacks of planes, got "
                             f"shape {tuple(shape)}")
        self.shape = tuple(int(s) for s in shape)
        self.margin = margin
        self.trust_rest = bool(trust_rest)
        self._known = np.zeros(self.shape, bool)
        self._edited: dict[tuple[int, ...], set[int]] = {}  # plane -> ids edited there
        self._changed = np.zeros(self.shape, bool)
        self.edits = 0

    def record(self, atoms: Any) -> None:
        """One change of the labels (a paint event's atoms: (indices, old values, new values)).
        Cheap (the changed pixels only): the known mask is made when asked for."""
        for atom in atoms or ():
            idx, old = atom[0], np.asarray(atom[1])
            if len(idx) != len(self.shape) or not len(idx[0]):
                continue
            new = np.broadcast_to(np.asarray(atom[2]), np.shape(idx[0]))
            self._changed[idx] = True
            planes = [()] if len(self.shape) == 2 else [(int(z),) for z in np.unique(idx[0])]
            for p in planes:
                sel = slice(None) if not p else (np.asarray(idx[0]) == p[0])
                ids = set(np.unique(old[sel]).tolist()) | set(np.unique(new[sel]).tolist())
                self._edited.setdefault(p, set()).update(int(i) for i in ids if i != 0)
        self.edits += 1

    def check(self, region: Any) -> None:
        """Mark ``region`` (bool, the labels' shape) as checked: known as it is now."""
        r = np.asarray(region, bool)
        if r.shape != self.shape:
            raise ValueError(f"the checked region {r.shape} is not the labels' shape {self.shape}")
        self._known |= r

    def _plane_known(self, plane: tuple[int, ...], lab: np.ndarray) -> np.ndarray:
        ids = sorted(self._edited.get(plane, ()))
        obj = np.isin(lab, ids) if ids else np.zeros(lab.shape, bool)
        known = obj | (self._changed[plane] if plane else self._changed)
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
        lab = np.asarray(labels)
        if lab.shape != self.shape:
            raise ValueError(f"labels {lab.shape} are not the tracked shape {self.shape}")
        out = self._known.copy()
        for p in self._edited:
            if p:
                out[p] |= self._plane_known(p, lab[p])
            else:
                out |= self._plane_known(p, lab)
        return out

    @property
    def edited_ids(self) -> dict[tuple[int, ...], set[int]]:
        return {p: set(v) for p, v in self._edited.items()}

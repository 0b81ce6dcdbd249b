"""Following every change of a Labels layer's data, however napari makes it.

napari changes a Labels layer in several ways, and reports them differently:

- the brush, eraser, fill and polygon tools (and ``Labels.paint`` / ``Labels.fill``): a ``paint``
  event when the stroke is committed, whose entries (napari 0.9) are masked bounding boxes
  (a tuple of slices, a mask, the old values, the new label); the data may be written only after
  the event (``fill`` outside a stroke);
- ``data_setitem``: a ``paint`` event whose entries are (index arrays, old values, new values),
  emitted *before* the data is written unless inside ``block_history()``;
- undo and redo: no ``paint`` event, only the layer's ``set_data`` (its refresh);
- ``layer.data = ...``: the ``data`` event.

:class:`LabelsEdits` does not depend on those history formats: it keeps its own copy of the
labels, takes from a ``paint`` event at most a hint of where to look (:func:`changed_box`; the
whole array when the entries are of a kind it does not know), and compares the layer's data with
its copy there once the data has been written (at once, and again when Qt's event loop next
runs). What differs is reported as a :class:`Change` and copied; a repeated event finds nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_unet._widgets._common import level0


@dataclass(frozen=True)
class Change:
    """A change of the labels: the box ``key`` (one slice per axis, tight around the changed
    pixels), the labels there ``before`` and ``after`` (copies), and whether the whole data
    was replaced (``replaced``: a new array, maybe of another shape)."""

    key: tuple[slice, ...]
    before: np.ndarray | None
    after: np.ndarray
    replaced: bool = False

    @property
    def origin(self) -> tuple[int, ...]:
        return tuple(int(k.start) for k in self.key)


def _entry_box(entry: Any, shape: tuple[int, ...]) -> tuple[slice, ...] | None:
    """The box an undo-history entry touched, or None when the entry is of an unknown kind."""
    key = getattr(entry, "slice_key", None)
    if key is None and isinstance(entry, tuple) and entry:
        key = entry[0]
    if not isinstance(key, tuple) or len(key) != len(shape):
        return None
    if all(isinstance(k, slice) for k in key):  # a masked bounding box
        out = []
        for k, n in zip(key, shape, strict=True):
            start, stop, step = k.indices(n)
            if step != 1:
                return None
            out.append(slice(start, max(start, stop)))
        return tuple(out)
    try:  # index arrays (data_setitem)
        idx = [np.asarray(i) for i in key]
    except Exception:  # pragma: no cover - not arrays after all
        return None
    if not all(i.dtype.kind in "iu" for i in idx):
        return None
    if not idx[0].size:
        return ()  # an entry that changed nothing
    return tuple(slice(max(0, int(i.min())), min(n, int(i.max()) + 1))
                 for i, n in zip(idx, shape, strict=True))


def changed_box(entries: Any, shape: tuple[int, ...]) -> tuple[slice, ...] | None:
    """The bounding box of what a ``paint`` event's entries changed, for labels of ``shape``.

    Both kinds of napari history entry are read (masked bounding boxes and index arrays); an
    entry of any other kind, or no entries, gives None: look at the whole array. Entries that
    changed nothing give an empty box ``()``.
    """
    if not entries:
        return None
    lo = hi = None
    for entry in entries:
        box = _entry_box(entry, shape)
        if box is None:
            return None
        if box == ():
            continue
        a = np.array([k.start for k in box])
        b = np.array([k.stop for k in box])
        lo = a if lo is None else np.minimum(lo, a)
        hi = b if hi is None else np.maximum(hi, b)
    if lo is None:
        return ()
    return tuple(slice(int(s), int(e)) for s, e in zip(lo, hi, strict=True))


def _tight(changed: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of the True pixels of ``changed`` (at least one)."""
    key = []
    for ax in range(changed.ndim):
        other = tuple(a for a in range(changed.ndim) if a != ax)
        hit = np.flatnonzero(changed.any(axis=other) if other else changed)
        key.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(key)


def _defer(fn: Callable[[], None]) -> None:
    """Run ``fn`` when Qt's event loop next runs (after the code that emitted the event)."""
    from qtpy.QtCore import QTimer

    QTimer.singleShot(0, fn)


class LabelsEdits:
    """Reports every change of ``layer``'s labels to ``on_change(change)`` (see the module
    docstring). ``sync()`` looks for changes at once (e.g. before reading the labels for a job);
    ``disconnect()`` stops following."""

    def __init__(self, layer: Any, on_change: Callable[[Change], None]) -> None:
        self.layer = layer
        self.on_change = on_change
        self.copy = np.array(level0(layer.data))
        self._pending: list[tuple[slice, ...] | None] = []
        self._scheduled = False
        self._connected = True
        layer.events.paint.connect(self._painted)
        layer.events.set_data.connect(self._refreshed)
        layer.events.data.connect(self._replaced)

    # ------------------------------------------------------------------ events
    def _painted(self, event: Any) -> None:
        box = changed_box(getattr(event, "value", None), self.copy.shape)
        self._look([box])  # the brush and the eraser have written their stroke already
        self._pending.append(box)  # data_setitem writes after its event, fill may too
        self._schedule()

    def _refreshed(self, event: Any = None) -> None:
        self._pending.append(None)  # undo, redo, a program's write + refresh: look everywhere
        self._schedule()

    def _replaced(self, event: Any = None) -> None:
        data = np.array(level0(self.layer.data))
        if data.shape == self.copy.shape and np.array_equal(data, self.copy):
            return
        self.copy = data
        key = tuple(slice(0, n) for n in data.shape)
        self.on_change(Change(key, None, data.copy(), replaced=True))

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            _defer(self._deferred)

    def _deferred(self) -> None:
        self._scheduled = False
        hints, self._pending = self._pending, []
        if self._connected:
            self._look(hints)

    # ------------------------------------------------------------------ comparing
    def sync(self) -> None:
        """Compare the whole layer with the copy now."""
        self._look([None])

    def _look(self, hints: list[tuple[slice, ...] | None]) -> None:
        data = level0(self.layer.data)
        if np.shape(data) != self.copy.shape:
            self._replaced()
            return
        if any(h is None for h in hints):
            boxes = [tuple(slice(0, n) for n in self.copy.shape)]
        else:
            boxes = [h for h in hints if h]
        for box in boxes:
            now = np.asarray(data[box])
            changed = now != self.copy[box]
            if not changed.any():
                continue
            tight = _tight(changed)
            key = tuple(slice(b.start + t.start, b.start + t.stop)
                        for b, t in zip(box, tight, strict=True))
            before = self.copy[key].copy()
            after = np.array(now[tight])
            self.copy[key] = after
            self.on_change(Change(key, before, after))

    def disconnect(self) -> None:
        self._connected = False
        for ev, fn in ((self.layer.events.paint, self._painted),
                       (self.layer.events.set_data, self._refreshed),
                       (self.layer.events.data, self._replaced)):
            try:
                ev.disconnect(fn)
            except Exception:  # pragma: no cover - already disconnected
                pass

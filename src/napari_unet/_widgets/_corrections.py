"""Corrections of segmented layers, tracked from the Labels layers' own paint events.

One :class:`~napari_unet.core.corrections.CorrectionTracker` per Labels layer of the viewer,
created at the layer's first edit: every paint, fill or erase records its atoms (the changed
pixels only, no diff of whole arrays). The Fine-tune widget's "Complete in: (corrected objects)"
then trains on the edited objects with a margin; "(whole frame)" is "trust the rest".
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Labels

from ._common import level0

CORRECTED = "(corrected objects)"


def _key(layer: Any) -> Any:
    """A layer's identity: its unique id (a plugin sees layers through proxies of their own)."""
    return getattr(layer, "unique_id", None) or id(layer)


class CorrectionTracking:
    """Follows the edits of every Labels layer of ``viewer``."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.trackers: dict[int, Any] = {}  # _key(layer) -> CorrectionTracker
        self._handlers: dict[Any, tuple[Any, Any]] = {}
        self._last: dict[Any, Any] = {}  # the last atoms recorded per layer
        viewer.layers.events.inserted.connect(self._inserted)
        viewer.layers.events.removed.connect(self._removed)
        for layer in viewer.layers:
            self._watch(layer)

    def _inserted(self, event: Any) -> None:
        self._watch(event.value)

    def _removed(self, event: Any) -> None:
        layer = event.value
        h = self._handlers.pop(_key(layer), None)
        if h is not None:
            layer.events.paint.disconnect(h[1])
        self.trackers.pop(_key(layer), None)

    def _watch(self, layer: Any) -> None:
        if not isinstance(layer, Labels) or _key(layer) in self._handlers:
            return

        def painted(event: Any, layer: Any = layer) -> None:
            self.record(layer, getattr(event, "value", None))

        layer.events.paint.connect(painted)
        self._handlers[_key(layer)] = (layer, painted)

    def record(self, layer: Any, atoms: Any) -> None:
        """Record one paint event's atoms of ``layer`` (the same event twice counts once)."""
        from ..core.corrections import CorrectionTracker

        if atoms is None or self._last.get(_key(layer)) is atoms:
            return
        self._last[_key(layer)] = atoms

        shape = np.shape(level0(layer.data))
        tr = self.trackers.get(_key(layer))
        if tr is None or tr.shape != tuple(shape):
            if len(shape) not in (2, 3):
                return
            tr = self.trackers[_key(layer)] = CorrectionTracker(shape)
        tr.record(atoms)

    def edits(self, layer: Any) -> int:
        tr = self.trackers.get(_key(layer))
        return 0 if tr is None else tr.edits

    def masked_labels(self, layer: Any) -> tuple[np.ndarray, np.ndarray]:
        """(labels known, mask): the layer's labels inside what its corrections make known (0
        outside: untouched predictions are unknown), and that mask. Raises ValueError when the
        layer has not been corrected."""
        tr = self.trackers.get(_key(layer))
        if tr is None or tr.edits == 0:
            raise ValueError(f"nothing has been corrected in '{layer.name}' yet: fix some objects "
                             f"(erase, repaint, split, merge), or choose '(whole frame)' to trust "
                             f"all of it")
        labels = np.array(level0(layer.data))
        mask = tr.mask(labels)
        return np.where(mask, labels, 0), mask

    def cleanup(self) -> None:
        for layer, fn in self._handlers.values():
            try:
                layer.events.paint.disconnect(fn)
            except Exception:  # pragma: no cover
                pass
        self._handlers.clear()
        for ev, fn in ((self.viewer.layers.events.inserted, self._inserted),
                       (self.viewer.layers.events.removed, self._removed)):
            try:
                ev.disconnect(fn)
            except Exception:  # pragma: no cover
                pass

"""Corrections of segmented layers: the segmentation as it was, kept for every Labels layer.

One :class:`~napari_unet.core.train.corrections.CorrectionTracker` per Labels layer of the viewer, made
when the layer appears (or the Fine-tune widget opens) and made anew when the layer's data is
replaced (a new segmentation): it keeps a copy of the labels as they were, and what differs from
it when the user fine-tunes is what was corrected, however it was changed (brush, eraser, fill,
polygon, a program, undo and redo). The Fine-tune widget's "Complete in: (corrected objects)" then
trains on the edited objects with a margin; "(whole frame)" is "trust the rest".

Layers the plugin makes for itself (Live's preview) and layers whose data is not in memory
(dask, zarr) are not followed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Labels

from napari_unet._widgets._common import layer_key, level0

CORRECTED = "(corrected objects)"
ROLE = "napari_unet_role"  # a layer's metadata key: the plugin's own layers say what they are


class CorrectionTracking:
    """Keeps the original of every Labels layer of ``viewer`` (see the module docstring)."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.trackers: dict[Any, Any] = {}  # layer_key(layer) -> CorrectionTracker
        self._handlers: dict[Any, tuple[Any, Any]] = {}
        viewer.layers.events.inserted.connect(self._inserted)
        viewer.layers.events.removed.connect(self._removed)
        for layer in viewer.layers:
            self._watch(layer)

    def _inserted(self, event: Any) -> None:
        self._watch(event.value)

    def _removed(self, event: Any) -> None:
        layer = event.value
        h = self._handlers.pop(layer_key(layer), None)
        if h is not None:
            layer.events.data.disconnect(h[1])
        self.trackers.pop(layer_key(layer), None)

    def _watch(self, layer: Any) -> None:
        if not isinstance(layer, Labels) or layer_key(layer) in self._handlers or \
                layer.metadata.get(ROLE):
            return

        def replaced(event: Any = None, layer: Any = layer) -> None:
            self._keep(layer)

        layer.events.data.connect(replaced)
        self._handlers[layer_key(layer)] = (layer, replaced)
        self._keep(layer)

    def _keep(self, layer: Any) -> None:
        """The layer's labels as they are now become its original."""
        from napari_unet.core.train.corrections import CorrectionTracker

        data = level0(layer.data)
        if isinstance(data, np.ndarray) and data.ndim in (2, 3):
            self.trackers[layer_key(layer)] = CorrectionTracker(data)
        else:
            self.trackers.pop(layer_key(layer), None)

    def corrected(self, layer: Any) -> bool:
        """Whether ``layer`` differs from its original."""
        tr = self.trackers.get(layer_key(layer))
        data = np.asarray(level0(layer.data))
        return tr is not None and data.shape == tr.shape and tr.corrected(data)

    def masked_labels(self, layer: Any) -> tuple[np.ndarray, np.ndarray]:
        """(labels known, mask): the layer's labels inside what its corrections make known (0
        outside: untouched predictions are unknown), and that mask. Raises ValueError when the
        layer has not been corrected."""
        tr = self.trackers.get(layer_key(layer))
        if tr is None:
            raise ValueError(f"corrections of '{layer.name}' cannot be followed (its data is not "
                             f"an array in memory, or not 2D or a stack of planes): choose "
                             f"'(whole frame)' to trust all of it")
        labels = np.array(level0(layer.data))
        if labels.shape != tr.shape or not tr.corrected(labels):
            raise ValueError(f"nothing has been corrected in '{layer.name}' yet: fix some objects "
                             f"(erase, repaint, split, merge), or choose '(whole frame)' to trust "
                             f"all of it")
        mask = tr.mask(labels)
        return np.where(mask, labels, 0), mask

    def cleanup(self) -> None:
        for layer, fn in self._handlers.values():
            try:
                layer.events.data.disconnect(fn)
            except Exception:  # pragma: no cover
                pass
        self._handlers.clear()
        for ev, fn in ((self.viewer.layers.events.inserted, self._inserted),
                       (self.viewer.layers.events.removed, self._removed)):
            try:
                ev.disconnect(fn)
            except Exception:  # pragma: no cover
                pass

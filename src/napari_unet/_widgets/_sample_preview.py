"""The Fine-tune widget's Preview: one augmented training sample and its weight map (paper eq. 2)
as layers beside the source image, computed in a worker."""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.utils.notifications import show_error

from napari_unet._widgets._common import put_layer
from napari_unet._widgets._segment_jobs import user_message


class SamplePreview:
    """Preview of the Fine-tune widget ``owner`` (its pairs, strength, background label and
    Preview button)."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.worker: Any = None
        self._source = ""

    def start(self) -> Any:
        """Start the worker; returns it (None when one runs or the pair cannot be read)."""
        w = self.owner
        if self.worker is not None:
            return None
        try:
            pair = w.collect_pairs()[0]
        except ValueError as exc:
            show_error(f"Cannot preview: {user_message(exc)}")
            return None
        from napari.qt.threading import create_worker

        from napari_unet._widgets._train_jobs import preview_sample

        plane = int(w.viewer.dims.current_step[0]) if pair.labels.ndim == 3 else None
        self._source = pair.name
        self.worker = create_worker(
            preview_sample, pair, plane, augmentation_strength=float(w.strength.value),
            background_label=w._background(), _ignore_errors=True)
        self.worker.returned.connect(self._done)
        self.worker.errored.connect(lambda e: show_error(f"Cannot preview: {user_message(e)}"))
        self.worker.finished.connect(self._finished)
        w.preview_button.enabled = False
        self.worker.start()
        return self.worker

    def _done(self, result: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        image, _target, weights = result
        viewer = self.owner.viewer
        # beside the source image (to its right), in its pixel size
        meta: dict[str, Any] = {}
        if self._source in viewer.layers:
            src = viewer.layers[self._source]
            scale, translate = list(src.scale[-2:]), list(src.translate[-2:])
            translate[1] += 1.05 * image.shape[1] * scale[1]
            meta = {"scale": tuple(scale), "translate": tuple(translate)}
        put_layer(viewer, "augmented sample", image, "image", meta, colormap="gray")
        top = float(np.percentile(weights[weights > 0], 99.5)) if np.any(weights > 0) else 1.0
        put_layer(viewer, "augmented weight map", weights, "image", meta, colormap="inferno",
                  blending="additive", opacity=0.7, contrast_limits=(0.0, max(top, 1e-3)))

    def _finished(self) -> None:
        self.worker = None
        self.owner.preview_button.enabled = True

"""The Fine-tune widget's Preview: one augmented training sample and its weight map (paper eq. 2)
as layers beside the source image, computed in a worker."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from napari.utils.notifications import show_error

from napari_unet._widgets._common import put_layer
from napari_unet._widgets._runner import JobRunner, explain


class PreviewHost(Protocol):
    """What Preview uses of the Fine-tune widget: its viewer, its Preview button and its pairs."""

    viewer: Any
    preview_button: Any

    def collect_pairs(self) -> list[Any]: ...


class SamplePreview:
    """Preview of the Fine-tune widget ``owner`` (:class:`PreviewHost`) with the augmentation
    strength and background label of its training ``settings``."""

    def __init__(self, owner: PreviewHost, settings: Any) -> None:
        self.owner = owner
        self.settings = settings
        self.runner = JobRunner(owner)  # type: ignore[arg-type] - the widget, a QObject
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
            show_error(f"Cannot preview: {explain(exc)}")
            return None
        from napari_unet._widgets._train_jobs import preview_sample

        plane = int(w.viewer.dims.current_step[0]) if pair.labels.ndim == 3 else None
        self._source = pair.name
        w.preview_button.enabled = False
        self.worker = self.runner.start(
            preview_sample, pair, plane, augmentation_strength=float(self.settings.strength.value),
            background_label=self.settings.background, on_result=self._done,
            on_error=lambda sentence: show_error(f"Cannot preview: {sentence}"),
            on_done=self._finished)
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

    def cleanup(self) -> None:
        """The widget closes: quit a running preview; nothing of it reaches the viewer."""
        self.runner.quit()
        self.worker = None

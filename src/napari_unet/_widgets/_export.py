"""Export… next to Save in the Fine-tune widget: the fine-tuned model as a bioimage.io package (for
ilastik, deepImageJ, QuPath, bioimageio.core), a TorchScript or an ONNX file.

Writing a package runs inference for its test tensors and validates it: a few seconds, so it runs in a
napari thread worker over the core's export generator; the Fine-tune widget's status line shows its
steps. The test tensors and cover come from the fine-tune image (real data of the user's kind).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from magicgui.widgets import PushButton
from napari.utils.notifications import show_info

from napari_unet._widgets._runner import JobRunner

FILTERS = {"bioimage.io model package (*.zip)": "bioimageio", "TorchScript (*.pt)": "torchscript",
           "ONNX (*.onnx)": "onnx"}
SUFFIXES = {".zip": "bioimageio", ".pt": "torchscript", ".onnx": "onnx"}


class ExportHost(Protocol):
    """What Export… uses of the Fine-tune widget (a QWidget, the file dialog's parent): the model
    and its name, the chosen image (the test tensors' sample), the viewer, the status line."""

    viewer: Any
    model: Any
    model_name: str
    image: Any
    status: Any

    @property
    def running(self) -> bool: ...

    def report_error(self, message: str) -> None: ...


class ExportControl:
    """The Export… button of a Fine-tune widget (:class:`ExportHost`) and the export it starts
    (one at a time)."""

    def __init__(self, owner: ExportHost) -> None:
        self.owner = owner
        self.runner = JobRunner(owner)  # type: ignore[arg-type] - the widget, a QObject
        self.worker: Any = None
        self.button = PushButton(
            text="Export…", tooltip="Write the fine-tuned model for other programs: a bioimage.io model "
                                   "package (.zip: ilastik, deepImageJ, QuPath), TorchScript (.pt) or ONNX "
                                   "(.onnx). Needs: pip install \"napari-unet[export]\"")
        self.button.enabled = False
        self.button.changed.connect(self.ask)

    def set_enabled(self, enabled: bool) -> None:
        self.button.enabled = bool(enabled) and self.worker is None

    def ask(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        name = self.owner.model_name or "model"
        path, chosen = QFileDialog.getSaveFileName(self.owner, "Export the fine-tuned model", f"{name}.zip",
                                                   ";;".join(FILTERS))
        if path:
            self.export(path, FILTERS.get(chosen))

    def _sample(self) -> np.ndarray | None:
        """The fine-tune image as a 2D (or channels-first) array, or None for the default sample."""
        layer_name = self.owner.image.value
        layers = self.owner.viewer.layers
        if not layer_name or layer_name not in layers:
            return None
        layer = layers[layer_name]
        data = np.asarray(layer.data[0] if getattr(layer, "multiscale", False) else layer.data)
        if getattr(layer, "rgb", False):
            data = np.moveaxis(data, -1, 0)
        elif data.ndim > 2 and self.owner.model.config.in_channels == 1:
            data = data[tuple(int(i) for i in self.owner.viewer.dims.current_step[: data.ndim - 2])]
        return data

    def export(self, path: str, fmt: str | None = None) -> Any:
        """Export the fine-tuned model to ``path`` (format from ``fmt`` or the suffix; default a
        bioimage.io package). Returns the worker (None if nothing started)."""
        from pathlib import Path

        model = self.owner.model
        if model is None:
            self._error("Nothing to export yet: fine-tune a model first.")
            return None
        if self.worker is not None:
            return None
        fmt = fmt or SUFFIXES.get(Path(path).suffix.lower(), "bioimageio")
        self.button.enabled = False
        self.worker = self.runner.start(
            export_job, model, path, fmt, self._sample(),
            on_event=lambda ev: self.owner.status.setText(f"Exporting: {ev.what} ({ev.done}/{ev.total})"),
            on_result=self._exported,
            on_error=lambda sentence: self._error(f"Cannot export the model: {sentence}"),
            on_done=self._finished)
        return self.worker

    def _exported(self, path: str) -> None:
        text = f"Exported '{self.owner.model_name}' to {path}"
        show_info(text)
        self.owner.status.setText(text)

    def _error(self, message: str) -> None:
        self.owner.report_error(message)  # a notification that also stays in the status line

    def _finished(self) -> None:
        self.worker = None
        self.set_enabled(self.owner.model is not None and not self.owner.running)

    def cleanup(self) -> None:
        """The widget closes: quit a running export."""
        self.runner.quit()
        self.worker = None


def export_job(model: Any, path: str, fmt: str, sample: np.ndarray | None) -> Any:
    """Worker generator: write ``model`` in ``fmt``; returns the written path (as a string)."""
    if fmt == "bioimageio":
        from napari_unet.core.exchange.bioimageio import export_bioimageio

        return str((yield from export_bioimageio(model, path, sample=sample)))
    from napari_unet.core.exchange import ExportStep
    from napari_unet.core.exchange.portable import export_onnx, export_torchscript

    suffix = ".pt" if fmt == "torchscript" else ".onnx"
    if not path.lower().endswith(suffix):
        path += suffix
    yield ExportStep(0, 1, fmt)
    written = (export_torchscript if fmt == "torchscript" else export_onnx)(model, path)
    yield ExportStep(1, 1, fmt)
    return str(written)

"""Segment widget: image layer(s) + model -> Labels (or probability Image) layers.

Results are named ``"<image name> <output type>"`` (e.g. ``"nuclei instances"``, ``"nuclei semantic"``,
``"nuclei probabilities"``), carry the source's scale, translate, units and axis labels, and replace
the layer of that name when the widget runs again. Several selected images are queued in one worker
(one progress bar, one Cancel); each finished image is added as soon as it is complete, and Cancel
stops between tiles without adding a half-filled layer. An image layer removed while it is
segmented gets no result (the layer itself is checked, not its name).

The status line says what each result holds ("added 'nuclei instances': 117 objects"; for
semantic output each class's share of the pixels); a result with nothing in it is also a
warning. Errors and warnings stay in the status line until the next action (notifications vanish).
"""

from __future__ import annotations

from typing import Any

import napari
from magicgui.widgets import CheckBox, ComboBox, Container, PushButton, Select, SpinBox
from napari.layers import Image
from napari.utils import progress
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QProgressBar, QVBoxLayout, QWidget
from superqt import QCollapsible

from napari_unet._widgets._common import (
    find_layer,
    layer_key,
    layer_names,
    level0,
    put_layer,
    show_failure,
    warm_up_labels,
)
from napari_unet._widgets._runner import JobRunner, explain
from napari_unet._widgets._segment_jobs import (
    JobFailed,
    JobProgress,
    JobResult,
    SegmentJob,
    segment_jobs,
)
from napari_unet._widgets._spatial import output_metadata, spatial_metadata
from napari_unet._widgets._state import ModelLoaded, registry_for

OUTPUT_TYPES = ("instances", "semantic", "probabilities")
PADDINGS = ("mirror", "zero")


def result_name(source: str, output: str) -> str:
    """Name of the layer that holds the result of segmenting layer ``source``."""
    return f"{source} {output}"


class SegmentWidget(QWidget):
    """Segment one or more image layers with a U-Net (see the module docstring)."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from napari_unet.core.device import (
            available_devices,  # torch: when the widget opens, not on import
        )

        self.viewer = viewer
        self.registry = registry_for(viewer)
        warm_up_labels()
        self.runner = JobRunner(self)
        self.worker: Any = None
        self._progress: Any = None
        # job index -> (the source layer's layer_key (a removed layer is not kept), its name,
        # spatial metadata, output type)
        self._pending: dict[int, tuple[Any, str, dict[str, Any], str]] = {}
        self._added: list[str] = []  # "'<result>': <what it holds>" of this run
        self._said: list[str] = []  # this run's warnings and errors, kept in the status line
        self._model_name = ""
        self.last_error = ""  # the last error said (it stays in the status line until the next action)

        self.images = Select(
            choices=self._image_choices, allow_multiple=True, label="Images",
            tooltip="Image layers to segment; select several (Ctrl/Shift-click) to segment them "
                    "one after another. Stacks (Z or T, Y, X) are segmented plane by plane.")
        self.model = ComboBox(
            choices=self._model_choices, label="Model",
            tooltip="The U-Net to use: shipped models, files you opened, and models fine-tuned "
                    "in this session")
        self.open_model = PushButton(
            text="Open model file…",
            tooltip="Add a napari-unet model file (.safetensors) or a bioimage.io "
                    "model package (.zip) to the model list")
        self.device = ComboBox(
            choices=["auto", *available_devices()], value="auto", label="Device",
            tooltip="Where the network runs: auto = CUDA GPU, then Apple MPS, else the CPU")
        self.output = ComboBox(
            choices=list(OUTPUT_TYPES), value="instances", label="Output",
            tooltip="instances: one id per object (Labels); semantic: one id per class (Labels); "
                    "probabilities: the softmax of every class (Image, one class axis)")
        self.volume = CheckBox(
            value=False, text="3D objects across z",
            tooltip="For z-stacks (Z, Y, X): one id per 3D object, its sections in neighbouring "
                    "planes linked by how much they overlap (touching objects stay apart). "
                    "Off: each plane is segmented on its own and ids restart in every plane. "
                    "Instances only; not for time series")
        self.tile_size = SpinBox(
            value=0, min=0, max=8192, step=16, label="Tile size",
            tooltip="Network input tile in pixels (overlap-tile strategy); auto picks it from the "
                    "free memory. Smaller tiles need less memory; results are identical.")
        self.tile_size.native.setSpecialValueText("auto")
        self.padding = ComboBox(
            choices=list(PADDINGS), value="mirror", label="Border",
            tooltip="Context beyond the image border: mirror (the paper) or zero")
        self.tta = CheckBox(
            value=False, text="Average 8 orientations (8x slower)",
            tooltip="Test-time augmentation: average the network's output over the 8 flips and "
                    "90-degree rotations of every tile (as the paper did for ISBI 2012); slightly "
                    "more accurate outlines, 8x the compute")
        self.run_button = PushButton(text="Run", tooltip="Segment the selected image layers")
        self.cancel_button = PushButton(
            text="Cancel", tooltip="Stop after the current tile; no half-finished layer is added")
        self.cancel_button.enabled = False

        main = Container(widgets=[self.images, self.model, self.open_model, self.device,
                                  self.output, self.volume], labels=True)
        advanced_box = Container(widgets=[self.tile_size, self.padding, self.tta], labels=True)
        self.advanced = QCollapsible("Advanced", self)
        self.advanced.addWidget(advanced_box.native)
        self.progress_bar = QProgressBar(self)
        self.progress_bar.setToolTip("Tiles done in the current image")
        self.progress_bar.setValue(0)
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        self.status.setToolTip("What the widget is doing")
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button.native)
        buttons.addWidget(self.cancel_button.native)
        layout = QVBoxLayout(self)
        layout.addWidget(main.native)
        layout.addWidget(self.advanced)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.containers = (main, advanced_box)  # the controls with labels (and tooltips)

        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.open_model.changed.connect(self._ask_model_file)
        self.model.changed.connect(self._model_chosen)
        self.registry.changed.connect(self._models_changed)
        self.registry.current_changed.connect(self._current_changed)
        events = viewer.layers.events
        for ev in (events.inserted, events.removed, events.reordered):
            ev.connect(self._layers_changed)
        for layer in viewer.layers:
            layer.events.name.connect(self._layers_changed)
        if self.registry.current:
            self.model.value = self.registry.current
        self._select_default()

    # ------------------------------------------------------------------ choices
    def _image_choices(self, _w: Any = None) -> list[str]:
        return layer_names(self.viewer, (Image,))

    def _model_choices(self, _w: Any = None) -> list[str]:
        return self.registry.names()

    def _layers_changed(self, event: Any = None) -> None:
        if event is not None and getattr(event, "type", "") == "inserted":
            event.value.events.name.connect(self._layers_changed)
        self.images.reset_choices()
        self._select_default()

    def _select_default(self) -> None:
        if self.images.value or not self.images.choices:
            return
        active = self.viewer.layers.selection.active
        pick = active.name if isinstance(active, Image) else self.images.choices[-1]
        self.images.value = [pick]

    def _models_changed(self) -> None:
        self.model.reset_choices()

    def _current_changed(self, name: str) -> None:
        self.model.reset_choices()
        if name and self.model.value != name:
            self.model.value = name

    def _model_chosen(self, name: str | None) -> None:
        if name and name in self.registry and self.registry.current != name:
            self.registry.current = name

    def _ask_model_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a U-Net model", "",
                                              "Models (*.safetensors *.zip);;All files (*)")
        if path:
            self.load_model_file(path)

    def load_model_file(self, path: str) -> str | None:
        """Add a model file to the list and make it the current model; returns its name."""
        try:
            name = self.registry.add_file(path)
        except Exception as exc:
            self._fail(f"Cannot open the model: {explain(exc)}")
            return None
        self.registry.current = name
        self.last_error = ""
        self.status.setText(f"Opened the model '{name}'.")
        return name

    def _fail(self, message: str) -> None:
        """An error: a notification, and the status line until the next action."""
        self.last_error = message
        show_failure(self.status, message)

    # ------------------------------------------------------------------ run
    @property
    def running(self) -> bool:
        return self.worker is not None

    def run(self) -> Any:
        """Start segmenting the selected layers; returns the worker (None if nothing started)."""
        if self.running:
            return None
        self.last_error = ""
        names = list(self.images.value or [])
        if not names:
            self._fail("Choose at least one image layer to segment (Images list).")
            return None
        if not self.model.value or self.model.value not in self.registry:
            self._fail("No model is available: open a model file (Open model file…) or fine-tune one.")
            return None
        output = self.output.value
        if self.volume.value and output != "instances":
            self._fail("3D objects across z are instances: choose Output 'instances' (or untick "
                       "'3D objects across z').")
            return None
        jobs, self._pending = [], {}
        for name in names:
            if name not in self.viewer.layers:
                continue
            layer = self.viewer.layers[name]
            data = level0(layer.data)
            if getattr(layer, "multiscale", False):
                show_info(f"'{name}' is multiscale: segmenting its full-resolution level.")
            self._pending[len(jobs)] = (layer_key(layer), name,
                                        spatial_metadata(layer), output)
            rgb = bool(getattr(layer, "rgb", False))
            scale = tuple(float(v) for v in layer.scale)
            spacing = scale[-3:] if len(scale) >= 3 and data.ndim - rgb >= 3 else None
            jobs.append(SegmentJob(name, data, rgb, spacing))
        if not jobs:
            self._fail("The chosen image layers are no longer in the viewer.")
            return None
        entry = self.registry[self.model.value]
        tile = int(self.tile_size.value) or None
        if self.padding.value == "zero":
            from napari_unet.core.predict.padding import zero_padding_note

            note = zero_padding_note(entry.model)  # None until a file model is loaded
            if note:
                show_warning(f"'{entry.name}': {note}.")
        self._added, self._said, self._model_name = [], [], entry.name
        self._progress = progress(total=0, desc=f"U-Net: {names[0]}")
        self.progress_bar.setRange(0, 0)
        self.status.setText(f"Segmenting {len(jobs)} image(s) with '{entry.name}'…")
        self._set_running(True)
        self.worker = self.runner.start(
            segment_jobs, jobs, entry.ref(), entry.name, output=output, tile_size=tile,
            padding=self.padding.value, device=self.device.value, tta=bool(self.tta.value),
            volume=bool(self.volume.value), on_event=self.on_event, on_error=self._on_error,
            on_done=self._on_finished)
        return self.worker

    def cancel(self) -> None:
        """Stop the running job after its current tile (nothing half-done is added)."""
        if self.worker is not None:
            self.status.setText("Cancelling…")
            self.worker.quit()

    def _set_running(self, running: bool) -> None:
        for w in (self.run_button, self.open_model, self.images, self.model, self.device,
                  self.output, self.volume, self.tile_size, self.padding, self.tta):
            w.enabled = not running
        self.cancel_button.enabled = running

    def on_event(self, ev: Any) -> None:
        """An event of the running job (progress, a finished or failed image, the model loaded)."""
        if isinstance(ev, JobProgress):
            if self.worker is None:
                return  # the job has finished: a stale update must not overwrite the final status
            if self.progress_bar.maximum() != ev.total:
                self.progress_bar.setRange(0, ev.total)
            self.progress_bar.setValue(ev.done)
            where = f", plane {ev.plane + 1}/{ev.planes}" if ev.planes > 1 else ""
            self.status.setText(f"{ev.name} ({ev.index + 1}/{ev.count}): tile {ev.done}/{ev.total}"
                                f"{where} on {ev.device}")
            # napari's progress bar calls QApplication.processEvents() when its description
            # changes, which can deliver the job's later events (even `finished`) right here:
            # update it last, and only while it is still this job's
            pb = self._progress
            if pb is not None and pb.total != ev.total:
                pb.total = ev.total
                pb.set_description(f"U-Net: {ev.name} ({ev.index + 1}/{ev.count})")
            if pb is not None and self._progress is pb:
                pb.update(ev.done - pb.n)
        elif isinstance(ev, JobResult):
            self._add_result(ev)
        elif isinstance(ev, JobFailed):
            self._said.append(f"Could not segment '{ev.name}': {ev.message}")
            self._fail(self._said[-1])
        elif isinstance(ev, ModelLoaded):
            self.registry.set_loaded(ev.name, ev.model)

    def _add_result(self, ev: JobResult) -> None:
        key, source, meta, output = self._pending[ev.index]
        layer = find_layer(self.viewer, key)  # that very layer, if it is still in the viewer
        if layer is None:
            self._warn(f"'{source}' was removed while it was segmented: no result added.")
            return
        source = layer.name  # renamed while it was segmented: the result follows its name
        kind = "image" if output == "probabilities" else "labels"
        kw = output_metadata(meta, ev.axes, output == "probabilities")
        name = result_name(source, output)
        extra = {"colormap": "magma"} if kind == "image" else {}
        put_layer(self.viewer, name, ev.data, kind, kw, **extra)
        summary = ev.summary
        self._added.append(f"'{name}'" + (f": {summary.text}" if summary and summary.text else ""))
        if summary is not None and summary.empty:
            found = ("no objects" if output == "instances"
                     else "no pixel of any class but the background")
            self._warn(f"The model '{self._model_name}' found {found} in '{source}'. If there is "
                       f"something to see, this model does not suit these images: fine-tune it on "
                       f"a few painted objects (Fine-tune widget), or choose another model.")

    def _warn(self, message: str) -> None:
        """A warning: a notification, and the status line until the next action."""
        self._said.append(message)
        show_warning(message)

    def _on_error(self, sentence: str) -> None:
        self._said.append(f"Segmentation failed: {sentence}")
        self._fail(self._said[-1])

    def _on_finished(self) -> None:
        worker, self.worker = self.worker, None
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._set_running(False)
        cancelled = worker is not None and worker.abort_requested
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0 if cancelled or not self._added else 1)  # full when done
        lines = []
        if cancelled:
            lines.append("Cancelled; unfinished images were not added.")
            show_warning(lines[-1])
        if self._added:
            lines.append(f"added {', '.join(self._added)}")
        lines += self._said  # warnings and errors stay until the next action
        self.status.setText("\n".join(lines) or "Done")

    # ------------------------------------------------------------------ cleanup
    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt name
        self.cleanup()
        super().closeEvent(event)

    def cleanup(self) -> None:
        """Quit a running job and disconnect from the viewer and the model registry."""
        self.runner.quit()
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed, events.reordered):
            ev.disconnect(self._layers_changed)
        for layer in self.viewer.layers:
            layer.events.name.disconnect(self._layers_changed)
        self.registry.changed.disconnect(self._models_changed)
        self.registry.current_changed.disconnect(self._current_changed)

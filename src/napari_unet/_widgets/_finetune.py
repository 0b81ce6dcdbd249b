"""Fine-tune widget: (image, labels[, region]) layer pairs + a base model -> a new model.

Training runs in a worker (:class:`._runner.JobRunner`) over the core's ``train`` generator (the
training jobs of :mod:`._train_jobs`), with the ``TrainConfig`` that the training settings
(:class:`._train_settings.TrainingSettings`) build. Stop ends training after the current
step and keeps the best validated model; the new model is added to the viewer's model list at once
(the Segment widget shows it) under a name that says how it was made ("nuclei fine-tuned on cells",
"nuclei live on cells", "nuclei corrected on cells"; a second one gets a number), Save writes it to a
``.safetensors`` file and Export… writes it for other programs (:mod:`._export`). An error stays in
the status line until the next action (a notification vanishes).

The widget is one class; its parts live in files of their own and see only what they use: the
training settings (:mod:`._train_settings`), Live (:mod:`._live`, through ``LiveHost``), Preview
(:mod:`._sample_preview`, ``PreviewHost``), Export… (:mod:`._export`, ``ExportHost``), the
corrections of Labels layers (:mod:`._corrections`), the pairs (:mod:`._pairs`), the loss plot
(:mod:`._plot`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import napari
from magicgui.widgets import (
    ComboBox,
    Container,
    PushButton,
)
from napari.layers import Image, Labels, Shapes
from napari.utils import progress
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QProgressBar,
    QVBoxLayout,
    QWidget,
)

from napari_unet._widgets._common import SHOW_EVERY_S, layer_names, show_failure, warm_up_labels
from napari_unet._widgets._corrections import CORRECTED, CorrectionTracking
from napari_unet._widgets._export import ExportControl
from napari_unet._widgets._live import LiveControls
from napari_unet._widgets._pairs import WHOLE, collect_pairs, pair_names
from napari_unet._widgets._plot import LossPlot
from napari_unet._widgets._runner import JobRunner, explain
from napari_unet._widgets._sample_preview import SamplePreview
from napari_unet._widgets._state import ModelLoaded, registry_for
from napari_unet._widgets._train_jobs import (
    TrainingPair,
    new_volume_note,
    train_job,
    train_volume_job,
    volume_pairs,
    volume_spacing,
)
from napari_unet._widgets._train_settings import VOLUME_STARTS, TrainingSettings


class FineTuneWidget(QWidget):
    """Fine-tune a U-Net on painted labels (see the module docstring)."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.registry = registry_for(viewer)
        warm_up_labels()
        self.runner = JobRunner(self)
        self.worker: Any = None
        self.model: Any = None  # the last fine-tuned UNetModel
        self.model_name = ""
        self._stop = threading.Event()
        self._progress: Any = None
        self._pairs: list[tuple[str, str, str]] = []
        self._budget_s: float | None = None
        self._summary = ""
        self.last_error = ""  # the last error said, kept in the status line until the next action
        self._run: dict[str, Any] = {}  # what the running Train learns from: its model's name
        self._network = 0  # which network of an ensemble trains (the plot marks the next one)
        self._budget_said = False  # a budget too short for this machine is warned of once a run
        self.clock = time.monotonic  # what times the progress's redraws (tests inject their own)
        self._shown_at = -1e9  # when the progress was last drawn (self.clock seconds)
        self._done = 0  # the progress of the latest step (drawn or not)
        self._notes: list[str] = []

        self.image = ComboBox(choices=self._images, label="Image",
                              tooltip="Image layer to learn from")
        self.labels = ComboBox(
            choices=self._labels, label="Labels",
            tooltip="Labels layer painted on that image: one id per object, 0 = not painted")
        self.corrections = CorrectionTracking(viewer)  # edits of every Labels layer
        self.region = ComboBox(
            choices=self._regions, label="Complete in",
            tooltip="Where the annotation is complete (unpainted = background there): the whole "
                    "frame ('trust the rest'), the objects you corrected in a segmented layer "
                    "with a margin around them (untouched predictions are not taken as truth), "
                    "or a Labels/Shapes layer marking the fully annotated region")
        self.add_pair = PushButton(text="Add pair",
                                   tooltip="Add this (image, labels, region) to the training set")
        self.remove_pair = PushButton(text="Remove pair",
                                      tooltip="Remove the selected pair from the training set")
        self.pair_list = QListWidget(self)
        self.pair_list.setToolTip("Training pairs; when empty, the pair chosen above is used")
        self.pair_list.setMaximumHeight(70)
        self.settings = TrainingSettings(self._models)  # the training controls
        self.preview_button = PushButton(
            text="Preview", tooltip="Add one augmented training sample and its weight map (paper "
                                    "eq. 2) as layers")
        self.train_button = PushButton(text="Train", tooltip="Start fine-tuning in the background")
        self.stop_button = PushButton(
            text="Stop", tooltip="Stop after the current step and keep the best model so far")
        self.save_button = PushButton(text="Save model…",
                                      tooltip="Write the fine-tuned model to a .safetensors file")
        self.stop_button.enabled = False
        self.save_button.enabled = False
        self.export_control = ExportControl(self)  # Export… (bioimage.io, TorchScript, ONNX)

        data = Container(widgets=[self.image, self.labels, self.region], labels=True)
        pair_buttons = QHBoxLayout()
        pair_buttons.addWidget(self.add_pair.native)
        pair_buttons.addWidget(self.remove_pair.native)
        buttons = QHBoxLayout()
        for b in (self.preview_button, self.train_button, self.stop_button, self.save_button,
                  self.export_control.button):
            buttons.addWidget(b.native)
        self.progress_bar = QProgressBar(self)
        self.progress_bar.setToolTip("Training steps done")
        self.plot = LossPlot(self)
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        self.status.setToolTip("What the widget is doing")
        layout = QVBoxLayout(self)
        layout.addWidget(data.native)
        layout.addLayout(pair_buttons)
        layout.addWidget(self.pair_list)
        layout.addWidget(self.settings.native)
        layout.addLayout(buttons)
        self._sample = SamplePreview(self, self.settings)  # Preview: one augmented sample
        self.live = LiveControls(self, self.settings)  # the Live switch: training while the user paints
        layout.addLayout(self.live.layout)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.plot)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.containers = (data, self.settings)  # the controls with labels (and tooltips)

        self.add_pair.changed.connect(self._add_pair)
        self.remove_pair.changed.connect(self._remove_pair)
        self.preview_button.changed.connect(self.preview)
        self.train_button.changed.connect(self.train)
        self.stop_button.changed.connect(self.stop)
        self.save_button.changed.connect(self._ask_save)
        self.registry.changed.connect(self._models_changed)
        events = viewer.layers.events
        for ev in (events.inserted, events.removed, events.reordered):
            ev.connect(self._layers_changed)
        for layer in viewer.layers:
            layer.events.name.connect(self._layers_changed)
        if self.registry.current:
            self.settings.base_model.value = self.registry.current

    # ------------------------------------------------------------------ choices
    def _images(self, _w: Any = None) -> list[str]:
        return layer_names(self.viewer, (Image,))

    def _labels(self, _w: Any = None) -> list[str]:
        return layer_names(self.viewer, (Labels,))

    def _regions(self, _w: Any = None) -> list[str]:
        return [WHOLE, CORRECTED, *layer_names(self.viewer, (Labels, Shapes))]

    def _models(self, _w: Any = None) -> list[str]:
        return self.registry.names()

    def _layers_changed(self, event: Any = None) -> None:
        if event is not None and getattr(event, "type", "") == "inserted":
            event.value.events.name.connect(self._layers_changed)
        if event is not None and getattr(event, "type", "") == "removed" and self.running:
            self._removed_while_training(event.value)
        for w in (self.image, self.labels, self.region):
            w.reset_choices()

    def _removed_while_training(self, layer: Any) -> None:
        """A layer of the running fine-tune was removed: the run goes on with its copies of the
        data (taken at the start), and says so in the status until the run ends."""
        used = {n for pair in self._pair_names() for n in pair[:2]}
        if getattr(layer, "name", None) in used:
            note = (f"'{layer.name}' was removed during training: training goes on with the "
                    f"copy taken at the start")
            self._notes.append(note)
            show_warning(note)

    def _models_changed(self) -> None:
        self.settings.base_model.reset_choices()

    def _add_pair(self) -> None:
        if not self.image.value or not self.labels.value:
            self.report_error("Choose an image layer and the labels layer painted on it first.")
            return
        pair = (self.image.value, self.labels.value, self.region.value or WHOLE)
        if pair not in self._pairs:
            self._pairs.append(pair)
            self.pair_list.addItem(f"{pair[0]}  +  {pair[1]}  ({pair[2]})")

    def _remove_pair(self) -> None:
        row = self.pair_list.currentRow()
        if 0 <= row < len(self._pairs):
            self._pairs.pop(row)
            self.pair_list.takeItem(row)

    # ------------------------------------------------------------------ data
    def _pair_names(self) -> list[tuple[str, str, str]]:
        if self._pairs:
            return list(self._pairs)
        if self.image.value and self.labels.value:
            return [(self.image.value, self.labels.value, self.region.value or WHOLE)]
        return []

    def collect_pairs(self) -> list[TrainingPair]:
        """The training pairs as plain arrays (labels and masks copied). Raises ValueError."""
        return collect_pairs(self.viewer, self._pair_names(), self.corrections)

    # ------------------------------------------------------------------ preview
    def preview(self) -> Any:
        """Add one augmented sample and its weight map as layers (computed in a worker)."""
        return self._sample.start()

    @property
    def preview_worker(self) -> Any:
        return self._sample.worker

    # ------------------------------------------------------------------ train
    @property
    def running(self) -> bool:
        return self.worker is not None

    def train(self) -> Any:
        """Start fine-tuning; returns the worker (None if it could not start)."""
        if self.running:
            return None
        self.last_error = ""
        settings = self.settings
        name = settings.base_model.value
        new3d = settings.new3d
        if new3d:
            name = VOLUME_STARTS[1]
        elif not name or name not in self.registry:
            self.report_error("Choose a base model (open a model file in the Segment widget first).")
            return None
        try:
            pairs = self.collect_pairs()
            config = settings.train_config()
        except ValueError as exc:
            self.report_error(f"Cannot train: {explain(exc)}")
            return None
        self._stop = threading.Event()
        job_kwargs = dict(config=config, device=settings.device.value,
                          seed=int(settings.seed.value), stop=self._stop)
        if settings.volume.value:
            try:
                vols = volume_pairs(pairs, settings.background)
                spacing = volume_spacing([tuple(self.viewer.layers[n[0]].scale)
                                          for n in self._pair_names()])
            except ValueError as exc:
                self.report_error(f"Cannot train: {explain(exc)}")
                return None
            if new3d:
                show_info(new_volume_note(spacing))
            job, args = train_volume_job, (vols, None if new3d else self.registry[name].ref(), name)
            job_kwargs.update(spacing=spacing)
        else:
            job, args = train_job, (pairs, self.registry[name].ref(), name)
            job_kwargs.update(background_label=settings.background)
        names = self._pair_names()
        self._run = dict(base=name, images=[n[0] for n in names],
                         corrected=any(n[2] == CORRECTED for n in names))
        # with a time budget the bar counts seconds, else steps
        self._budget_s = 60.0 * config.minutes if config.minutes else None
        total = int(self._budget_s) if self._budget_s else config.steps
        self.plot.clear(total if not self._budget_s else 0)
        self._network = 0
        self._budget_said = False
        self._shown_at = -1e9
        self._done = 0
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(0)
        self._progress = progress(total=total, desc=f"U-Net fine-tuning ({name})")
        self._notes: list[str] = []  # said in the status while this run lasts
        self.status.setText(f"Preparing {len(pairs)} pair(s)…")
        self.worker = self.runner.start(
            job, *args, on_event=self.on_event, on_result=self.on_model,
            on_error=lambda sentence: self.report_error(f"Fine-tuning failed: {sentence}"),
            on_done=self._on_finished, names=pair_names(names), **job_kwargs)
        self.set_running(True)
        return self.worker

    def stop(self) -> None:
        """End training after the current step; the best model so far is kept."""
        if self.worker is not None:
            self.status.setText("Stopping: keeping the best model so far…")
            self._stop.set()

    def set_running(self, running: bool) -> None:
        """Controls disabled while a Train runs (Stop enabled), enabled again when it ends."""
        for w in (self.train_button, self.add_pair, self.remove_pair, self.image, self.labels,
                  self.region):
            w.enabled = not running
        self.settings.set_running(running)
        self.stop_button.enabled = running
        self.model_ready()

    def model_ready(self) -> None:
        """Save and Export… enabled when there is a model and no Train runs: after any run that
        produced one (Train, Live, corrections; ``on_model`` calls it)."""
        ready = self.model is not None and not self.running
        self.save_button.enabled = ready
        self.export_control.set_enabled(ready)

    def report_error(self, message: str) -> None:
        """``message`` as an error notification and in the status line, where it stays until the
        next action (notifications vanish)."""
        self.last_error = message
        show_failure(self.status, message)

    def ready_text(self, stopped: bool = False) -> str:
        """The status line once a run has kept a model (``stopped``: Stop ended it)."""
        how = "Stopped: model" if stopped else "Model"
        return (f"{how} '{self.model_name}' ready in the Segment widget; Save writes it to a file, "
                f"Export… for other programs.\n{self._summary}")

    def on_event(self, ev: Any) -> None:
        """An event of the running Train: the base model loaded, or a training step done."""
        if isinstance(ev, ModelLoaded):
            self.registry.set_loaded(ev.name, ev.model)
            return
        if ev.network != self._network:  # the next network of an ensemble starts
            self._network = ev.network
            self.plot.new_network(ev.step)
        # every step is recorded, drawn at most every SHOW_EVERY_S
        now = self.clock()
        warn = bool(ev.budget_short and not self._budget_said)
        due = warn or now - self._shown_at >= SHOW_EVERY_S
        self.plot.add(ev.step, ev.loss, ev.val_score, ev.total, redraw=due)
        done = ev.step
        if self._budget_s and ev.eta_s is not None:
            done = int(round(self._budget_s - ev.eta_s))
        self._done = done
        if not due:
            return
        self._shown_at = now
        self.progress_bar.setValue(done)
        text = f"step {ev.step}, loss {ev.loss:.4f}" if self._budget_s else \
            f"step {ev.step}/{ev.total}, loss {ev.loss:.4f}"
        if ev.val_score is not None:
            text += f", validation F1 {ev.val_f1:.3f}, IoU {ev.val_iou:.3f}"
        if ev.eta_s is not None:
            text += f", {ev.eta_s:.0f} s left"
        if ev.validation:
            text += f"\n{ev.validation}"
        if ev.budget:  # what the time budget holds on this machine, once measured
            text += f"\n{ev.budget}"
            if warn:
                self._budget_said = True
                show_warning(f"Fine-tune: {ev.budget}.")
        self.status.setText("\n".join([text, *self._notes]))
        # last: napari's progress bar may process events re-entrantly (see the Segment widget)
        if self._progress is not None:
            self._progress.update(done - self._progress.n)

    def _model_name(self, model: Any) -> tuple[str, str]:
        """(name, root) of a model a run returned: "<root> <how> on <images>", where root is the
        shipped or opened model the chain of fine-tunings started from, and how is "fine-tuned",
        "live" (Live sets ``provenance["live"]``), "corrected" (Complete in: corrected objects),
        "corrected live", "fine-tuned in 3D" or "trained" (a new 3D U-Net)."""
        prov = model.provenance or {}
        live = "live" in prov
        if live:  # Live calls back while its session is still set (its image is chosen there)
            session = self.live.session
            base = self.settings.base_model.value or "model"
            images = [session.image_layer.name if session is not None else self.image.value]
            corrected = (session.corrections is not None if session is not None
                         else self.region.value == CORRECTED)
        else:
            base = self._run.get("base") or self.settings.base_model.value or "model"
            images = self._run.get("images") or [self.image.value]
            corrected = bool(self._run.get("corrected"))
        scratch = prov.get("fine_tuned_3d", {}).get("from_scratch")
        root = model.name if scratch else self.registry.root_of(base)
        how = ("trained" if scratch else "corrected live" if live and corrected else "live" if live
               else "corrected" if corrected else "fine-tuned")
        if "fine_tuned_3d" in prov and not scratch:
            how += " in 3D"
        names = list(dict.fromkeys(n for n in images if n))
        on = (" on " + " and ".join(names) if len(names) <= 2 else
              f" on {names[0]} and {len(names) - 1} more images") if names else ""
        return f"{root} {how}{on}", root

    def on_model(self, model: Any) -> None:
        """A run's model (Train, Live, corrections): into the model list under a name of its own
        (never replacing another), current in the Segment widget; Save and Export… enabled."""
        if model is None:
            return
        from napari_unet.core.train import training_summary

        prov = model.provenance or {}
        name, root = self._model_name(model)
        self.last_error = ""
        self.model = model
        self.model_name = self.registry.add_model(name, model, root=root)
        self.registry.current = self.model_name
        self._summary = training_summary(prov)
        if prov.get("validation", {}).get("kept") == "start":
            show_warning(prov["validation"]["note"])
        from napari_unet.core.train.report import undertrained

        short = undertrained(prov)
        if short:  # said as a warning too: the info below is easily missed
            show_warning(f"Model '{self.model_name}': {short}.")
        show_info(f"Model '{self.model_name}' is ready in the Segment widget: {self._summary}.")
        self.model_ready()
        # Live always ends by its own stop; a Train stopped before its end says so
        stopped = "live" not in prov and self._stop.is_set()
        self.status.setText(self.ready_text(stopped))

    def _on_finished(self) -> None:
        self.worker = None
        self.progress_bar.setValue(min(self._done, self.progress_bar.maximum()))  # the last steps,
        self.plot.update()  # drawn or not
        if self._progress is not None:
            self._progress.update(self._done - self._progress.n)
            self._progress.close()
            self._progress = None
        self.set_running(False)
        # an error stays in the status line (report_error); a kept model was said by on_model

    # ------------------------------------------------------------------ save
    def _ask_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the fine-tuned model",
                                              f"{self.model_name or 'model'}.safetensors",
                                              "napari-unet models (*.safetensors)")
        if path:
            self.save(path)

    def save(self, path: str) -> str | None:
        """Write the last fine-tuned model to ``path``; returns the written file's path."""
        if self.model is None:
            self.report_error("Nothing to save yet: fine-tune a model first.")
            return None
        from napari_unet.core.modelfile.files import save_model

        try:
            written = save_model(self.model, path)
        except Exception as exc:
            self.report_error(f"Cannot save the model: {explain(exc)}")
            return None
        if self.model_name in self.registry:
            self.registry[self.model_name].path = str(written)
        self.last_error = ""
        show_info(f"Saved '{self.model_name}' to {written}")
        self.status.setText(f"Saved '{self.model_name}' to {written}")
        return str(written)

    # ------------------------------------------------------------------ cleanup
    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt name
        self.cleanup()
        super().closeEvent(event)

    def cleanup(self) -> None:
        """Stop a running training (its result is dropped) and disconnect from the viewer."""
        self._stop.set()
        self.runner.quit()
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._sample.cleanup()
        self.live.cleanup()
        self.corrections.cleanup()
        self.export_control.cleanup()
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed, events.reordered):
            ev.disconnect(self._layers_changed)
        for layer in self.viewer.layers:
            layer.events.name.disconnect(self._layers_changed)
        self.registry.changed.disconnect(self._models_changed)

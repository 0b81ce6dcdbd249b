"""Live mode of the Fine-tune widget: the U-Net learns while the user paints.

A :class:`LiveSession` connects one (image, Labels) pair of the viewer to the core's
:func:`~napari_unet.core.train.live_train` running in a napari thread worker:

- every change of the Labels layer (brush, eraser, fill, polygon, undo, redo, a program's
  ``data_setitem``, its data replaced: followed by :class:`._edits.LabelsEdits`, whatever napari's
  history entries look like) is sent to the core's :class:`~napari_unet.core.train.LiveInbox` as
  the new labels of the changed box, read from the layer after the change was written;
- the box the user looks at (napari's camera and canvas size, clipped to the image; the current
  plane of a stack) is sent on every pan, zoom or change of plane; the worker segments it every
  few seconds, or at once when it moved, into the preview layer ``"<image> live"``;
- Stop ends training; the model is kept as after fine-tuning. Removing the image or the painting
  stops it too (and says so); renaming them is followed.

The preview reads at a glance above the painting: the outlines of the objects the U-Net finds, in
one colour (yellow), over the painting's filled colours; the painting stays the active layer.

Unpainted pixels are unknown: background is what the user painted with the background label.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from napari.layers import Labels

from napari_unet._widgets._common import SHOW_EVERY_S, layer_key, level0
from napari_unet._widgets._corrections import ROLE
from napari_unet._widgets._edits import Change, LabelsEdits
from napari_unet._widgets._runner import JobRunner
from napari_unet._widgets._state import ModelLoaded

PREVIEW_COLOR = "yellow"


def visible_box(layer: Any, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the pixels of ``layer`` (last two axes, ``shape``) inside the canvas
    (napari's ``corner_pixels``: the corners of the canvas in the layer's data coordinates,
    updated when the canvas draws), clipped to the image."""
    corners = np.asarray(layer.corner_pixels, float)[:, -2:]
    y0, x0 = (int(max(0, np.floor(v))) for v in corners[0])
    y1 = int(min(shape[0], np.ceil(corners[1][0]) + 1))
    x1 = int(min(shape[1], np.ceil(corners[1][1]) + 1))
    return y0, max(y0, y1), x0, max(x0, x1)


class LiveSession:
    """One live training of the widget (see the module docstring), run by ``runner``.
    ``on_event(ev)`` gets every event of the worker on the Qt thread; ``on_model(model)`` the kept
    model; ``on_error(sentence)`` an error; ``on_done()`` is called when the worker has ended."""

    def __init__(self, viewer: Any, image_name: str, labels_name: str, base: Any, *,
                 background_label: int | None, config: Any, device: str, seed: int,
                 on_event: Any, on_model: Any, on_done: Any, preview_every: float = 3.0,
                 corrections: Any = None, on_notice: Any = None, on_error: Any = None,
                 runner: JobRunner | None = None, model_name: str = "") -> None:
        from napari_unet._widgets._train_jobs import live_job
        from napari_unet.core.train import LiveInbox

        self.viewer = viewer
        self.image_layer = viewer.layers[image_name]
        self.labels_layer = viewer.layers[labels_name]
        image = level0(self.image_layer.data)
        labels = np.asarray(level0(self.labels_layer.data))
        self.rgb = bool(getattr(self.image_layer, "rgb", False))
        spatial = tuple(image.shape[:-1] if self.rgb else image.shape)
        if spatial != labels.shape:
            raise ValueError(f"'{image_name}' {spatial} and '{labels_name}' {labels.shape} differ "
                             f"in shape: paint the labels on that image")
        if labels.ndim not in (2, 3):
            raise ValueError(f"live training needs a 2D image or a stack of planes, got "
                             f"{labels.shape}")
        self.shape = labels.shape
        self.preview_name = f"{image_name} live"
        self.corrections = corrections  # learning from corrections: the edited objects are known
        mask = None
        if corrections is not None:
            labels, mask = self._corrected()
        self.inbox = LiveInbox(labels, None if mask is None else [mask])
        self.on_event, self.on_model, self.on_done = on_event, on_model, on_done
        self.on_notice = on_notice or (lambda text: None)
        self.ended_by: str | None = None  # why the session ended, when not by Stop
        self.kept: Any = None  # the model this session returned
        self.runner = runner or JobRunner()
        self.edits = LabelsEdits(self.labels_layer, self._changed)
        self.viewer.layers.events.removed.connect(self._layer_removed)
        self.image_layer.events.name.connect(self._renamed)
        self.labels_layer.events.name.connect(self._renamed)
        self.viewer.camera.events.center.connect(self.send_view)
        self.viewer.camera.events.zoom.connect(self.send_view)
        self.viewer.dims.events.current_step.connect(self.send_view)
        self.preview_layer()
        self.send_view()
        self.worker = self.runner.start(
            live_job, image, self.inbox, base, model_name, background_label=background_label,
            config=config, device=device, seed=seed, rgb=self.rgb,
            preview_every=preview_every, on_event=self._yielded, on_result=self._returned,
            on_error=on_error, on_done=self._finished)

    # ---------------------------------------------------------------- painter -> core
    def _corrected(self) -> tuple[np.ndarray, np.ndarray]:
        try:
            return self.corrections.masked_labels(self.labels_layer)
        except ValueError:  # nothing corrected yet: nothing known
            return np.zeros(self.shape, np.int32), np.zeros(self.shape, bool)

    def _changed(self, change: Change) -> None:
        """A change of the painting (any kind: see ``_edits``), read after it was written."""
        if change.replaced and change.after.shape != self.shape:
            self.on_notice(f"'{self.labels_layer.name}' now has another shape "
                           f"{change.after.shape}: Live goes on with the painting as it was")
            return
        if self.corrections is not None:  # what is known grows (or shrinks) with each correction
            labels, mask = self._corrected()
            self.inbox.paint(0, (0,) * labels.ndim, labels, mask=mask)
            return
        self.inbox.paint(0, change.origin, change.after)

    def _layer_removed(self, event: Any) -> None:
        layer = event.value
        gone = layer_key(layer)  # napari hands plugins proxies: compare the layers' ids
        if gone in (layer_key(self.labels_layer), layer_key(self.image_layer)):
            what = "painting" if gone == layer_key(self.labels_layer) else "image"
            self.ended_by = (f"the {what} '{layer.name}' was removed: Live stopped, the model "
                             f"learnt so far is kept")
            self.on_notice(self.ended_by)
            self.stop()

    def _renamed(self, event: Any = None) -> None:
        self.on_notice(f"Live goes on with image '{self.image_layer.name}' and painting "
                       f"'{self.labels_layer.name}'")

    def plane(self) -> tuple[int, ...]:
        if len(self.shape) == 2:
            return ()
        step = self.viewer.dims.current_step
        ax = self.viewer.dims.ndim - 3  # the plane axis of the image (first of its 3 dims)
        return (int(min(max(step[ax] if ax >= 0 else 0, 0), self.shape[0] - 1)),)

    def send_view(self, event: Any = None) -> None:
        box = visible_box(self.labels_layer, self.shape[-2:])
        self.inbox.view(0, box, self.plane())

    # ---------------------------------------------------------------- core -> viewer
    def _yielded(self, ev: Any) -> None:
        from napari_unet.core.events import PreviewDone

        if isinstance(ev, PreviewDone):
            self._show_preview(ev)
        else:
            self.send_view()  # the canvas may have redrawn since the last camera event
        self.on_event(ev)

    def preview_layer(self) -> Labels:
        """The preview layer, added (empty) if missing. Adding a layer is napari's own main-thread
        work (~130 ms on the 2-core CPU): the session does it when Live is switched on, as the
        answer to that click, not in the middle of training."""
        if self.preview_name in self.viewer.layers and \
                isinstance(self.viewer.layers[self.preview_name], Labels) and \
                self.viewer.layers[self.preview_name].data.shape == self.shape:
            return self.viewer.layers[self.preview_name]
        if self.preview_name in self.viewer.layers:
            self.viewer.layers.remove(self.preview_name)
        layer = Labels(np.zeros(self.shape, np.uint32), name=self.preview_name,
                       scale=self.labels_layer.scale, translate=self.labels_layer.translate,
                       opacity=1.0, metadata={ROLE: "live preview"})
        outline_in_one_colour(layer, PREVIEW_COLOR)
        selection = self.viewer.layers.selection
        active, selected = selection.active, set(selection)
        # above the painting: its outlines over the painting's filled colours
        self.viewer.layers.insert(self.viewer.layers.index(self.labels_layer) + 1, layer)
        # napari makes an inserted layer the active one: the user's brush stays on their layer
        selection.clear()
        selection.update(selected)
        selection.active = active
        return layer

    def _show_preview(self, ev: Any) -> None:
        layer = self.preview_layer()
        y0, y1, x0, x1 = ev.box
        key = tuple(ev.plane) + (slice(y0, y1), slice(x0, x1))
        layer.data[key] = ev.labels
        layer.refresh()

    def _returned(self, model: Any) -> None:
        if model is not None:
            self.kept = model
            self.on_model(model)

    def _finished(self) -> None:
        self.disconnect()
        self.on_done()

    # ---------------------------------------------------------------- control
    def stop(self) -> None:
        self.inbox.stop()

    def disconnect(self) -> None:
        self.edits.disconnect()
        for ev, fn in ((self.viewer.layers.events.removed, self._layer_removed),
                       (self.image_layer.events.name, self._renamed),
                       (self.labels_layer.events.name, self._renamed),
                       (self.viewer.camera.events.center, self.send_view),
                       (self.viewer.camera.events.zoom, self.send_view),
                       (self.viewer.dims.events.current_step, self.send_view)):
            try:
                ev.disconnect(fn)
            except Exception:  # pragma: no cover - already disconnected
                pass


def outline_in_one_colour(layer: Labels, color: str) -> None:
    """Show ``layer``'s objects as outlines (2 px) of one colour, whatever their ids."""
    from napari.utils.colormaps import DirectLabelColormap

    layer.colormap = DirectLabelColormap(color_dict={None: color, 0: "transparent"})
    layer.contour = 2


class LiveHost(Protocol):
    """What Live uses of the Fine-tune widget besides its training settings: the viewer and its
    model list, the chosen (image, labels, region) and the corrections, the Train button, the
    status line and loss plot (drawn at most every SHOW_EVERY_S of its ``clock``), and where a
    kept model goes."""

    viewer: Any
    registry: Any
    corrections: Any
    image: Any
    labels: Any
    region: Any
    train_button: Any
    status: Any
    plot: Any
    model: Any
    clock: Any

    @property
    def running(self) -> bool: ...

    def report_error(self, message: str) -> None: ...

    def on_model(self, model: Any) -> None: ...

    def model_ready(self) -> None: ...

    def ready_text(self, stopped: bool = False) -> str: ...


class LiveControls:
    """The Live switch and "New labels layer" button of the Fine-tune widget (``owner``, through
    :class:`LiveHost`), reading its training ``settings``, and the status line of a live
    training."""

    def __init__(self, owner: LiveHost, settings: Any) -> None:
        from magicgui.widgets import CheckBox, PushButton
        from qtpy.QtWidgets import QHBoxLayout

        self.owner = owner
        self.settings = settings
        self.runner = JobRunner(owner)  # type: ignore[arg-type] - the widget, a QObject
        self.session: LiveSession | None = None
        self.live = CheckBox(
            value=False, text="Live",
            tooltip="Train while you paint: every stroke in the Labels layer is learnt within a "
                    "second, and the part of the image you look at is segmented every few "
                    "seconds into the layer '<image> live'. Paint background with the background "
                    "label, each object with its own id; unpainted is unknown. Untick to stop "
                    "and keep the model")
        self.new_labels = PushButton(
            text="New labels layer",
            tooltip="Add an empty Labels layer on the chosen image to paint on (background = the "
                    "background label, objects = the next ids)")
        self.layout = QHBoxLayout()
        self.layout.addWidget(self.live.native)
        self.layout.addWidget(self.new_labels.native)
        self.live.changed.connect(self._toggled)
        self.new_labels.changed.connect(self.add_labels_layer)
        self.last_preview: Any = None  # the last PreviewDone shown
        self._shown_at = -1e9  # when a step was last drawn (the owner's clock)

    def add_labels_layer(self) -> Any:
        """An empty Labels layer on the chosen image, selected, in paint mode; returns it."""
        w = self.owner
        name = w.image.value
        if not name or name not in w.viewer.layers:
            w.report_error("Choose the image to paint on first.")
            return None
        img = w.viewer.layers[name]
        data = level0(img.data)
        shape = tuple(data.shape[:-1] if getattr(img, "rgb", False) else data.shape)
        layer = w.viewer.add_labels(np.zeros(shape, np.uint32), name=f"{name} painting",
                                    scale=img.scale[-len(shape):], translate=img.translate[-len(shape):])
        w.labels.reset_choices()
        w.labels.value = layer.name
        w.viewer.layers.selection.active = layer
        layer.mode = "paint"
        background = int(self.settings.background_label.value)
        layer.selected_label = background + 1
        w.status.setText(f"Paint on '{layer.name}': background with label "
                         f"{background}, each object with its own id "
                         f"(press M for a new one), then tick Live.")
        return layer

    def _toggled(self, on: bool) -> None:
        if on and self.session is None:
            self.start()
        elif not on and self.session is not None:
            self.stop()

    def start(self) -> LiveSession | None:
        from napari_unet._widgets._runner import explain

        w, settings = self.owner, self.settings
        if w.running:
            w.report_error("A fine-tuning is running: stop it before going live.")
            self.live.value = False
            return None
        name = settings.base_model.value
        if not name or name not in w.registry:
            w.report_error("Choose a base model first.")
            self.live.value = False
            return None
        if not w.image.value or not w.labels.value:
            w.report_error("Choose an image and the Labels layer painted on it (or add a new one).")
            self.live.value = False
            return None
        from napari_unet._widgets._corrections import CORRECTED

        corrections = w.corrections if w.region.value == CORRECTED else None
        try:
            self.session = LiveSession(
                w.viewer, w.image.value, w.labels.value, w.registry[name].ref(),
                background_label=settings.background if corrections is not None
                else int(settings.background_label.value), config=settings.train_config(live=True),
                device=settings.device.value, seed=int(settings.seed.value),
                on_event=self.on_event, on_model=w.on_model, on_done=self.on_done,
                corrections=corrections, on_notice=self._notice, on_error=self._failed,
                runner=self.runner, model_name=name)
        except (ValueError, KeyError) as exc:
            w.report_error(f"Cannot go live: {explain(exc)}")  # stays in the status
            self.live.value = False
            return None  # nothing of the widget's settings was changed
        if corrections is None:
            # live: unpainted is unknown, background is what is painted with the background
            # label. Ticked only once Live runs, and left ticked: the painting is scribbles,
            # and a Train on it afterwards must not take the unpainted rest for background
            settings.scribbles.value = True
        w.plot.clear(0)
        self.last_preview = None
        self._shown_at = -1e9
        w.status.setText("Live: starting…")
        for c in (w.train_button, settings.base_model, w.image, w.labels, settings.device,
                  self.new_labels):
            c.enabled = False
        return self.session

    def stop(self) -> None:
        if self.session is not None:
            self.owner.status.setText("Stopping live training: keeping the model…")
            self.session.stop()

    def on_event(self, ev: Any) -> None:
        """An event of the live training: the base model loaded, waiting, a step, a preview."""
        from napari_unet.core.events import LiveWaiting, PreviewDone, StepDone
        from napari_unet.core.train.live_inbox import preview_meaning

        w, s = self.owner, self.session
        if isinstance(ev, ModelLoaded):
            w.registry.set_loaded(ev.name, ev.model)
        elif isinstance(ev, LiveWaiting):
            w.status.setText(f"Live: {ev.message}")
        elif isinstance(ev, StepDone):
            now = w.clock()  # every step is recorded, drawn at most every SHOW_EVERY_S
            due = now - self._shown_at >= SHOW_EVERY_S
            w.plot.add(ev.step, ev.loss, ev.val_score, ev.step, redraw=due)  # x grows with the run
            if not due:
                return
            self._shown_at = now
            since = None if s is None else s.inbox.seconds_since_change()
            text = f"Live: step {ev.step}, loss {ev.loss:.4f}"
            if since is not None:
                text += f", painting last changed {since:.0f} s ago"
            if ev.val_score is not None:
                text += f", validation F1 {ev.val_f1:.3f}, IoU {ev.val_iou:.3f}"
            if self.last_preview is not None:
                text += f"\n{preview_meaning(self.last_preview.agreement)}"
            w.status.setText(text + f"\n{ev.validation}")
        elif isinstance(ev, PreviewDone):
            self.last_preview = ev

    def _failed(self, sentence: str) -> None:
        message = f"Live training failed: {sentence}"
        self.owner.report_error(message)
        if self.session is not None:
            self.session.ended_by = message[0].lower() + message[1:]

    def _notice(self, text: str) -> None:
        self.owner.status.setText(f"Live: {text}")

    def on_done(self) -> None:
        """The live session has ended (stopped, failed or its layer removed): controls back."""
        w = self.owner
        session, self.session = self.session, None
        if self.live.value:
            self.live.value = False
        for c in (w.train_button, w.image, w.labels, self.new_labels):
            c.enabled = True
        self.settings.set_running(False)
        w.model_ready()
        lines = []
        if session is not None and session.ended_by:
            lines.append(f"Live: {session.ended_by}.")
        if session is not None and session.kept is not None and session.kept is w.model:
            lines.append(w.ready_text())  # this session's model, not an earlier run's
        elif session is not None and not session.ended_by:
            lines.append("Live stopped before anything could be learnt: no model kept.")
        if lines and not (session is not None and session.ended_by and
                          session.ended_by.startswith("live training failed")):
            w.status.setText("\n".join(lines))

    def cleanup(self) -> None:
        """The widget closes: stop training, and let nothing of the worker reach the widget."""
        if self.session is not None:
            s = self.session
            s.stop()
            self.runner.quit()
            s.disconnect()
            self.session = None

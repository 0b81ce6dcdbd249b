"""Painting as a person paints: mouse press / move / release on a shown napari viewer's canvas.

A data point (y, x) of a 2D layer is mapped through the layer's transform and the camera to the
canvas: canvas = ((x_w - cx) * zoom + width / 2, (y_w - cy) * zoom + height / 2), with
(cy, cx) = ``viewer.camera.center[-2:]``. The tools are napari's own (``layer.mode`` "paint",
"erase", "fill"), so strokes are recorded exactly as a user's are; undo and redo are the
keyboard shortcuts (Ctrl+Z, Ctrl+Shift+Z) on the canvas.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from qtpy.QtCore import QPoint, Qt
from qtpy.QtTest import QTest
from qtpy.QtWidgets import QApplication

LEFT = Qt.MouseButton.LeftButton
NONE = Qt.KeyboardModifier.NoModifier


def canvas_of(viewer):
    return viewer.window._qt_viewer.canvas.native


def settle(n: int = 3) -> None:
    app = QApplication.instance()
    for _ in range(n):
        app.processEvents()


def to_canvas(viewer, layer, y: float, x: float) -> QPoint:
    """The canvas point (logical pixels) where the data point (y, x) of ``layer`` is drawn."""
    world = layer.data_to_world(np.array([y, x], float))[-2:]
    cy, cx = viewer.camera.center[-2:]
    zoom = viewer.camera.zoom
    canvas = canvas_of(viewer)
    return QPoint(int(round((world[1] - cx) * zoom + canvas.width() / 2)),
                  int(round((world[0] - cy) * zoom + canvas.height() / 2)))


def _activate(viewer, layer, mode: str) -> None:
    viewer.layers.selection.active = layer
    layer.mode = mode
    settle()


def stroke(viewer, layer, points: Sequence[tuple[float, float]], *, label: int | None = None,
           size: int | None = None, mode: str = "paint") -> None:
    """One drag of napari's brush (``mode`` "paint") or eraser ("erase") through the data points
    ``points`` ((y, x) of ``layer``), with ``label`` and brush ``size`` when given."""
    _activate(viewer, layer, mode)
    if label is not None:
        layer.selected_label = int(label)
    if size is not None:
        layer.brush_size = int(size)
    canvas = canvas_of(viewer)
    pts = [to_canvas(viewer, layer, y, x) for y, x in points]
    QTest.mousePress(canvas, LEFT, NONE, pts[0])
    for a, b in zip(pts[:-1], pts[1:], strict=True):  # moves every few pixels, as a hand does
        n = max(1, int(max(abs(b.x() - a.x()), abs(b.y() - a.y())) // 4))
        for k in range(1, n + 1):
            QTest.mouseMove(canvas, QPoint(a.x() + (b.x() - a.x()) * k // n,
                                           a.y() + (b.y() - a.y()) * k // n))
            settle(1)
    QTest.mouseRelease(canvas, LEFT, NONE, pts[-1])
    settle()


def fill(viewer, layer, y: float, x: float, label: int) -> None:
    """A click of napari's fill bucket at data point (y, x) with ``label``."""
    _activate(viewer, layer, "fill")
    layer.selected_label = int(label)
    QTest.mouseClick(canvas_of(viewer), LEFT, NONE, to_canvas(viewer, layer, y, x))
    settle()


def polygon(viewer, layer, vertices: Sequence[tuple[float, float]], label: int) -> None:
    """napari's polygon tool: a click at each vertex ((y, x) of ``layer``), Enter to close it."""
    _activate(viewer, layer, "polygon")
    layer.selected_label = int(label)
    canvas = canvas_of(viewer)
    for y, x in vertices:
        p = to_canvas(viewer, layer, y, x)
        QTest.mouseMove(canvas, p)
        settle(1)
        QTest.mouseClick(canvas, LEFT, NONE, p)
        settle(1)
    QTest.keyClick(canvas, Qt.Key.Key_Return)
    settle()


def undo(viewer, layer) -> None:
    """Ctrl+Z on the canvas with ``layer`` active."""
    viewer.layers.selection.active = layer
    QTest.keyClick(canvas_of(viewer), Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    settle()


def redo(viewer, layer) -> None:
    """Ctrl+Shift+Z on the canvas with ``layer`` active."""
    viewer.layers.selection.active = layer
    QTest.keyClick(canvas_of(viewer), Qt.Key.Key_Z,
                   Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    settle()


def paint_object(viewer, layer, gt: np.ndarray, obj: int, label: int, size: int = 3) -> None:
    """Brush strokes of ``size`` along every other row of object ``obj`` of the reference ``gt``,
    kept inside it (its rows shrunk by the brush's radius and a pixel), as a careful person paints."""
    from scipy import ndimage as ndi

    inside = ndi.binary_erosion(gt == obj, iterations=size // 2 + 1)
    ys, xs = np.nonzero(inside)
    for y in range(int(ys.min()), int(ys.max()) + 1, 2):
        row = xs[ys == y]
        if row.size:
            stroke(viewer, layer, [(y, int(row.min())), (y, int(row.max()))],
                   label=label, size=size)

"""Every way napari changes a Labels layer reaches the plugin: real mouse strokes of napari's
brush, eraser and fill on a shown viewer's canvas (run under xvfb-run), undo and redo from the
keyboard, a program's ``data_setitem`` with and without ``block_history``, and the data replaced.
The follower (``_widgets._edits.LabelsEdits``) keeps a mirror that must equal the layer after
each of them; the history entries napari records are read only as hints."""

from __future__ import annotations

import numpy as np
import pytest
from painting import fill, polygon, redo, settle, stroke, undo

from napari_unet._widgets._edits import LabelsEdits, changed_box


@pytest.fixture
def painted(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.random.default_rng(0).random((90, 120)), name="img")
    layer = viewer.add_labels(np.zeros((90, 120), np.uint32), name="painting")
    settle()
    mirror = np.zeros((90, 120), np.uint32)
    changes = []

    def on_change(change):
        changes.append(change)
        if change.replaced:
            mirror.resize(change.after.shape, refcheck=False)
            mirror[...] = change.after
        else:
            np.testing.assert_array_equal(mirror[change.key], change.before)
            mirror[change.key] = change.after

    edits = LabelsEdits(layer, on_change)
    yield viewer, layer, mirror, changes
    edits.disconnect()


def test_brush_eraser_fill_undo_and_redo_all_reach_the_follower(painted, qtbot):
    viewer, layer, mirror, changes = painted
    stroke(viewer, layer, [(30, 20), (30, 90)], label=3, size=7)
    assert (layer.data == 3).sum() > 300, "the brush painted on the canvas"
    np.testing.assert_array_equal(mirror, layer.data)
    n = len(changes)
    assert n >= 1 and changes[-1].key[0].start >= 20 and changes[-1].key[0].stop <= 40

    stroke(viewer, layer, [(30, 40), (30, 60)], mode="erase", size=9)
    assert (layer.data == 3).sum() > 0 and layer.data[30, 50] == 0
    np.testing.assert_array_equal(mirror, layer.data)

    fill(viewer, layer, 30, 25, 5)  # the left part of the stroke, cut off by the eraser
    assert layer.data[30, 25] == 5 and layer.data[30, 85] == 3
    qtbot.waitUntil(lambda: np.array_equal(mirror, layer.data), timeout=5000)

    painted_now = np.array(layer.data)
    undo(viewer, layer)
    assert layer.data[30, 25] == 3, "Ctrl+Z undid the fill"
    qtbot.waitUntil(lambda: np.array_equal(mirror, layer.data), timeout=5000)
    redo(viewer, layer)
    np.testing.assert_array_equal(layer.data, painted_now)
    qtbot.waitUntil(lambda: np.array_equal(mirror, layer.data), timeout=5000)

    polygon(viewer, layer, [(60, 20), (60, 60), (85, 40)], 8)
    assert (layer.data == 8).sum() > 200 and layer.data[70, 40] == 8, "the polygon was drawn"
    qtbot.waitUntil(lambda: np.array_equal(mirror, layer.data), timeout=5000)


def test_a_programs_edits_arrive_with_their_values_not_the_old_ones(painted, qtbot):
    _viewer, layer, mirror, changes = painted
    idx = (np.array([10, 11, 12]), np.array([5, 6, 7]))
    layer.data_setitem(idx, 7)  # napari emits its paint event before it writes the data
    qtbot.waitUntil(lambda: np.array_equal(mirror, layer.data), timeout=5000)
    assert (mirror[idx] == 7).all()
    with layer.block_history():
        layer.data_setitem((np.array([50]), np.array([50])), 9)
    qtbot.waitUntil(lambda: mirror[50, 50] == 9, timeout=5000)
    new = np.zeros((90, 120), np.uint32)
    new[:5] = 2
    layer.data = new  # replaced
    assert changes[-1].replaced
    np.testing.assert_array_equal(mirror, new)
    layer.data = np.zeros((40, 40), np.uint32)  # another shape: said as a replacement
    assert changes[-1].replaced and changes[-1].after.shape == (40, 40)


def test_changed_box_reads_both_kinds_of_history_entry_and_falls_back_when_unsure():
    shape = (3, 50, 60)
    masked = ((slice(1, 2), slice(10, 20), slice(5, 9)), None, np.zeros((1, 10, 4)), 4)
    arrays = ((np.array([0, 2]), np.array([3, 40]), np.array([7, 8])), np.zeros(2), 5)
    assert changed_box([masked], shape) == (slice(1, 2), slice(10, 20), slice(5, 9))
    assert changed_box([arrays], shape) == (slice(0, 3), slice(3, 41), slice(7, 9))
    assert changed_box([masked, arrays], shape) == (slice(0, 3), slice(3, 41), slice(5, 9))
    assert changed_box([("something new",)], shape) is None  # unknown: look everywhere
    assert changed_box(None, shape) is None and changed_box([], shape) is None
    empty = ((np.array([], int),) * 3, np.zeros(0), 1)
    assert changed_box([empty], shape) == ()

"""Live mode and corrections of the Fine-tune widget in a real napari viewer (run with xvfb-run),
painted as a person paints: mouse press / move / release on the canvas with napari's own brush,
eraser and fill, undo and redo from the keyboard (see tests/painting.py). The strokes reach the
core's inbox, the preview follows the painting and the view, Stop keeps a model that Segment uses;
corrections of a segmented layer are known and fine-tuning on them gives a working model."""

from __future__ import annotations

import re

import numpy as np
import pytest
from painting import fill, paint_object, redo, settle, stroke, undo
from qtpy.QtCore import Qt

from napari_unet._synthetic import rod_colony

PLUGIN = "napari-unet"
TIMEOUT = 240_000  # ms
BG = 1


def paint_background(viewer, layer, gt: np.ndarray) -> None:
    """Brush strokes of the background label along empty rows above and below the colony."""
    empty = np.flatnonzero(~(gt > 0).any(axis=1))
    for y in empty[2:-2:4]:
        stroke(viewer, layer, [(int(y), 3), (int(y), gt.shape[1] - 4)], label=BG, size=5)


@pytest.fixture
def live_setup(make_napari_viewer):
    img, gt = rod_colony(shape=(128, 160), n_cells=10, seed=3, contact=0.05)
    viewer = make_napari_viewer(show=True)  # shown: the canvas draws, follows the camera, is painted on
    viewer.add_image(img, name="rods")
    _d, seg = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    _d, ft = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    ft.image.value = "rods"
    ft.settings.base_model.value = "nuclei"
    ft.settings.device.value = "cpu"
    ft.settings.background_label.value = BG
    viewer.reset_view()
    settle()
    return viewer, seg, ft, img, gt.astype(np.int32)


def _in_sync(session, layer) -> bool:
    settle()
    return np.array_equal(session.inbox.snapshot()[0][0], layer.data)


def test_live_learns_from_real_strokes_and_stop_keeps_a_model(live_setup, qtbot):
    viewer, seg, ft, img, gt = live_setup
    image_before = img.copy()
    qtbot.mouseClick(ft.live.new_labels.native, Qt.MouseButton.LeftButton)
    layer = viewer.layers["rods painting"]
    assert layer.data.shape == gt.shape and not layer.data.any()
    assert ft.labels.value == "rods painting" and layer.selected_label == BG + 1
    ids = [int(i) for i in np.unique(gt)[1:]]
    paint_background(viewer, layer, gt)
    for k, obj in enumerate(ids[:3]):
        paint_object(viewer, layer, gt, obj, BG + 1 + k)
    painted = np.asarray(layer.data)
    assert (painted == BG).sum() > 500 and all((painted == BG + 1 + k).sum() > 50 for k in range(3))
    strayed = (painted > BG) & (gt == 0)
    assert strayed.sum() < 0.02 * (painted > BG).sum(), "object strokes stayed in their objects"

    ft.live.live.value = True  # the switch
    live = ft.live
    session = live.session
    assert session is not None and not ft.train_button.enabled
    assert ft.settings.scribbles.value  # while Live runs unpainted is unknown
    # the preview layer is there at once (empty), above the painting, drawn as outlines of one
    # colour, and the brush stays on the painting
    preview = viewer.layers["rods live"]
    assert not preview.data.any() and viewer.layers.index(preview) > viewer.layers.index(layer)
    assert preview.contour > 0
    colours = {tuple(np.round(preview.colormap.map(i), 3)) for i in (1, 2, 7, 1000)}
    assert len(colours) == 1, "every object of the preview has the same colour"
    assert viewer.layers.selection.active is layer
    inbox = session.inbox
    qtbot.waitUntil(lambda: live.last_preview is not None and "Live: step" in ft.status.text(),
                    timeout=TIMEOUT)
    assert "painting last changed" in ft.status.text() and "validation" in ft.status.text()
    # the status says whether the preview means something yet: how much of the painting in
    # view (scribbles and three objects) it agrees with
    qtbot.waitUntil(lambda: "Preview:" in ft.status.text(), timeout=TIMEOUT)
    assert "% of your painting in view" in ft.status.text()
    from napari_unet._widgets._live import visible_box

    first_box = live.last_preview.box
    assert first_box == visible_box(layer, gt.shape)  # what the canvas shows of the image

    # paint on while it learns: every stroke reaches the core, with the values painted
    steps_seen = []
    session.worker.yielded.connect(lambda ev: steps_seen.append(getattr(ev, "painting_version", None)))
    for k, obj in enumerate(ids[3:7]):
        v0 = inbox.version
        paint_object(viewer, layer, gt, obj, BG + 10 + k)
        assert inbox.version > v0 and _in_sync(session, layer)
        qtbot.waitUntil(lambda: inbox.version in steps_seen, timeout=TIMEOUT)  # trained on
    # the eraser, the fill bucket, undo and redo reach it too
    y, x = (int(v) for v in np.argwhere(np.asarray(layer.data) == BG + 10)[0])
    stroke(viewer, layer, [(y, x), (y, x + 2)], mode="erase", size=3)
    assert _in_sync(session, layer)
    ys, xs = np.nonzero(np.asarray(layer.data) == BG + 11)
    fill(viewer, layer, int(ys[0]), int(xs[0]), BG + 30)
    qtbot.waitUntil(lambda: _in_sync(session, layer), timeout=5000)
    assert (np.asarray(layer.data) == BG + 30).sum() > 0
    undo(viewer, layer)
    assert not (np.asarray(layer.data) == BG + 30).any()
    qtbot.waitUntil(lambda: _in_sync(session, layer), timeout=5000)
    redo(viewer, layer)
    qtbot.waitUntil(lambda: _in_sync(session, layer), timeout=5000)
    assert (np.asarray(inbox.snapshot()[0][0]) == BG + 30).sum() > 0
    before = preview.data.copy()
    qtbot.waitUntil(lambda: not np.array_equal(preview.data, before), timeout=TIMEOUT)
    assert preview.data.max() > 0, "objects appear in the preview"

    # pan and zoom: the new view is predicted
    viewer.camera.zoom = viewer.camera.zoom * 6
    viewer.camera.center = (20, 30)
    qtbot.wait(200)  # the canvas redraws: napari updates the layer's corner pixels
    want = visible_box(layer, gt.shape)
    assert want != first_box and want[0] == 0 and want[1] < first_box[1]
    qtbot.waitUntil(lambda: live.last_preview is not None and live.last_preview.box == want, timeout=TIMEOUT)

    # Stop keeps a model that Segment uses and that finds objects
    ft.live.live.value = False
    qtbot.waitUntil(lambda: live.session is None, timeout=TIMEOUT)
    assert ft.model is not None and ft.model.provenance["live"]["painting_changes"] >= 4  # each object drawn while it learnt
    assert ft.save_button.enabled and ft.train_button.enabled
    assert ft.export_control.button.enabled, "Export… after Live"
    assert ft.settings.scribbles.value  # the painting is scribbles: a Train on it keeps them unknown
    assert seg.model.value == ft.model_name
    seg.images.value = ["rods"]
    seg.run()
    qtbot.waitUntil(lambda: not seg.running, timeout=TIMEOUT)
    out = viewer.layers["rods instances"]
    assert out.data.shape == gt.shape and out.data.max() > 0, "the kept model finds objects"
    np.testing.assert_array_equal(img, image_before)  # the image layer's data is untouched


def test_a_programs_edit_reaches_live_with_its_values(live_setup, qtbot):
    """A plugin or script editing the painting (``data_setitem`` without ``block_history``: napari
    reports it before writing it) sends the new labels, not the old ones."""
    viewer, _seg, ft, _img, gt = live_setup
    layer = ft.live.add_labels_layer()
    ft.live.live.value = True
    session = ft.live.session
    idx = np.nonzero(gt == 1)
    layer.data_setitem(idx, 5)
    qtbot.waitUntil(lambda: _in_sync(session, layer), timeout=5000)
    assert (session.inbox.snapshot()[0][0][idx] == 5).all()
    ft.live.live.value = False
    qtbot.waitUntil(lambda: ft.live.session is None, timeout=TIMEOUT)


def test_removing_the_painting_stops_live_and_says_so(live_setup, qtbot):
    viewer, _seg, ft, _img, gt = live_setup
    layer = ft.live.add_labels_layer()
    paint_background(viewer, layer, gt)
    ft.live.live.value = True
    assert ft.live.session is not None
    layer.name = "my scribbles"  # renaming is followed and said
    assert "my scribbles" in ft.status.text()
    viewer.layers.remove(layer)
    qtbot.waitUntil(lambda: ft.live.session is None, timeout=TIMEOUT)
    assert "'my scribbles' was removed" in ft.status.text() and "Live stopped" in ft.status.text()
    assert not ft.live.live.value and ft.train_button.enabled


def test_live_needs_a_labels_layer_and_a_failed_start_changes_nothing(live_setup, qtbot,
                                                                      notifications):
    viewer, _seg, ft, _img, _gt = live_setup
    ft.settings.scribbles.value = False
    ft.live.live.value = True
    assert ft.live.session is None and not ft.live.live.value
    assert "Labels layer" in ft.status.text()  # the error stays in the status
    assert any("Labels layer" in str(n.message) for n in notifications)
    # a painting of another shape: refused by the session, with nothing of the widget changed
    viewer.add_labels(np.zeros((10, 10), np.uint32), name="small")
    ft.labels.reset_choices()
    ft.labels.value = "small"
    ft.live.live.value = True
    assert ft.live.session is None and not ft.live.live.value
    text = ft.status.text()
    assert "Cannot go live" in text and "differ in shape" in text and "'small'" in text
    assert not ft.settings.scribbles.value, "a failed start ticks nothing"
    assert ft.train_button.enabled and ft.live.new_labels.enabled


def test_corrections_painted_with_the_real_tools_are_known_and_learnt(live_setup, qtbot):
    viewer, seg, ft, img, gt = live_setup
    seg.images.value = ["rods"]
    seg.run()
    qtbot.waitUntil(lambda: not seg.running, timeout=TIMEOUT)
    result = viewer.layers["rods instances"]
    predicted = np.array(result.data)
    ids = [int(i) for i in np.unique(predicted) if i]
    assert len(ids) >= 4
    # the user fixes the result: erases one object with the fill bucket (label 0), paints a
    # reference object with the brush as id 77, then undoes and redoes that stroke
    wrong = ids[0]
    ys, xs = np.nonzero(predicted == wrong)
    fill(viewer, result, int(ys[0]), int(xs[0]), 0)
    assert not (np.asarray(result.data) == wrong).any()
    obj = int(gt[np.nonzero(predicted == ids[1])][0]) or int(np.unique(gt)[1])
    paint_object(viewer, result, gt, obj, 77)
    assert (np.asarray(result.data) == 77).sum() > 30
    undo(viewer, result)  # the last stroke of the object
    redo(viewer, result)
    ft.labels.value = "rods instances"
    from napari_unet._widgets._corrections import CORRECTED

    ft.region.value = CORRECTED
    (pair,) = ft.collect_pairs()
    known = pair.mask
    now = np.asarray(result.data)
    assert known[predicted == wrong].all() and known[now == 77].all()
    untouched = [i for i in ids[2:] if not (known & (predicted == i)).any()]
    assert untouched, "some predictions were not edited and are not known"
    assert not pair.labels[~known].any()  # untouched predictions are not taken as truth
    np.testing.assert_array_equal(pair.labels[known], now[known])

    # Live on the corrections: each correction, made with the eraser, enlarges what is known
    ft.live.live.value = True
    session = ft.live.session
    assert session is not None
    before = int(session.inbox.snapshot()[1][0].sum())
    third = untouched[0]
    ys, xs = np.nonzero(now == third)
    stroke(viewer, result, [(int(ys.mean()), int(xs.min())), (int(ys.mean()), int(xs.max()))],
           mode="erase", size=3)
    assert int(session.inbox.snapshot()[1][0].sum()) > before
    ft.live.live.value = False
    qtbot.waitUntil(lambda: ft.live.session is None, timeout=TIMEOUT)
    assert ft.model is not None

    # fine-tuning on the corrections (Train) trains on them and gives a model of its own, which
    # Segment uses and whose result it counts (10 steps on two corrected rods teach a nuclei
    # model little: what is tested here is the path, the quality is benchmarks' business)
    live_model = ft.model_name
    ft.settings.steps.value = 10
    ft.train_button.native.click()
    qtbot.waitUntil(lambda: ft.worker is None and not ft.running, timeout=TIMEOUT)
    assert ft.model.provenance["steps"] == 10 and ft.model_name != live_model
    assert "corrected" in ft.model_name and seg.model.value == ft.model_name
    seg.run()
    qtbot.waitUntil(lambda: not seg.running, timeout=TIMEOUT)
    found = len(np.unique(viewer.layers["rods instances"].data)) - 1
    said = seg.status.text()  # "1 object", "5 objects", or none found
    assert re.search(rf"\b{found} objects?\b", said) or (found == 0 and "no objects" in said)

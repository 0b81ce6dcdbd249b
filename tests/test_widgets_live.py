"""Live mode of the Fine-tune widget in a real napari viewer (run with xvfb-run): paint through the
Labels layer's own paint API, the preview appears and follows the painting and the view, Stop keeps
a model that Segment uses."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_unet._synthetic import rod_colony

PLUGIN = "napari-unet"
TIMEOUT = 240_000  # ms
BG = 1


def paint_object(layer, gt: np.ndarray, obj: int, new_id: int) -> None:
    """Fill one object of the reference with ``new_id`` through the layer's edit API (one
    undoable step, one paint event), as napari's fill and brush do."""
    with layer.block_history():
        layer.data_setitem(np.nonzero(gt == obj), new_id)


def paint_background(layer, gt: np.ndarray, rows: slice) -> None:
    sub = np.zeros_like(gt, bool)
    sub[rows] = gt[rows] == 0
    with layer.block_history():
        layer.data_setitem(np.nonzero(sub & (layer.data == 0)), BG)


@pytest.fixture
def live_setup(make_napari_viewer):
    img, gt = rod_colony(shape=(128, 160), n_cells=10, seed=3, contact=0.05)
    viewer = make_napari_viewer(show=True)  # shown: the canvas draws and follows the camera
    viewer.add_image(img, name="rods")
    _d, seg = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    _d, ft = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    ft.image.value = "rods"
    ft.base_model.value = "nuclei"
    ft.device.value = "cpu"
    ft.background_label.value = BG
    return viewer, seg, ft, img, gt.astype(np.int32)


def test_live_mode_learns_while_painting(live_setup, qtbot):
    viewer, seg, ft, img, gt = live_setup
    image_before = img.copy()
    qtbot.mouseClick(ft.live.new_labels.native, Qt.MouseButton.LeftButton)
    layer = viewer.layers["rods painting"]
    assert layer.data.shape == gt.shape and not layer.data.any()
    assert ft.labels.value == "rods painting" and layer.selected_label == BG + 1
    ids = np.unique(gt)[1:]
    paint_background(layer, gt, slice(0, 30))
    for k, obj in enumerate(ids[:3]):
        paint_object(layer, gt, obj, BG + 1 + k)
    ft.live.live.value = True  # the switch
    live = ft.live
    assert live.session is not None and not ft.train_button.enabled
    # the preview layer is there at once (empty), and the brush stays on the painting
    assert "rods live" in viewer.layers and not viewer.layers["rods live"].data.any()
    assert viewer.layers.selection.active is layer
    inbox = live.session.inbox
    # the status line follows the first step's event, which may come just after the first preview
    qtbot.waitUntil(lambda: "rods live" in viewer.layers and live._last is not None
                    and "Live: step" in ft.status.text(), timeout=TIMEOUT)
    preview = viewer.layers["rods live"]
    assert preview.data.shape == gt.shape
    assert "painting last changed" in ft.status.text() and "validation" in ft.status.text()
    from napari_unet._widgets._live import visible_box

    first_box = live._last.box
    assert first_box == visible_box(layer, gt.shape)  # what the canvas shows of the image

    # paint more: the painting reaches the core through the paint events, and is trained on
    v0 = inbox.version
    for k, obj in enumerate(ids[3:6]):
        paint_object(layer, gt, obj, BG + 10 + k)
    assert inbox.version == v0 + 3
    snap = inbox.snapshot()[0][0]
    np.testing.assert_array_equal(snap, layer.data)  # the core's copy equals the layer
    steps_seen = []
    ft.live.session.worker.yielded.connect(
        lambda ev: steps_seen.append(getattr(ev, "painting_version", None)))
    qtbot.waitUntil(lambda: inbox.version in steps_seen, timeout=TIMEOUT)
    before = preview.data.copy()
    qtbot.waitUntil(lambda: not np.array_equal(preview.data, before), timeout=TIMEOUT)

    # pan and zoom: the new view is predicted
    viewer.camera.zoom = viewer.camera.zoom * 6
    viewer.camera.center = (20, 30)
    qtbot.wait(200)  # the canvas redraws: napari updates the layer's corner pixels
    want = visible_box(layer, gt.shape)
    assert want != first_box and want[0] == 0 and want[1] < first_box[1]
    qtbot.waitUntil(lambda: live._last is not None and live._last.box == want, timeout=TIMEOUT)

    # Stop keeps a model that Segment uses
    ft.live.live.value = False
    qtbot.waitUntil(lambda: live.session is None, timeout=TIMEOUT)
    assert ft.model is not None and ft.model.provenance["live"]["painting_changes"] >= 1
    assert ft.save_button.enabled and ft.train_button.enabled
    assert seg.model.value == ft.model_name
    seg.images.value = ["rods"]
    seg.run()
    qtbot.waitUntil(lambda: not seg.running, timeout=TIMEOUT)
    out = viewer.layers["rods instances"]
    assert out.data.shape == gt.shape and out.data.max() > 0
    np.testing.assert_array_equal(img, image_before)  # the image layer's data is untouched


def test_live_needs_a_labels_layer_and_says_so(live_setup, qtbot, monkeypatch):
    viewer, _seg, ft, _img, _gt = live_setup
    errors = []
    import napari.utils.notifications as notes

    monkeypatch.setattr(notes, "show_error", errors.append)  # imported where it is used
    ft.live.live.value = True
    assert ft.live.session is None and not ft.live.live.value
    assert errors and "Labels layer" in errors[-1]


def test_corrections_of_a_segmented_layer_are_tracked_as_known(live_setup, qtbot):
    viewer, seg, ft, img, gt = live_setup
    seg.images.value = ["rods"]
    seg.run()
    qtbot.waitUntil(lambda: not seg.running, timeout=TIMEOUT)
    result = viewer.layers["rods instances"]
    predicted = np.array(result.data)
    # the user fixes two objects of the result: erases one, repaints another as the reference
    ids = [i for i in np.unique(predicted) if i]
    assert len(ids) >= 2
    wrong = ids[0]
    with result.block_history():
        result.data_setitem(np.nonzero(predicted == wrong), 0)
    obj = gt[np.nonzero(predicted == ids[1])][0] or np.unique(gt)[1]
    with result.block_history():
        result.data_setitem(np.nonzero(gt == obj), 77)
    ft.labels.value = "rods instances"
    from napari_unet._widgets._corrections import CORRECTED

    ft.region.value = CORRECTED
    (pair,) = ft.collect_pairs()
    known = pair.mask
    assert known[predicted == wrong].all() and known[gt == obj].all()
    untouched = [i for i in ids[2:] if not (known & (predicted == i)).any()]
    assert untouched, "some predictions were not edited and are not known"
    assert not pair.labels[~known].any()  # untouched predictions are not taken as truth
    np.testing.assert_array_equal(pair.labels[known], np.asarray(result.data)[known])
    # Live on the corrections: each correction enlarges what the core knows
    ft.live.live.value = True
    session = ft.live.session
    assert session is not None
    _labels0, masks0, _v = session.inbox.snapshot()
    before = int(masks0[0].sum())
    third = ids[2] if len(ids) > 2 else ids[1]
    with result.block_history():
        result.data_setitem(np.nonzero(np.asarray(result.data) == third), 0)
    _labels1, masks1, _v = session.inbox.snapshot()
    assert int(masks1[0].sum()) > before
    ft.live.live.value = False
    qtbot.waitUntil(lambda: ft.live.session is None, timeout=TIMEOUT)

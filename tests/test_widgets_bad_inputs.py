"""The bad-input matrix in a real viewer (issue 14): each case a clear notification, nothing lost,
no traceback dialog. (RGB image with a grey model and an unreadable model file: tests/test_widgets.py;
labels of another shape: tests/test_widgets_finetune.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

PLUGIN = "napari-unet"
TIMEOUT = 120_000  # ms


def errors(notes) -> list[str]:
    return [str(n.message) for n in notes if str(getattr(n, "severity", "")).lower() == "error"]


def _segment(viewer, model_path):
    _d, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    assert w.load_model_file(str(model_path)) is not None
    return w


def test_a_layer_deleted_while_its_job_runs(make_napari_viewer, qtbot, tiny_model_path, nuclei_image,
                                            notifications):
    """The job holds the layer's data, not the layer: it finishes quietly, and the result of an
    image the user deleted is not added (issue 29): a warning says so, and the status keeps it."""
    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image[:256], name="nuclei")
    keep = viewer.add_image(nuclei_image[:64, :64], name="other")
    w = _segment(viewer, tiny_model_path)
    w.images.value = ["nuclei"]
    w.tile_size.value = 48
    w.run()
    qtbot.waitUntil(lambda: w.progress_bar.value() > 0, timeout=TIMEOUT)
    viewer.layers.remove("nuclei")
    qtbot.waitUntil(lambda: not w.running, timeout=TIMEOUT)
    assert errors(notifications) == []
    assert [layer.name for layer in viewer.layers] == ["other"] and viewer.layers["other"] is keep
    said = [str(n.message) for n in notifications if "'nuclei'" in str(n.message)]
    assert len(said) == 1 and "no result added" in said[0], said
    assert w.run_button.enabled and said[0] in w.status.text()


@pytest.mark.parametrize("damage, words", [
    (b"", "not a readable model file"),
    (None, "NaN or infinite"),
], ids=["emptied", "nan weights"])
def test_a_model_file_that_fails_to_load_when_the_job_starts(make_napari_viewer, qtbot, tmp_path,
                                                            tiny_model_path, nuclei_image, notifications,
                                                            damage, words):
    """Files in the model list are loaded in the worker: one that changed on disk since it was
    opened fails there, with a notification; the buttons come back and nothing is added."""
    from napari_unet.core.exchange.opening import load_model
    from napari_unet.core.modelfile.files import save_model

    path = tmp_path / "model.safetensors"
    path.write_bytes(tiny_model_path.read_bytes())
    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image[:64, :64], name="crop")
    w = _segment(viewer, path)
    if damage is None:
        m = load_model(path)
        with torch.no_grad():
            m.net.head.weight.fill_(float("nan"))
        save_model(m, path)
    else:
        path.write_bytes(damage)
    w.run()
    qtbot.waitUntil(lambda: not w.running, timeout=TIMEOUT)
    msgs = errors(notifications)
    assert any(words in m for m in msgs), msgs
    assert not any("Traceback" in m for m in msgs)
    assert [layer.name for layer in viewer.layers] == ["crop"]
    assert w.run_button.enabled and not w.cancel_button.enabled


def test_closing_the_widget_mid_run_stops_the_job(make_napari_viewer, qtbot, tiny_model_path, nuclei_image,
                                                  notifications):
    viewer = make_napari_viewer()
    viewer.add_image(np.tile(nuclei_image, (2, 1)), name="big")
    w = _segment(viewer, tiny_model_path)
    w.tile_size.value = 48
    worker = w.run()
    qtbot.waitUntil(lambda: w.progress_bar.value() > 0, timeout=TIMEOUT)
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        w.close()
    assert errors(notifications) == []
    assert [layer.name for layer in viewer.layers] == ["big"]


FINETUNE_CASES = [
    # image, labels, words in the notification
    (np.zeros((3, 64, 64), np.uint16), np.zeros((64, 64), np.uint8), "is a stack of 3 planes"),
    (np.zeros((64, 64), np.uint16), np.zeros((3, 64, 64), np.uint8), "choose the image the labels were painted on"),
    (np.zeros((64, 64), np.uint16), np.zeros((60, 64), np.uint8), "differ in shape"),
]


@pytest.mark.parametrize("image, labels, words", FINETUNE_CASES, ids=["3D image, 2D labels",
                                                                    "2D image, 3D labels", "other shape"])
def test_finetune_pairs_that_do_not_fit(make_napari_viewer, tiny_model_path, notifications, image, labels,
                                        words):
    viewer = make_napari_viewer()
    viewer.add_image(image, name="img")
    lab = labels.copy()
    lab[..., 10:20, 10:20] = 1
    viewer.add_labels(lab, name="painted")
    _d, seg = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    _d, ft = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    assert seg.load_model_file(str(tiny_model_path)) == "tiny"
    ft.image.value, ft.labels.value, ft.settings.base_model.value = "img", "painted", "tiny"
    assert ft.train() is None
    msgs = errors(notifications)
    assert any(words in m for m in msgs), msgs
    np.testing.assert_array_equal(viewer.layers["painted"].data, lab)  # nothing lost
    assert ft.train_button.enabled


def test_painting_during_training_is_kept_and_does_not_disturb_it(make_napari_viewer, qtbot,
                                                                   tiny_model_path, nuclei_image,
                                                                   nuclei_mask, notifications):
    """The job trains on a copy of the labels: the user paints on, nothing is lost either way."""
    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image, name="nuclei")
    lab = viewer.add_labels(nuclei_mask.copy(), name="painted")
    _d, seg = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    _d, ft = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    assert seg.load_model_file(str(tiny_model_path)) == "tiny"
    ft.image.value, ft.labels.value, ft.settings.base_model.value = "nuclei", "painted", "tiny"
    ft.settings.steps.value, ft.settings.device.value = 4, "cpu"
    ft.train()
    qtbot.waitUntil(lambda: bool(ft.plot.loss), timeout=TIMEOUT)
    with lab.block_history():
        lab.data_setitem(np.nonzero(np.ones((10, 10), bool)), 999)  # a stroke while it trains
    qtbot.waitUntil(lambda: not ft.running, timeout=TIMEOUT)
    assert errors(notifications) == []
    assert ft.model is not None and len(ft.plot.loss) == 4
    assert (np.asarray(lab.data)[:10, :10] == 999).all()  # the stroke is kept in the layer
    np.testing.assert_array_equal(np.asarray(lab.data)[10:], nuclei_mask[10:])


def test_closing_the_viewer_mid_run_ends_the_jobs_quietly(make_napari_viewer, qtbot, tiny_model_path,
                                                         nuclei_image, nuclei_mask, notifications):
    viewer = make_napari_viewer()
    viewer.add_image(np.tile(nuclei_image, (2, 1)), name="big")
    viewer.add_labels(np.tile(nuclei_mask, (2, 1)), name="painted")
    w = _segment(viewer, tiny_model_path)
    _d, ft = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    w.tile_size.value = 48
    seg_worker = w.run()
    ft.image.value, ft.labels.value, ft.settings.base_model.value = "big", "painted", "tiny"
    ft.settings.steps.value, ft.settings.device.value = 1000, "cpu"
    ft_worker = ft.train()
    qtbot.waitUntil(lambda: w.progress_bar.value() > 0 and bool(ft.plot.loss), timeout=TIMEOUT)
    done = []
    seg_worker.finished.connect(lambda: done.append("segment"))
    ft_worker.finished.connect(lambda: done.append("fine-tune"))
    viewer.close()
    qtbot.waitUntil(lambda: len(done) == 2, timeout=TIMEOUT)
    assert errors(notifications) == []

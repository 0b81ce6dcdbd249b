"""Segment widget, manifest and sample data under a real napari viewer (run with xvfb-run)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from napari.layers import Image, Labels
from qtpy.QtCore import QPoint, Qt

PLUGIN = "napari-unet"
TIMEOUT = 120_000  # ms


# ---------------------------------------------------------------------------- helpers
def segment_widget(viewer):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    return widget


def click(qtbot, button) -> None:
    qtbot.mouseClick(button.native, Qt.MouseButton.LeftButton)


def wait_done(qtbot, widget, timeout: int = TIMEOUT) -> None:
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def errors(notes) -> list[str]:
    return [str(n.message) for n in notes if str(getattr(n, "severity", "")).lower() == "error"]


def warnings(notes) -> list[str]:
    return [str(n.message) for n in notes if str(getattr(n, "severity", "")).lower() == "warning"]


def n_objects(labels) -> int:
    ids = np.unique(np.asarray(labels))
    return int(np.count_nonzero(ids))


def objects(n: int) -> str:
    return f"{n} object{'' if n == 1 else 's'}"


def ready(qtbot, viewer, model_path):
    w = segment_widget(viewer)
    assert w.load_model_file(str(model_path)) == "tiny"
    assert w.model.value == "tiny"
    return w


# ---------------------------------------------------------------------------- light imports
def test_plugin_menu_and_samples_do_not_import_torch():
    code = textwrap.dedent("""
        import sys
        import napari_unet
        import napari_unet._widgets._segment, napari_unet._widgets._finetune
        import napari_unet._widgets._state, napari_unet._widgets._segment_jobs, napari_unet._widgets._train_jobs
        import napari_unet._sample_data as s
        import npe2
        pm = npe2.PluginManager.instance()
        pm.discover()
        mf = pm.get_manifest("napari-unet")
        assert [w.display_name for w in mf.contributions.widgets] == ["Segment", "Fine-tune"]
        (data, meta, kind), = s.nuclei()
        assert data.shape == (512, 512) and kind == "image"
        s.em()
        from napari_unet._widgets._state import ModelRegistry
        ModelRegistry()
        assert "torch" not in sys.modules, "torch was imported"
    """)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**__import__("os").environ, "PYTHONPATH": src}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def test_manifest_validates_and_its_commands_import():
    import npe2

    path = Path(__file__).resolve().parents[1] / "src" / "napari_unet" / "napari.yaml"
    mf = npe2.PluginManifest.from_file(path)
    mf.validate_imports()
    assert {s.key for s in mf.contributions.sample_data} == {"nuclei", "em"}


# ---------------------------------------------------------------------------- viewer
def test_sample_data_opens(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "nuclei")
    viewer.open_sample(PLUGIN, "em")
    assert [layer.data.shape for layer in viewer.layers] == [(512, 512), (625, 625)]


def test_widgets_are_added_through_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    _d1, seg = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    _d2, ft = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    assert type(seg).__name__ == "SegmentWidget" and type(ft).__name__ == "FineTuneWidget"
    assert seg.registry is ft.registry  # one shared model list per viewer
    # every control has a tooltip
    for w in (seg, ft):
        for c in w.containers:
            for sub in c:
                assert sub.tooltip, f"{type(w).__name__}.{sub.label} has no tooltip"


def test_segment_real_image_end_to_end(make_napari_viewer, qtbot, tiny_model_path, nuclei_image):
    viewer = make_napari_viewer()
    src = viewer.add_image(nuclei_image, name="nuclei", scale=(0.5, 0.25), translate=(10, 20))
    before = nuclei_image.copy()
    w = ready(qtbot, viewer, tiny_model_path)
    assert w.images.value == ["nuclei"]
    w.output.value = "instances"
    click(qtbot, w.run_button)
    assert w.running and not w.run_button.enabled and w.cancel_button.enabled
    wait_done(qtbot, w)
    out = viewer.layers["nuclei instances"]
    assert isinstance(out, Labels)
    assert out.data.shape == (512, 512) and out.data.dtype.kind == "u"
    assert tuple(out.scale) == (0.5, 0.25) and tuple(out.translate) == (10, 20)
    assert w.run_button.enabled and not w.cancel_button.enabled
    said = f"added 'nuclei instances': {objects(n_objects(out.data))}"
    assert n_objects(out.data) > 0 and w.status.text() == said
    assert w.progress_bar.value() == w.progress_bar.maximum() > 0  # a finished job shows a full bar
    # napari's progress bar processes events re-entrantly, so a progress event can be handled after
    # the job's `finished`: it must not overwrite the final status
    from napari_unet._widgets._segment_jobs import JobProgress

    w.on_event(JobProgress(0, 1, "nuclei", 1, 1, 0, 1, "cpu"))
    assert w.status.text() == said
    np.testing.assert_array_equal(src.data, before)

    # re-running replaces the layer's data instead of adding a copy
    first = out.data.copy()
    n_layers = len(viewer.layers)
    click(qtbot, w.run_button)
    wait_done(qtbot, w)
    assert len(viewer.layers) == n_layers and viewer.layers["nuclei instances"] is out
    np.testing.assert_array_equal(out.data, first)  # deterministic
    np.testing.assert_array_equal(src.data, before)


def test_semantic_and_probability_outputs(make_napari_viewer, qtbot, tiny_model_path, nuclei_image):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image[:200, :300], name="crop", scale=(2.0, 3.0))
    w = ready(qtbot, viewer, tiny_model_path)
    w.output.value = "semantic"
    click(qtbot, w.run_button)
    wait_done(qtbot, w)
    sem = viewer.layers["crop semantic"]
    assert isinstance(sem, Labels) and sem.data.shape == (200, 300) and sem.data.dtype == np.uint8
    w.output.value = "probabilities"
    click(qtbot, w.run_button)
    wait_done(qtbot, w)
    prob = viewer.layers["crop probabilities"]
    assert isinstance(prob, Image) and prob.data.shape == (2, 200, 300)
    assert prob.data.dtype == np.float32 and tuple(prob.scale) == (1.0, 2.0, 3.0)
    np.testing.assert_allclose(prob.data.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(prob.data.argmax(0), sem.data)

    # the Advanced box's test-time augmentation check box: the 8-orientation average
    from napari_unet.core.exchange.opening import load_model
    from napari_unet.core.segment import segment_image

    plain = prob.data.copy()
    assert not w.tta.value
    w.advanced.expand(animate=False)  # the check box sits in the collapsed Advanced box
    qtbot.waitUntil(lambda: w.tta.native.isVisibleTo(w) and w.tta.native.width() > 0, timeout=5000)
    box = w.tta.native  # a check box reacts to clicks on its indicator or text, at its left
    qtbot.mouseClick(box, Qt.MouseButton.LeftButton, pos=QPoint(6, box.height() // 2))
    assert w.tta.value
    click(qtbot, w.run_button)
    assert not w.tta.enabled  # locked while running
    wait_done(qtbot, w)
    expected = segment_image(nuclei_image[:200, :300], load_model(tiny_model_path),
                             output="probabilities", device="cpu", tta=True)
    np.testing.assert_allclose(viewer.layers["crop probabilities"].data, expected, atol=1e-6)
    assert np.abs(expected - plain).max() > 1e-3


def test_cancel_mid_run_adds_nothing(make_napari_viewer, qtbot, tiny_model_path, nuclei_image):
    viewer = make_napari_viewer()
    big = np.tile(nuclei_image, (2, 2))  # 1024 x 1024, with small tiles: hundreds of tiles
    viewer.add_image(big, name="big")
    w = ready(qtbot, viewer, tiny_model_path)
    w.tile_size.value = 48
    click(qtbot, w.run_button)
    qtbot.waitUntil(lambda: w.progress_bar.value() > 0, timeout=TIMEOUT)
    assert w.progress_bar.value() < w.progress_bar.maximum()
    click(qtbot, w.cancel_button)
    wait_done(qtbot, w)
    assert "big instances" not in viewer.layers
    assert [layer.name for layer in viewer.layers] == ["big"]
    assert w.run_button.enabled and not w.cancel_button.enabled
    assert w.images.enabled and w.model.enabled


def test_batch_over_two_layers_and_a_stack(make_napari_viewer, qtbot, tiny_model_path, nuclei_image):
    import dask.array as da

    viewer = make_napari_viewer()
    a = viewer.add_image(nuclei_image[:256, :256], name="a", scale=(0.5, 0.5))
    b = viewer.add_image(nuclei_image[256:, 128:], name="b", translate=(5, 7))
    planes = np.stack([nuclei_image[:128, :160], nuclei_image[128:256, :160],
                       nuclei_image[256:384, :160]])
    stack = viewer.add_image(da.from_array(planes, chunks=(1, 128, 160)), name="stack",
                             scale=(2.0, 0.5, 0.5), translate=(1, 2, 3))
    copies = [a.data.copy(), b.data.copy(), planes.copy()]
    w = ready(qtbot, viewer, tiny_model_path)
    w.images.value = ["a", "b", "stack"]
    worker = w.run()
    assert worker is not None
    wait_done(qtbot, w)
    ra, rb, rs = (viewer.layers[f"{n} instances"] for n in ("a", "b", "stack"))
    assert ra.data.shape == (256, 256) and tuple(ra.scale) == (0.5, 0.5)
    assert rb.data.shape == (256, 384) and tuple(rb.translate) == (5, 7)
    assert isinstance(rs, Labels) and rs.data.shape == (3, 128, 160)
    assert tuple(rs.scale) == (2.0, 0.5, 0.5) and tuple(rs.translate) == (1, 2, 3)
    # each plane of the stack equals that plane segmented on its own
    from napari_unet.core.exchange.opening import load_model
    from napari_unet.core.segment import segment_image

    model = load_model(tiny_model_path)
    for z in range(3):
        np.testing.assert_array_equal(rs.data[z], segment_image(planes[z], model, device="cpu"))
    for got, want in zip((a.data, b.data, np.asarray(stack.data)), copies, strict=True):
        np.testing.assert_array_equal(got, want)


class _Recorder:
    """An array-like that remembers the largest block ever read from it."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.largest = 0

    def __getitem__(self, key):
        out = self.data[key]
        self.largest = max(self.largest, int(np.size(out)))
        return out


def test_dask_stack_is_read_plane_by_plane(make_napari_viewer, qtbot, tiny_model_path, nuclei_image):
    import dask.array as da

    planes = np.stack([nuclei_image[:200, :200]] * 4)
    rec = _Recorder(planes)
    lazy = da.from_array(rec, chunks=(1, 200, 200), asarray=False)
    viewer = make_napari_viewer()
    viewer.add_image(lazy, name="lazy")
    w = ready(qtbot, viewer, tiny_model_path)
    rec.largest = 0
    w.run()
    wait_done(qtbot, w)
    assert viewer.layers["lazy instances"].data.shape == (4, 200, 200)
    assert 0 < rec.largest <= 200 * 200  # never more than one plane at a time


def test_rgb_image_with_a_grey_model_shows_an_error(make_napari_viewer, qtbot, tiny_model_path,
                                                     nuclei_image, notifications):
    viewer = make_napari_viewer()
    rgb = np.stack([nuclei_image.astype(np.uint8)] * 3, axis=-1)
    layer = viewer.add_image(rgb, name="colour", rgb=True)
    before = rgb.copy()
    w = ready(qtbot, viewer, tiny_model_path)
    click(qtbot, w.run_button)
    wait_done(qtbot, w)
    msgs = errors(notifications)
    assert any("colour" in m and "RGB" in m for m in msgs), msgs
    assert "colour instances" not in viewer.layers
    assert w.run_button.enabled
    np.testing.assert_array_equal(layer.data, before)


def test_bad_model_file_and_no_selection_show_errors(make_napari_viewer, qtbot, tmp_path,
                                                      tiny_model_path, notifications):
    viewer = make_napari_viewer()
    w = segment_widget(viewer)
    bad = tmp_path / "not_a_model.safetensors"
    bad.write_bytes(b"nonsense")
    assert w.load_model_file(str(bad)) is None
    assert w.load_model_file(str(tiny_model_path)) == "tiny"
    assert w.run() is None  # no image layer
    msgs = errors(notifications)
    assert any("not_a_model" in m for m in msgs), msgs
    assert any("image layer" in m for m in msgs), msgs


# ---------------------------------------------------------------------------- what the status says
def _blind_model(path: Path) -> Path:
    """A tiny model whose output bias always wins for the background: it finds nothing."""
    import torch

    from napari_unet.core.modelfile.files import UNetModel, save_model
    from napari_unet.core.network.unet import UNet, UNetConfig

    torch.manual_seed(0)
    net = UNet(UNetConfig(depth=2, base_channels=4))
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor([50.0, -50.0]))
    return save_model(UNetModel(net, name="blind"), path)


def test_a_result_without_objects_is_a_warning_and_every_result_is_counted(
        make_napari_viewer, qtbot, tmp_path, tiny_model_path, nuclei_image, notifications):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image[:200, :300], name="frame19")
    w = segment_widget(viewer)
    assert w.load_model_file(str(_blind_model(tmp_path / "blind.safetensors"))) == "blind"
    click(qtbot, w.run_button)
    wait_done(qtbot, w)
    out = viewer.layers["frame19 instances"]
    assert n_objects(out.data) == 0
    said = warnings(notifications)
    assert len(said) == 1 and "'blind' found no objects in 'frame19'" in said[0], said
    assert "fine-tune" in said[0]  # and what to do about it
    assert w.status.text().startswith("added 'frame19 instances': 0 objects\n")
    assert said[0] in w.status.text() and errors(notifications) == []
    # semantic: the share of the pixels of each class, and the same warning when it is 0
    w.output.value = "semantic"
    click(qtbot, w.run_button)
    wait_done(qtbot, w)
    assert w.status.text().startswith("added 'frame19 semantic': foreground: 0% of the pixels\n")
    assert "found no pixel of any class but the background in 'frame19'" in warnings(notifications)[-1]
    # probabilities: nothing to count, nothing to warn about
    n_warnings = len(warnings(notifications))
    w.output.value = "probabilities"
    click(qtbot, w.run_button)
    wait_done(qtbot, w)
    assert w.status.text() == "added 'frame19 probabilities'"
    assert len(warnings(notifications)) == n_warnings

    # a model that finds something: its count, and the foreground share for semantic output
    assert w.load_model_file(str(tiny_model_path)) == "tiny"
    w.output.value = "semantic"
    click(qtbot, w.run_button)
    wait_done(qtbot, w)
    sem = viewer.layers["frame19 semantic"].data
    share = 100 * float((sem == 1).mean())
    assert 0 < share < 100
    assert w.status.text() == f"added 'frame19 semantic': foreground: {share:.1f}% of the pixels"
    assert len(warnings(notifications)) == n_warnings


def test_a_stack_is_counted_per_plane(make_napari_viewer, qtbot, nuclei_image):
    viewer = make_napari_viewer()
    crop = nuclei_image[:128, :128]
    planes = np.stack([crop, np.full_like(crop, crop.min()), crop[::-1]])
    viewer.add_image(planes, name="stack")
    w = segment_widget(viewer)
    w.model.value = "nuclei"  # the shipped model: it finds the nuclei
    click(qtbot, w.run_button)
    wait_done(qtbot, w)
    out = viewer.layers["stack instances"].data
    per_plane = [n_objects(p) for p in out]  # ids restart in each plane
    assert per_plane[0] >= 5 and per_plane[2] >= 5 and per_plane[1] == 0
    assert w.status.text() == (f"added 'stack instances': {objects(sum(per_plane))} in 3 planes "
                               f"(1 of them without any)")


def test_errors_stay_in_the_status_until_the_next_action(make_napari_viewer, qtbot, tmp_path,
                                                          tiny_model_path, nuclei_image, notifications):
    viewer = make_napari_viewer()
    rgb = np.stack([nuclei_image[:64, :64].astype(np.uint8)] * 3, axis=-1)
    viewer.add_image(rgb, name="colour", rgb=True)
    w = ready(qtbot, viewer, tiny_model_path)
    click(qtbot, w.run_button)
    wait_done(qtbot, w)
    said = errors(notifications)
    assert len(said) == 1 and said[0].startswith("Could not segment 'colour': ")
    assert w.status.text() == said[0] == w.last_error
    qtbot.wait(200)  # the status is not a notification: it does not vanish
    assert w.status.text() == said[0]
    # an error before a job starts is said the same way
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"nonsense")
    assert w.load_model_file(str(bad)) is None
    assert w.status.text() == errors(notifications)[-1] and "broken" in w.status.text()
    w.images.value = []
    assert w.run() is None
    assert w.status.text() == errors(notifications)[-1] and "image layer" in w.status.text()
    # the next action replaces it
    viewer.add_image(nuclei_image[:64, :64], name="grey")
    w.images.value = ["grey"]
    click(qtbot, w.run_button)
    assert w.status.text().startswith("Segmenting 1 image(s)") and w.last_error == ""
    wait_done(qtbot, w)
    assert w.status.text().startswith("added 'grey instances': ")


class _Gate:
    """An array whose reads, once armed, wait until the test opens it: the job is certainly still
    running when the test acts (no dependence on the machine's speed)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.armed = False
        self.reading = threading.Event()
        self.opened = threading.Event()

    def __getitem__(self, key):
        if self.armed:
            self.reading.set()
            assert self.opened.wait(60), "the test never opened the gate"
        return self.data[key]


def test_an_image_removed_while_it_is_segmented_gets_no_result(make_napari_viewer, qtbot,
                                                               tiny_model_path, nuclei_image,
                                                               notifications):
    import dask.array as da

    gate = _Gate(nuclei_image[:128, :128].copy())
    viewer = make_napari_viewer()
    viewer.add_image(da.from_array(gate, chunks=(128, 128), asarray=False), name="nuclei")
    keep = viewer.add_image(nuclei_image[:64, :64], name="other")
    w = ready(qtbot, viewer, tiny_model_path)
    w.images.value = ["nuclei", "other"]
    gate.armed = True
    assert w.run() is not None
    qtbot.waitUntil(gate.reading.is_set, timeout=TIMEOUT)  # the job reads 'nuclei' now
    viewer.layers.remove("nuclei")
    # a new layer of the same name is another image: it must not get the old one's result
    newcomer = viewer.add_image(np.zeros((32, 32), np.uint16), name="nuclei")
    gate.opened.set()
    wait_done(qtbot, w)
    assert "nuclei instances" not in viewer.layers
    np.testing.assert_array_equal(newcomer.data, 0)
    sentence = "'nuclei' was removed while it was segmented: no result added."
    assert sentence in warnings(notifications) and sentence in w.status.text()
    assert errors(notifications) == []
    # the rest of the queue goes on: the other image gets its result
    assert viewer.layers["other instances"].data.shape == (64, 64)
    assert viewer.layers["other"] is keep and "added 'other instances'" in w.status.text()
    assert w.run_button.enabled and not w.cancel_button.enabled


def test_a_renamed_image_gets_its_result_under_its_new_name(make_napari_viewer, qtbot,
                                                            tiny_model_path, nuclei_image):
    import dask.array as da

    gate = _Gate(nuclei_image[:96, :96].copy())
    viewer = make_napari_viewer()
    layer = viewer.add_image(da.from_array(gate, chunks=(96, 96), asarray=False), name="before")
    w = ready(qtbot, viewer, tiny_model_path)
    gate.armed = True
    assert w.run() is not None
    qtbot.waitUntil(gate.reading.is_set, timeout=TIMEOUT)
    layer.name = "after"
    gate.opened.set()
    wait_done(qtbot, w)
    assert "after instances" in viewer.layers and "before instances" not in viewer.layers
    assert w.status.text().startswith("added 'after instances': ")


# ---------------------------------------------------------------------------- messages name layers
def test_finetune_messages_name_the_layers_and_no_region_on_the_whole_frame(
        make_napari_viewer, tiny_model_path, nuclei_image, notifications):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image[:64, :64], name="frame19")
    viewer.add_labels(np.zeros((64, 64), np.uint8), name="my painting")
    viewer.add_labels(np.zeros((64, 64), np.uint8), name="done here")
    _d, seg = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    _d, ft = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    assert seg.load_model_file(str(tiny_model_path)) == "tiny"
    ft.image.value, ft.labels.value, ft.settings.base_model.value = "frame19", "my painting", "tiny"
    assert ft.region.value == "(whole frame)"
    assert ft.train() is None
    msg = errors(notifications)[-1]
    assert "'my painting'" in msg and "'frame19'" in msg, msg
    for word in ("region", "mask", "image 0"):
        assert word not in msg, msg
    ft.region.value = "done here"  # an empty Labels region, nothing painted
    assert ft.train() is None
    msg = errors(notifications)[-1]
    assert "the region 'done here' covers none of 'frame19'" in msg and "'my painting'" in msg, msg
    assert ft.train_button.enabled and not ft.running


def test_core_errors_about_the_painting_can_name_the_layers():
    from napari_unet._widgets._pairs import pair_names
    from napari_unet._widgets._runner import explain
    from napari_unet.core.train.annotations import AnnotationError

    exc = AnnotationError("the image has 3 channel(s) but the model reads 1", pair=1, pairs=2)
    assert explain(exc) == "image 2 of 2: the image has 3 channel(s) but the model reads 1"
    names = pair_names([("nuclei", "painted", "(whole frame)"), ("colour", "colour labels", "r")])
    assert explain(exc, names) == ("'colour labels' on 'colour': the image has 3 channel(s) "
                                        "but the model reads 1")
    assert explain(ValueError("plain"), names) == "plain"


def test_a_training_error_from_the_core_names_the_layers(make_napari_viewer, qtbot, tiny_model_path,
                                                         nuclei_image, notifications):
    """An error the core finds during Train (here: a colour image for a grey model) names the
    layers, not 'image 0' (the Fine-tune widget passes _pairs.pair_names to the message)."""
    viewer = make_napari_viewer()
    rgb = np.repeat((nuclei_image[:96, :96] // 2).astype(np.uint8)[..., None], 3, axis=-1)
    viewer.add_image(rgb, name="colour", rgb=True)
    lab = np.zeros((96, 96), np.uint8)
    lab[10:30, 10:30] = 1
    viewer.add_labels(lab, name="cells")
    _d, seg = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    _d, ft = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    assert seg.load_model_file(str(tiny_model_path)) == "tiny"
    ft.image.value, ft.labels.value, ft.settings.base_model.value = "colour", "cells", "tiny"
    ft.settings.steps.value, ft.settings.device.value = 1, "cpu"
    click(qtbot, ft.train_button)
    qtbot.waitUntil(lambda: not ft.running, timeout=TIMEOUT)
    msg = errors(notifications)[-1]
    assert "'cells' on 'colour': the image has 3 channel(s) but the model reads 1" in msg, msg
    assert "image 0" not in msg and "image 1" not in msg


def test_the_job_runner_carries_runtime_errors_and_runs_plain_functions():
    """napari's generator worker takes a RuntimeError for a deleted worker (neither errored nor
    finished): the runner's jobs raise them as JobError, said by their cause; a plain function
    runs as a job that yields nothing and returns its result."""
    from napari_unet._widgets._runner import JobError, carried, explain

    def broken():
        yield 1
        raise RuntimeError("CUDA out of memory")

    gen = carried(broken)()
    assert next(gen) == 1
    with pytest.raises(JobError) as err:
        next(gen)
    assert explain(err.value) == "RuntimeError: CUDA out of memory"
    with pytest.raises(StopIteration) as done:
        next(carried(lambda x: x + 1)(2))
    assert done.value.value == 3


def test_the_training_settings_build_the_train_config_and_are_enabled_as_one(qtbot):
    """The Fine-tune widget's settings container builds its TrainConfig through the core's
    TrainConfig.from_choices (the CLI's too): Steps 0 = the Minutes budget, the 3D defaults with
    '3D U-Net'; it disables itself while a run lasts and comes back as its choices allow."""
    from napari_unet._widgets._train_settings import VOLUME_STARTS, TrainingSettings
    from napari_unet.core.train.config import TrainConfig, augmentation_for

    s = TrainingSettings(lambda _w=None: ["nuclei"])
    qtbot.addWidget(s.native)
    c = s.train_config()
    assert (c.minutes, c.steps, c.lr, c.batch_size, c.patch_size, c.members) == \
        (4.0, 10**9, 2e-3, 2, 128, None)
    assert c.freeze_encoder  # the recipe for the steps a CPU gives (docs/benchmarks.md)
    s.steps.value, s.members.value, s.strength.value = 30, 2, 0.5
    c = s.train_config()
    assert (c.steps, c.minutes, c.members) == (30, None, 2)
    assert c.augmentation == augmentation_for(0.5)
    s.volume.value = True
    c = s.train_config()
    assert (c.steps, c.batch_size, c.patch_size, c.lr, c.members) == (30, 2, 96, 2e-3, None)
    assert TrainConfig.from_choices(volume=True) == TrainConfig(steps=200, batch_size=2,
                                                                patch_size=96, lr=1e-3)
    assert s.train_config(live=True).freeze_encoder  # Live's own recipe
    assert s.background is None
    s.scribbles.value = True
    assert s.background == 1 and s.background_label.enabled
    s.volume_start.value = VOLUME_STARTS[1]
    assert s.new3d and not s.base_model.enabled and s.volume_start.enabled
    s.set_running(True)
    assert not any(w.enabled for w in s)
    s.set_running(False)
    assert s.volume_start.enabled and s.background_label.enabled and not s.base_model.enabled
    assert s.steps.enabled and s.volume.enabled

"""A 2D U-Net lifted to 3D, and a 3D U-Net fine-tuned from two painted z-slices of a real volume."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unet.core.events import StepDone
from napari_unet.core.exchange.opening import load_model
from napari_unet.core.metrics import match_instances
from napari_unet.core.modelfile.files import lift_model, save_model
from napari_unet.core.modelfile.normalization import Normalization
from napari_unet.core.network.lift import lift_network, lifted_config
from napari_unet.core.network.unet import UNet, UNetConfig
from napari_unet.core.predict.predict2d import predict_image
from napari_unet.core.predict.predict3d import predict_volume_image
from napari_unet.core.segment import segment_image
from napari_unet.core.train import TrainConfig
from napari_unet.core.train.annotations import AnnotationError
from napari_unet.core.train.loop3d import fine_tune_volume, painted_slices

DATA = Path(__file__).parent / "data" / "nuclei3d-cho"


def _spy_spacing(monkeypatch) -> list:
    """The ``spacing`` every call of core.segment.segment gets (widgets and batch import it when
    they run): the voxel size must reach the segmentation, whatever the model's post-processing."""
    import napari_unet.core.segment as core_segment

    seen, real = [], core_segment.segment

    def spy(*args, **kwargs):
        seen.append(kwargs.get("spacing"))
        return real(*args, **kwargs)

    monkeypatch.setattr(core_segment, "segment", spy)
    return seen


def _cho_crop(side: int):
    """A side x side crop of the CHO volume centred on slice 1's nuclei, and its silver labels
    painted on slices 1 and 3 (what the user paints): (image, silver, painted)."""
    img, silver = _cho()
    ys, xs = np.nonzero(silver[1])
    y0 = int(np.clip(ys.mean() - side // 2, 0, img.shape[1] - side))
    x0 = int(np.clip(xs.mean() - side // 2, 0, img.shape[2] - side))
    img, silver = img[:, y0:y0 + side, x0:x0 + side], silver[:, y0:y0 + side, x0:x0 + side]
    painted = np.zeros_like(silver)
    painted[[1, 3]] = silver[[1, 3]]
    return img, silver, painted


def _cho():
    if not (DATA / "t0_image.tif").exists():
        pytest.skip("tests/data/nuclei3d-cho missing")
    # a 5 x 192 x 256 crop with 4-5 nuclei keeps the CPU run short
    img = tifffile.imread(DATA / "t0_image.tif")
    lab = tifffile.imread(DATA / "t0_silver_labels.tif")
    return img, lab


@pytest.mark.parametrize("padding,z_blocks", [("valid", 1), ("valid", 3), ("same", 2)])
def test_a_lifted_network_equals_the_2d_network_on_every_plane(padding, z_blocks):
    torch.manual_seed(0)
    net2 = UNet(UNetConfig(depth=2, base_channels=4, padding=padding)).eval()
    net3 = lift_network(net2, z_blocks).eval()
    cfg = net3.config
    assert cfg.dims == 3 and cfg.z_pooling == (False, False)
    assert sum(cfg.z_convolution) == z_blocks and cfg.z_convolution[-1]  # the deepest first
    vol = np.random.default_rng(0).gamma(2.0, 300.0, size=(4, 45, 38)).astype(np.uint16)
    vol = vol / 600.0  # one fixed scale: the 2D path normalises per plane, the 3D per volume
    none = Normalization("none")
    np.testing.assert_allclose(predict_volume_image(vol, net3, device="cpu", normalization=none),
                               predict_image(vol, net2, device="cpu", normalization=none),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="already 3D"):
        lifted_config(cfg)


def test_painted_slices_and_bad_paintings():
    lab = np.zeros((5, 30, 30), np.uint16)
    assert painted_slices(lab) == []
    lab[3, 5:9, 5:9] = 2
    assert painted_slices(lab) == [3]
    img = np.zeros((5, 30, 30), np.float32)
    model = _tiny_model()
    with pytest.raises(AnnotationError, match="no slice of the labels is painted"):
        next(fine_tune_volume(img, np.zeros_like(lab), model))
    with pytest.raises(AnnotationError, match="outside the volume"):
        next(fine_tune_volume(img, lab, model, slices=[7]))
    with pytest.raises(AnnotationError, match="slice 1 has nothing painted"):
        next(fine_tune_volume(img, lab, model, slices=[1]))
    full = np.zeros_like(lab)
    full[2] = 5  # one object over the whole slice: no background
    with pytest.raises(AnnotationError, match="no background"):
        next(fine_tune_volume(img, full, model))
    with pytest.raises(AnnotationError, match="same shape"):
        next(fine_tune_volume(img[0], lab[0], model))


def _tiny_model():
    from napari_unet.core.modelfile.files import UNetModel

    torch.manual_seed(0)
    return UNetModel(UNet(UNetConfig(depth=2, base_channels=4)), name="tiny")


def test_fine_tuning_on_two_painted_slices_beats_the_start_on_the_other_slices(tmp_path):
    img, silver = _cho()
    painted = np.zeros_like(silver)
    painted[[1, 3]] = silver[[1, 3]]  # the user painted two whole slices
    img0, painted0 = img.copy(), painted.copy()
    base = load_model("nuclei")
    start = lift_model(base)
    others = [0, 2, 4]

    def f1_others(model):
        pred = segment_image(img, model, device="cpu")
        assert pred.shape == img.shape  # one 3D labels volume
        return match_instances(pred[others], silver[others], volume=True).f1

    f1_start = f1_others(start)
    cfg = TrainConfig(steps=40, batch_size=2, patch_size=64, lr=1e-3)
    gen = fine_tune_volume(img, painted, base, config=cfg, seed=0, device="cpu")
    events = []
    try:
        while True:
            events.append(next(gen))
    except StopIteration as e:
        tuned = e.value
    assert [ev.step for ev in events] == list(range(1, 41)) and all(isinstance(e, StepDone) for e in events)
    assert "not validated" in events[-1].validation
    assert np.isfinite([e.loss for e in events]).all()
    f1_tuned = f1_others(tuned)
    assert f1_tuned > f1_start + 0.1, (f1_start, f1_tuned)
    prov = tuned.provenance["fine_tuned_3d"]
    assert prov["painted_slices"] == [1, 3] and prov["steps"] == 40 and prov["validated"] is False
    assert tuned.provenance["lifted_from"]["name"] == base.name
    np.testing.assert_array_equal(img, img0)  # the user's data is never written
    np.testing.assert_array_equal(painted, painted0)
    path = save_model(tuned, tmp_path / "cho3d.safetensors")
    back = load_model(path)
    assert back.config == tuned.config and back.config.dims == 3
    np.testing.assert_array_equal(segment_image(img, back, device="cpu"),
                                  segment_image(img, tuned, device="cpu"))


def test_stop_ends_volume_fine_tuning_and_keeps_the_model():
    import threading

    img = np.random.default_rng(0).random((3, 48, 48)).astype(np.float32)
    lab = np.zeros((3, 48, 48), np.uint16)
    lab[1, 10:20, 10:20] = 1
    stop = threading.Event()
    gen = fine_tune_volume(img, lab, _tiny_model(), config=TrainConfig(steps=50, batch_size=1, patch_size=32),
                           device="cpu", stop=stop)
    next(gen)
    next(gen)
    stop.set()
    with pytest.raises(StopIteration) as e:
        next(gen)
    model = e.value.value
    assert model.provenance["fine_tuned_3d"]["ended"] == "stopped"
    assert model.provenance["fine_tuned_3d"]["steps"] == 2
    assert segment_image(img, model, device="cpu").shape == img.shape


def test_finetune_widget_trains_a_3d_unet_on_painted_slices(make_napari_viewer, qtbot, monkeypatch):
    """Fine-tune widget, '3D U-Net' on: two painted slices of a real volume in a real viewer;
    the model it keeps segments the volume in the Segment widget as one 3D labels layer."""
    from qtpy.QtCore import Qt

    from napari_unet._widgets import _common, _finetune

    img, silver = _cho()
    painted = np.zeros_like(silver)
    painted[[1, 3]] = silver[[1, 3]]
    viewer = make_napari_viewer()
    viewer.add_image(img, name="cho", scale=(5.0, 1.0, 1.0))
    viewer.add_labels(painted, name="painted", scale=(5.0, 1.0, 1.0))
    viewer.add_image(img[0], name="plane")
    _d, seg = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    _d, ft = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    errors = []
    monkeypatch.setattr(_common, "show_error", errors.append)  # where widgets say errors
    ft.settings.base_model.value = "nuclei"
    ft.settings.device.value = "cpu"
    ft.settings.steps.value = 3
    ft.settings.volume.value = True
    ft.image.value, ft.labels.value = "plane", "painted"
    assert ft.train() is None and errors  # a 2D image is no volume: said, nothing starts
    assert "stack of 5 planes" in errors[-1]
    ft.image.value = "cho"
    qtbot.mouseClick(ft.train_button.native, Qt.MouseButton.LeftButton)
    assert ft.running, errors
    qtbot.waitUntil(lambda: not ft.running, timeout=180_000)
    assert ft.model is not None and ft.model.config.dims == 3
    assert "not validated" in ft.status.text() and len(ft.plot.loss) == 3
    assert ft.model.provenance["fine_tuned_3d"]["painted_slices"] == [1, 3]
    np.testing.assert_array_equal(viewer.layers["painted"].data, painted)  # never written
    assert seg.model.value == ft.model_name
    seg.images.value = ["cho"]
    seg.device.value = "cpu"
    spacings = _spy_spacing(monkeypatch)
    seg.run()
    qtbot.waitUntil(lambda: not seg.running, timeout=180_000)
    out = viewer.layers["cho instances"]
    assert out.data.shape == img.shape and tuple(out.scale) == (5.0, 1.0, 1.0)
    # the layer's scale is the voxel size of the 3D instances
    assert spacings == [(5.0, 1.0, 1.0)]
    np.testing.assert_array_equal(out.data, segment_image(img, ft.model, device="cpu",
                                                          spacing=(5.0, 1.0, 1.0)))
    # '3D start': a new 3D U-Net whose pooling follows the image layer's scale
    from napari_unet._widgets._train_jobs import new_volume_note
    from napari_unet._widgets._train_settings import VOLUME_STARTS
    from napari_unet.core.train.loop3d import volume_architecture

    ft.settings.volume.value = False
    assert not ft.settings.volume_start.enabled  # a 3D start means nothing for 2D training
    ft.settings.volume.value = True
    assert ft.settings.volume_start.enabled
    assert ft.settings.base_model.enabled
    ft.settings.volume_start.value = VOLUME_STARTS[1]
    assert not ft.settings.base_model.enabled  # a new network has no base model
    ft.settings.steps.value = 2
    lifted = ft.model
    infos = []
    monkeypatch.setattr(_finetune, "show_info", infos.append)
    qtbot.mouseClick(ft.train_button.native, Qt.MouseButton.LeftButton)
    assert ft.running, errors
    # the start says what the layer's scale chose (a layer without its scale is noticed)
    assert "voxels of 5 x 1 x 1" in infos[0] and "level(s) [3] of 3" in infos[0]
    assert "cubes" not in infos[0] and "cubes" in new_volume_note((1.0, 1.0, 1.0))
    qtbot.waitUntil(lambda: not ft.running, timeout=180_000)
    assert ft.model is not lifted and ft.model.provenance["fine_tuned_3d"]["from_scratch"]
    assert ft.model.config == volume_architecture((5.0, 1.0, 1.0))  # z pooled on level 3 only
    assert ft.model.provenance["fine_tuned_3d"]["spacing"] == [5.0, 1.0, 1.0]
    assert "z on level(s) [3]) trained from scratch" in ft.status.text()
    assert not ft.settings.base_model.enabled  # still, after the run
    # two volumes (pairs): one network from the painted slices of both, if their voxels agree
    crop = (slice(None), slice(100, 300), slice(100, 300))  # 4 nuclei on slice 2
    viewer.add_image(img[crop], name="cho crop", scale=(5.0, 1.0, 1.0))
    other = np.zeros_like(silver[crop])
    other[2] = silver[crop][2]
    viewer.add_labels(other, name="crop painted", scale=(4.0, 1.0, 1.0))
    viewer.add_image(img[crop], name="cho crop deeper", scale=(4.0, 1.0, 1.0))
    for im, lb in (("cho", "painted"), ("cho crop deeper", "crop painted")):
        ft.image.value, ft.labels.value = im, lb
        qtbot.mouseClick(ft.add_pair.native, Qt.MouseButton.LeftButton)
    assert ft.train() is None and "different voxel sizes" in errors[-1]  # said, nothing starts
    ft.pair_list.setCurrentRow(1)
    qtbot.mouseClick(ft.remove_pair.native, Qt.MouseButton.LeftButton)
    ft.image.value = "cho crop"
    qtbot.mouseClick(ft.add_pair.native, Qt.MouseButton.LeftButton)
    ft.settings.steps.value = 1
    qtbot.mouseClick(ft.train_button.native, Qt.MouseButton.LeftButton)
    assert ft.running, errors
    qtbot.waitUntil(lambda: not ft.running, timeout=180_000)
    both = ft.model.provenance["fine_tuned_3d"]
    assert both["painted_slices"] == [[1, 3], [2]] and len(both["volume_shape"]) == 2, errors
    ft.settings.volume.value = False
    assert ft.settings.base_model.enabled and not ft.settings.volume_start.enabled
    assert ft.model_name.startswith("3D U-Net") and seg.model.value == ft.model_name


def test_cli_train_volume_then_segment_the_volume(tmp_path, capsys, monkeypatch):
    """`train --volume` on real files fine-tunes a 3D model; `segment` with it writes 3D instances."""
    from napari_unet.cli.main import main

    img, silver, painted = _cho_crop(160)
    tifffile.imwrite(tmp_path / "vol.tif", img)
    tifffile.imwrite(tmp_path / "painted.tif", painted)
    model = tmp_path / "vol3d.safetensors"
    assert main(["train", "--volume", "--images", str(tmp_path / "vol.tif"), "--labels",
                 str(tmp_path / "painted.tif"), "--base-model", "nuclei", "--steps", "2",
                 "--device", "cpu", "-q", "-o", str(model)]) == 0
    assert "slices [1, 3]" in capsys.readouterr().out
    assert load_model(model).config.dims == 3
    out = tmp_path / "out.tif"
    spacings = _spy_spacing(monkeypatch)
    assert main(["segment", str(tmp_path / "vol.tif"), "--model", str(model), "--output", str(out),
                 "--device", "cpu", "--spacing", "5", "1", "1"]) == 0
    assert spacings == [(5.0, 1.0, 1.0)]  # the voxel size reached the segmentation
    np.testing.assert_array_equal(tifffile.imread(out), segment_image(
        img, load_model(model), device="cpu", spacing=(5.0, 1.0, 1.0)))
    # a spacing for a 2D model is said to be of no use, not silently dropped
    assert main(["segment", str(tmp_path / "vol.tif"), "--model", "nuclei", "--output",
                 str(tmp_path / "o2.tif"), "--spacing", "5", "1", "1"]) == 2
    assert "2D model" in capsys.readouterr().err and not (tmp_path / "o2.tif").exists()
    # --slices without --volume, and a volume run without a base model: messages, no file
    assert main(["train", "--images", str(tmp_path / "vol.tif"), "--labels", str(tmp_path / "painted.tif"),
                 "--slices", "1", "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "use it with --volume" in capsys.readouterr().err
    assert main(["train", "--volume", "--images", str(tmp_path / "vol.tif"), "--labels",
                 str(tmp_path / "painted.tif"), "-o", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "--spacing Z Y X" in err and "--base-model" in err
    assert main(["train", "--images", str(tmp_path / "vol.tif"), "--labels", str(tmp_path / "painted.tif"),
                 "--spacing", "5", "1", "1", "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "use it with --volume" in capsys.readouterr().err
    assert main(["train", "--volume", "--images", str(tmp_path / "vol.tif"), "--labels",
                 str(tmp_path / "painted.tif"), "--spacing", "0", "0.2", "0.2",
                 "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "three sizes > 0" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
    # no base model, a voxel size: a new 3D U-Net whose levels pool z where the voxel allows
    new = tmp_path / "new3d.safetensors"
    assert main(["train", "--volume", "--images", str(tmp_path / "vol.tif"), "--labels",
                 str(tmp_path / "painted.tif"), "--spacing", "1.0", "0.2", "0.2", "--steps", "2",
                 "--patch-size", "48", "--device", "cpu", "-q", "-o", str(new)]) == 0
    assert "from scratch (z pooled on level(s) [3] of 3)" in capsys.readouterr().out
    back = load_model(new)
    assert back.config.z_pooling == (False, False, True)
    assert back.provenance["fine_tuned_3d"]["spacing"] == [1.0, 0.2, 0.2]
    # several volumes: every painted slice of each; --slices then names nothing
    other = np.zeros_like(silver)
    other[2] = silver[2]
    tifffile.imwrite(tmp_path / "painted2.tif", other)
    two = ["--images", str(tmp_path / "vol.tif"), str(tmp_path / "vol.tif"), "--labels",
           str(tmp_path / "painted.tif"), str(tmp_path / "painted2.tif")]
    assert main(["train", "--volume", *two, "--base-model", "nuclei", "--slices", "1",
                 "-o", str(tmp_path / "y.safetensors")]) == 2
    assert "drop --slices" in capsys.readouterr().err and not (tmp_path / "y.safetensors").exists()
    assert main(["train", "--volume", *two, "--base-model", "nuclei", "--steps", "1",
                 "--device", "cpu", "-q", "-o", str(tmp_path / "y.safetensors")]) == 0
    both = load_model(tmp_path / "y.safetensors").provenance["fine_tuned_3d"]
    assert both["painted_slices"] == [[1, 3], [2]] and len(both["volume_shape"]) == 2


def test_a_3d_model_as_base_of_2d_or_live_training_is_a_message():
    """A 3D model picked as the base of 2D fine-tuning or Live is refused with what to do instead,
    before any step (it used to fail inside the network)."""
    from napari_unet.core.events import run_to_end
    from napari_unet.core.modelfile.files import lift_model
    from napari_unet.core.train import LiveInbox, TrainConfig, train
    from napari_unet.core.train.live import live_train

    m3 = lift_model(load_model("nuclei"))
    img = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    lab = np.zeros((64, 64), np.int32)
    lab[10:20, 10:20] = 1
    with pytest.raises(ValueError, match="3D model.*train --volume"):
        run_to_end(train(img, lab, model=m3, config=TrainConfig(steps=1), device="cpu"))
    with pytest.raises(ValueError, match="tick '3D U-Net'"):
        next(live_train(img, LiveInbox(lab), model=m3, device="cpu"))


def test_several_volumes_train_one_3d_model_from_all_their_painted_slices():
    """A list of volumes (the shipped nuclei3d is trained so): patches come from the painted slices
    of every volume, the provenance lists them per volume; slices= with several volumes, or a
    count mismatch, is a message."""
    from napari_unet.core.events import run_to_end

    rng = np.random.default_rng(1)
    imgs = [rng.random((3, 48, 48)).astype(np.float32), rng.random((4, 40, 56)).astype(np.float32)]
    labs = [np.zeros(i.shape, np.uint16) for i in imgs]
    labs[0][1, 10:20, 10:20] = 1
    labs[1][2, 5:15, 30:40] = 1
    labs[1][3, 20:30, 8:18] = 2
    cfg = TrainConfig(steps=3, batch_size=2, patch_size=32)
    model = run_to_end(fine_tune_volume(imgs, labs, _tiny_model(), config=cfg, device="cpu"))
    prov = model.provenance["fine_tuned_3d"]
    assert prov["painted_slices"] == [[1], [2, 3]] and prov["steps"] == 3
    assert prov["volume_shape"] == [[3, 48, 48], [4, 40, 56]]
    with pytest.raises(AnnotationError, match="several volumes"):
        next(fine_tune_volume(imgs, labs, _tiny_model(), slices=[1], config=cfg, device="cpu"))
    with pytest.raises(AnnotationError, match="one labels volume"):
        next(fine_tune_volume(imgs, labs[:1], _tiny_model(), config=cfg, device="cpu"))
    # a volume with nothing painted is named, so the user knows which layer to paint
    with pytest.raises(AnnotationError, match="volume 2 of 2: no slice of the labels is painted"):
        next(fine_tune_volume(imgs, [labs[0], np.zeros_like(labs[1])], _tiny_model(), config=cfg,
                              device="cpu"))


def test_a_new_3d_unet_pools_z_only_where_the_voxel_size_allows():
    """volume_architecture: nnU-Net's rule from the voxel size: a level pools (and convolves along)
    z once the voxel there is less than twice as deep as wide; before that Y and X only."""
    from napari_unet.core.train.loop3d import new_volume_model, volume_architecture

    cho = volume_architecture((1.0, 0.2, 0.2))  # confocal nuclei: 5 times as deep as wide
    assert cho.dims == 3 and cho.depth == 3
    assert cho.z_pooling == (False, False, True) and cho.z_convolution == (False, False, True, True)
    cube = volume_architecture((0.3, 0.3, 0.3))  # isotropic: Cicek et al.'s 3D U-Net
    assert cube.z_pooling == (True,) * 3 and cube.z_convolution == (True,) * 4
    mid = volume_architecture((2.5, 1.0, 1.0), depth=2)  # the tiled == whole case of test_unet3d
    assert mid.z_pooling == (False, True) and mid.z_convolution == (False, True, True)
    flat = volume_architecture((40.0, 1.0, 1.0))  # serial sections: never pooled in z
    assert flat.z_pooling == (False,) * 3 and flat.z_convolution == (False,) * 4
    for bad in ((1.0, 0.2), (0.0, 1.0, 1.0), (float("nan"), 1.0, 1.0)):
        with pytest.raises(ValueError, match="voxel size"):
            volume_architecture(bad)
    a, b = new_volume_model((1.0, 0.2, 0.2), seed=3), new_volume_model((1.0, 0.2, 0.2), seed=3)
    assert a.config == cho and "z pooled on level(s) [3] of 3" in a.description
    for (k, va), vb in zip(a.net.state_dict().items(), b.net.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k  # the seed gives the same start


def _weights_2d(lab2d):
    from napari_unet.core.train.annotations import labels_to_target
    from napari_unet.core.train.weight_map import weight_map

    t = labels_to_target(lab2d, mode="binary")
    return weight_map(t.target, t.objects, 2, w0=10.0, sigma=5.0, balance=False)


def test_the_weight_map_is_3d_across_consecutive_painted_slices():
    """An isolated painted slice has the paper's 2D map; on consecutive painted slices an object
    of the slice above makes a gap in this slice a gap between two objects (eq. 2 in 3D), by the
    voxel's proportions; the same object painted with other ids on each slice is one object."""
    from napari_unet.core.train.loop3d import painted_runs, slice_targets

    assert painted_runs([5, 1, 2, 7, 8, 9]) == [[1, 2], [5], [7, 8, 9]]
    lab = np.zeros((6, 40, 60), np.uint16)
    lab[1, 10:30, 5:20] = 1  # slice 1: one object on the left
    lab[2, 10:30, 5:20] = 7  # slice 2: the same object, another id...
    lab[2, 10:30, 26:45] = 3  # ...and a second object on the right
    lab[4, 10:30, 5:20] = 2  # slice 4, alone: one object
    target, w = slice_targets(lab, [1, 2, 4], 10.0, 5.0, spacing=(1.0, 1.0, 1.0))
    assert (target[[0, 3, 5]] == -1).all() and (w[[0, 3, 5]] == 0).all()  # unknown slices
    np.testing.assert_array_equal(w[4], _weights_2d(lab[4]))  # an isolated slice: the 2D map
    gap = (1, 20, 22)  # slice 1, in the gap, next to the right object of slice 2
    assert _weights_2d(lab[1])[gap[1:]] == 1.0  # in 2D: one object, no border term
    assert w[gap] > 2.0  # in 3D: between the left object and the right one a plane up
    # slice 2 in 3D weighs at least what it weighs in 2D (the same objects, more of them near)
    assert (w[2] >= _weights_2d(lab[2]) - 1e-6).all()
    # left of the left object in slice 2 only that object is near (ids 1 and 7 are one object)
    assert w[2, 20, 2] < 1.0 + 1e-3
    # deep voxels: the slice above is far, the 3D map tends to the 2D one
    _, far = slice_targets(lab, [1, 2, 4], 10.0, 5.0, spacing=(40.0, 1.0, 1.0))
    np.testing.assert_allclose(far[1], _weights_2d(lab[1]), atol=1e-6)
    np.testing.assert_allclose(far[2], _weights_2d(lab[2]), atol=1e-6)


def test_a_new_3d_unet_learns_from_two_painted_slices_with_the_pooling_of_the_scale(tmp_path):
    """From scratch (random weights, pooling from the voxel size) on two painted slices of a real
    volume: the 3D instances on the other slices go from nothing to most nuclei."""
    from napari_unet.core.events import run_to_end
    from napari_unet.core.train.loop3d import new_volume_model

    img, silver, painted = _cho_crop(192)
    others = [0, 2, 4]

    def f1_others(model):
        pred = segment_image(img, model, device="cpu", spacing=(5.0, 1.0, 1.0))
        return match_instances(pred[others], silver[others], volume=True).f1

    cfg = TrainConfig(steps=60, batch_size=2, patch_size=64, lr=2e-3)

    with pytest.raises(AnnotationError, match="voxel size"):
        next(fine_tune_volume(img, painted, None))  # a new network needs the voxel size
    model = run_to_end(fine_tune_volume(img, painted, None, spacing=(5.0, 1.0, 1.0), config=cfg,
                                        seed=0, device="cpu"))
    assert model.config.z_pooling == (False, False, True)  # ratio 5: z pooled on level 3 only
    prov = model.provenance["fine_tuned_3d"]
    assert prov["from_scratch"] is True and prov["spacing"] == [5.0, 1.0, 1.0]
    f1_start, f1 = f1_others(new_volume_model((5.0, 1.0, 1.0), seed=0)), f1_others(model)
    assert f1_start < 0.1 and f1 > 0.5, (f1_start, f1)  # from nothing to most nuclei
    back = load_model(save_model(model, tmp_path / "new3d.safetensors"))
    assert back.config == model.config



def test_elastic_deformation_in_3d_for_near_isotropic_voxels():
    """elastic_3d moves voxels across planes (an in-plane field cannot), labels with the image,
    in proportion to the voxel (deep voxels barely move in z) and to the patch's depth. fine_tune_volume picks it from the
    voxel size."""
    from napari_unet.core.train.augment import elastic_3d

    d, h, w = 24, 40, 44
    planes = torch.arange(d, dtype=torch.int16)[None, :, None, None].expand(2, d, h, w).contiguous()
    img = torch.zeros((2, d, h, w))
    img[:, 8:16, 10:30, 12:32] = 1.0
    lab = (img > 0.5).to(torch.int32)
    img0, lab0 = img.clone(), lab.clone()
    gen = torch.Generator().manual_seed(0)
    same_img, (same_lab, same_planes) = elastic_3d(img, [lab, planes], sigma=0.0, generator=gen)
    assert torch.allclose(same_img, img, atol=1e-5)  # resampled at the voxels themselves
    assert torch.equal(same_lab, lab) and torch.equal(same_planes, planes)
    out, (out_lab, out_planes) = elastic_3d(img, [lab, planes], sigma=4.0, generator=gen)
    assert out_planes.dtype == torch.int16 and out_lab.dtype == torch.int32
    assert (out_planes != planes).float().mean() > 0.2  # voxels come from other planes
    assert (out_lab != lab).any()  # the object moved...
    assert ((out > 0.5).to(torch.int32) == out_lab).float().mean() > 0.99  # ...with its labels
    _, (deep,) = elastic_3d(img, [planes], sigma=4.0, generator=gen, z_ratio=100.0)
    assert torch.equal(deep, planes)  # z displacements of 0.04 voxel on average: none rounds
    assert torch.equal(img, img0) and torch.equal(lab, lab0)  # the inputs are not modified
    # a patch of 5 planes and 200 x 200 pixels: z moves as little, relative to its depth, as the
    # plane does relative to its width (the field would fold a shallow patch otherwise)
    shallow = torch.arange(5, dtype=torch.int16)[None, :, None, None].expand(1, 5, 200, 200).contiguous()
    _, (moved,) = elastic_3d(shallow.float(), [shallow], sigma=10.0, generator=gen)
    assert (moved != shallow).float().mean() < 0.05
    vol = np.random.default_rng(0).random((6, 48, 48)).astype(np.float32)
    painted = np.zeros((6, 48, 48), np.uint16)
    painted[2, 10:20, 10:20] = 1
    from napari_unet.core.events import run_to_end

    cfg = TrainConfig(steps=1, batch_size=1, patch_size=32)
    for spacing, how in (((0.3, 0.25, 0.25), "3D"), ((1.0, 0.2, 0.2), "in-plane")):
        m = run_to_end(fine_tune_volume(vol, painted, _tiny_model(), spacing=spacing, config=cfg,
                                        device="cpu"))
        assert m.provenance["fine_tuned_3d"]["elastic"] == how

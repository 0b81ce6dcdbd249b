"""3D instances from plane-by-plane labels: stitching across z, 3D matching, segment/CLI --volume."""


import numpy as np
import pytest
import tifffile
from helpers import DATA

from napari_unet.core.metrics import match_instances
from napari_unet.core.postprocess.linking import stitch_planes


def _balls(shape=(9, 40, 60), centres=((4, 20, 18), (4, 20, 40)), r=10.0):
    """Two balls that touch where they meet (the nearer centre wins): a 3D reference."""
    zz, yy, xx = np.indices(shape)
    d = np.stack([np.sqrt(((zz - z) * 2.0) ** 2 + (yy - y) ** 2 + (xx - x) ** 2)
                  for z, y, x in centres])
    gt = np.where(d.min(0) <= r, d.argmin(0) + 1, 0).astype(np.int32)
    return gt


def _per_plane(gt):
    """Per-plane ids restarting at 1 in every plane, in a shuffled order (as a 2D model gives)."""
    out = np.zeros_like(gt)
    rng = np.random.default_rng(0)
    for z in range(gt.shape[0]):
        ids = np.unique(gt[z])[1:]
        new = rng.permutation(ids.size) + 1
        for i, v in zip(ids, new, strict=True):
            out[z][gt[z] == i] = v
    return out


def test_touching_balls_become_two_3d_objects_and_the_input_is_kept():
    gt = _balls()
    planes = _per_plane(gt)
    before = planes.copy()
    out = stitch_planes(planes)
    np.testing.assert_array_equal(planes, before)
    assert out.shape == gt.shape and out.dtype == np.uint16
    assert sorted(np.unique(out)) == [0, 1, 2]
    m = match_instances(out, gt, volume=True)
    assert m.tp == 2 and m.f1 == 1.0
    # read as 3D, ids that restart in every plane are not the objects
    assert match_instances(planes, gt, volume=True).f1 < 1.0


def test_a_merged_section_links_to_one_object_only():
    gt = _balls()
    planes = _per_plane(gt)
    planes[4][planes[4] > 0] = 1  # the 2D model merged both balls in the middle plane
    out = stitch_planes(planes)
    # the planes below and above the merge keep the two balls apart
    below = []
    for z in (2, 6):
        a, b = (np.unique(out[z][gt[z] == k]) for k in (1, 2))
        assert a.size == 1 and b.size == 1 and a[0] != b[0]
        below.append({int(a[0]), int(b[0])})
    # the merged section continues one ball, never both: it is one id, one of the balls' ids
    merged = np.unique(out[4][gt[4] > 0])
    assert merged.size == 1 and int(merged[0]) in below[0]


def test_sections_that_barely_overlap_are_not_linked():
    vol = np.zeros((2, 30, 30), np.int32)
    vol[0, 5:15, 5:15] = 1
    vol[1, 5:15, 13:23] = 1  # 20 of 100 pixels shared
    out = stitch_planes(vol)
    assert out[0].max() != out[1].max() and out.max() == 2
    out = stitch_planes(vol, min_overlap=0.2)
    assert out.max() == 1


def test_a_small_cap_inside_a_large_section_is_the_same_object():
    vol = np.zeros((2, 30, 30), np.int32)
    vol[0, 2:28, 2:28] = 7
    vol[1, 12:16, 12:16] = 3  # the pole of the object: IoU 0.02, but inside the section
    out = stitch_planes(vol)
    assert out.max() == 1


@pytest.mark.parametrize("bad,words", [(np.zeros((5, 5), np.int32), "(Z, Y, X)"),
                                       (np.zeros((2, 5, 5), np.float32), "integers"),
                                       (-np.ones((2, 5, 5), np.int32), ">= 0")])
def test_bad_volumes_are_refused_with_a_message(bad, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        stitch_planes(bad)
    with pytest.raises(ValueError, match="min_overlap"):
        stitch_planes(np.zeros((2, 5, 5), np.int32), min_overlap=0)


def test_3d_matching_counts_an_object_once_across_planes():
    gt = _balls()
    pred = gt.copy()
    assert match_instances(pred, gt, volume=True).n_gt == 2
    assert match_instances(pred, gt).n_gt > 2  # plane by plane: one count per section
    pred[5:][pred[5:] == 1] = 5  # one ball cut in two at z=5
    m = match_instances(pred, gt, volume=True)
    assert m.n_pred == 3 and m.n_gt == 2


def _cho():
    p = DATA / "nuclei3d-cho" / "t0_image.tif"
    if not p.exists():
        pytest.skip("tests/data/nuclei3d-cho missing")
    return tifffile.imread(p), tifffile.imread(DATA / "nuclei3d-cho" / "t0_silver_labels.tif")


def test_segment_volume_links_real_nuclei_across_z():
    from napari_unet.core.exchange.opening import load_model
    from napari_unet.core.segment import segment_image

    img, silver = _cho()
    model = load_model("nuclei")
    planes = segment_image(img, model, output="instances", device="cpu")
    vol = segment_image(img, model, output="instances", device="cpu", volume=True)
    assert vol.shape == img.shape
    np.testing.assert_array_equal(vol > 0, planes > 0)  # the same foreground, ids linked
    n_sections = sum(int(np.unique(planes[z]).size - 1) for z in range(planes.shape[0]))
    assert vol.max() < n_sections
    f1_vol = match_instances(vol, silver, volume=True).f1
    f1_planes = match_instances(planes, silver, volume=True).f1  # ids restart in every plane
    assert f1_vol > f1_planes + 0.2
    with pytest.raises(ValueError, match="volume"):
        segment_image(img, model, output="semantic", device="cpu", volume=True)


def test_cli_volume_writes_3d_instances(tmp_path):
    from napari_unet.cli.main import main

    img, _ = _cho()
    src = tmp_path / "vol.tif"
    tifffile.imwrite(src, img)
    out = tmp_path / "vol_instances.tif"
    assert main(["segment", str(src), "--output", str(out), "--volume", "--device", "cpu",
                 "--quiet"]) == 0
    lab = tifffile.imread(out)
    assert lab.shape == img.shape
    spans = [np.unique(np.nonzero(lab == i)[0]).size for i in np.unique(lab)[1:]]
    assert max(spans) >= 2  # objects continue across planes
    assert main(["segment", str(src), "--output", str(tmp_path / "x.tif"), "--volume",
                 "--output-type", "semantic", "--quiet"]) == 2
    assert not (tmp_path / "x.tif").exists()
    # 3D instances are made in memory: a zarr output is refused, and nothing is written
    assert main(["segment", str(src), "--output", str(tmp_path / "x.zarr"), "--volume",
                 "--quiet"]) == 1
    assert not (tmp_path / "x.zarr").exists()


def test_segment_widget_makes_3d_objects_of_a_z_stack(make_napari_viewer, qtbot, monkeypatch):
    """The Segment widget's '3D objects across z' on a real confocal stack in a real viewer."""
    from qtpy.QtCore import Qt

    from napari_unet.core.exchange.opening import load_model
    from napari_unet.core.segment import segment_image

    img, _ = _cho()
    viewer = make_napari_viewer()
    viewer.add_image(img, name="cho", scale=(5.0, 1.0, 1.0))
    _d, w = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    w.model.value = "nuclei"
    w.device.value = "cpu"
    w.images.value = ["cho"]
    errors = []
    from napari_unet._widgets import _common

    monkeypatch.setattr(_common, "show_error", errors.append)  # where widgets say errors
    w.output.value = "semantic"
    w.volume.value = True
    assert w.run() is None and errors and "instances" in errors[-1]
    w.output.value = "instances"
    qtbot.mouseClick(w.run_button.native, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not w.running, timeout=120_000)
    out = viewer.layers["cho instances"]
    assert out.data.shape == img.shape and tuple(out.scale) == (5.0, 1.0, 1.0)
    want = segment_image(img, load_model("nuclei"), output="instances", device="cpu", volume=True)
    np.testing.assert_array_equal(out.data, want)


def test_3d_instances_grow_and_split_by_physical_distance():
    """With the voxel size of a layer's scale, a voxel of the grow class joins the object that is
    nearest in space, not in voxel steps; the watershed split in physical units still separates two
    touching ellipsoids; isotropic spacing is the default; a wrong spacing is a message."""
    from napari_unet.core.modelfile.files import Postprocessing
    from napari_unet.core.postprocess.instances import instances_from_semantic

    sem = np.full((5, 21, 21), 2, np.uint8)  # grow class everywhere ...
    sem[0, 10, 10] = 1  # ... object A two planes below the probe
    sem[2, 10, 4] = 1  # object B six pixels beside it, in the probe's plane
    post = Postprocessing(instance_classes=(1,), grow_classes=(2,), min_size=1)
    a, b = 1, 2  # raster order: A (z=0) first
    iso = instances_from_semantic(sem, post)
    aniso = instances_from_semantic(sem, post, spacing=(5.0, 1.0, 1.0))
    assert iso[2, 10, 10] == a  # 2 voxel steps in z < 6 in x
    assert aniso[2, 10, 10] == b  # 2 x 5 = 10 > 6: B is nearer in space
    np.testing.assert_array_equal(instances_from_semantic(sem, post, spacing=(0.4, 0.4, 0.4)), iso)
    # watershed: two touching ellipsoids, round in space (voxels 4x as deep as wide)
    zz, yy, xx = np.mgrid[:9, :40, :60]
    fg = np.zeros((9, 40, 60), bool)
    for cx in (20, 38):
        fg |= ((zz - 4) * 4.0) ** 2 + (yy - 20) ** 2 + (xx - cx) ** 2 <= 11 ** 2
    ws = Postprocessing(instance_classes=(1,), min_size=1, split="watershed")
    split = instances_from_semantic(fg.astype(np.uint8), ws, spacing=(4.0, 1.0, 1.0))
    assert split.max() == 2 and split[4, 20, 20] != split[4, 20, 38]
    with pytest.raises(ValueError, match="positive voxel sizes"):
        instances_from_semantic(sem, post, spacing=(5.0, 1.0))

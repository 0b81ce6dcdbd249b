"""Border weight map (paper eq. 2), class balance, and painted labels -> training target."""

import numpy as np
import pytest
from scipy import ndimage

from napari_unet.core.train import TrainConfig
from napari_unet.core.train.annotations import AnnotationError, labels_to_target, split_planes
from napari_unet.core.train.weight_map import (
    border_term,
    class_balance,
    nearest_two_distances,
    weight_map,
)


# ---------------------------------------------------------------------------- reference
def reference_weight_map(target, objects, num_classes, w0=10.0, sigma=5.0):
    """Direct eq. 2: one whole-image distance transform per object, sort, two smallest."""
    t = np.asarray(target)
    ids = [i for i in np.unique(objects) if i != 0]
    h, w = t.shape
    if len(ids) >= 2:
        dists = np.stack([ndimage.distance_transform_edt(objects != i) for i in ids])
        dists.sort(axis=0)
        d1, d2 = dists[0], dists[1]
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    else:
        border = np.zeros((h, w))
    known = t >= 0
    counts = np.array([(t == k).sum() for k in range(num_classes)], float)
    wc = np.zeros(num_classes)
    wc[counts > 0] = known.sum() / ((counts > 0).sum() * counts[counts > 0])
    out = np.zeros((h, w), np.float64)
    for k in range(num_classes):
        out[t == k] = np.float32(wc[k])
    bg = t == 0
    out[bg] += border[bg]
    return out.astype(np.float32)


def touching_squares():
    lab = np.zeros((40, 48), np.int32)
    lab[5:20, 5:20] = 1
    lab[5:20, 20:34] = 2  # touches 1
    lab[22:35, 10:25] = 3  # 2 px gap to 1
    lab[30:38, 38:46] = 7
    return lab


def random_touching(shape=(64, 64), n=12, seed=0):
    from skimage.segmentation import watershed

    rng = np.random.default_rng(seed)
    markers = np.zeros(shape, np.int32)
    pts = rng.integers(0, min(shape), (n, 2))
    markers[pts[:, 0], pts[:, 1]] = np.arange(1, n + 1)
    lab = watershed(ndimage.distance_transform_edt(markers == 0), markers)
    keep = np.isin(lab, rng.choice(np.arange(1, n + 1), n // 2 + 2, replace=False))
    return np.where(keep, lab, 0).astype(np.int32)


# ---------------------------------------------------------------------------- weights
@pytest.mark.parametrize("case", ["squares", "random0", "random1"])
@pytest.mark.parametrize("masked", [False, True])
def test_weight_map_equals_direct_reference(case, masked):
    lab = touching_squares() if case == "squares" else random_touching(seed=int(case[-1]))
    mask = None
    if masked:
        mask = np.zeros(lab.shape, np.uint8)
        mask[3:30, 4:40] = 1
    tg = labels_to_target(lab, mask)
    ours = weight_map(tg.target, tg.objects, 2)
    ref = reference_weight_map(tg.target, tg.objects, 2)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    assert ours.dtype == np.float32
    # the border term is really there: the separating line between objects 1 and 2 is heavy
    if case == "squares":
        assert ours[10, 19] > 5 and ours[10, 20] > 5
        assert np.all(ours[tg.target == 1] < 2)


def test_fast_distances_equal_whole_image_distances_bitwise():
    lab = random_touching((96, 80), n=30, seed=3)
    fast = nearest_two_distances(lab, margin=12)
    slow = nearest_two_distances(lab, margin=None)
    near = np.isfinite(fast[1])
    np.testing.assert_array_equal(fast[0][fast[0] <= 12], slow[0][fast[0] <= 12])
    np.testing.assert_array_equal(fast[1][near & (fast[1] <= 12)], slow[1][near & (fast[1] <= 12)])
    # with the default margin the border term is bitwise the whole-image one
    np.testing.assert_array_equal(border_term(lab), border_term(lab, exact_margin=False))


def test_class_balance():
    t = np.full((10, 10), -1, np.int8)
    t[:2] = 1  # 20 object pixels
    t[2:8] = 0  # 60 background pixels
    wc = class_balance(t, 2)
    np.testing.assert_allclose(wc, [80 / (2 * 60), 80 / (2 * 20)])
    # balanced: each class carries the same total weight, mean weight over known pixels is 1
    assert wc[0] * 60 == pytest.approx(wc[1] * 20)
    w = weight_map(t, np.zeros_like(t, dtype=np.int32), 2)
    assert w[t >= 0].mean() == pytest.approx(1.0)
    assert class_balance(t, 3)[2] == 0.0
    # without class balance: w_c = 1 on every known pixel, the border term on background as before
    lab = touching_squares()
    tg = labels_to_target(lab)
    plain = weight_map(tg.target, tg.objects, 2, balance=False)
    balanced = weight_map(tg.target, tg.objects, 2)
    wc = class_balance(tg.target, 2)
    assert np.all(plain[tg.target == 1] == 1.0)
    np.testing.assert_allclose(plain - 1, balanced - wc[tg.target.clip(0)], atol=1e-5)
    assert (plain[tg.target == 0] > 1.5).any()  # the separating line keeps its border weight


def test_class_balance_of_background_against_all_objects():
    """balance="objects": background and the object classes together weigh the same; inside the
    objects boundary and interior keep their proportions (one weight for both)."""
    t = np.full((10, 10), -1, np.int8)
    t[:1] = 1  # 10 boundary pixels
    t[1:3] = 2  # 20 interior pixels
    t[3:9] = 0  # 60 background pixels
    wc = class_balance(t, 3, groups=((0,), (1, 2)))
    np.testing.assert_allclose(wc, [90 / (2 * 60), 90 / (2 * 30), 90 / (2 * 30)])
    w = weight_map(t, np.zeros_like(t, dtype=np.int32), 3, balance="objects", w0=0)
    assert w[t == 0].sum() == pytest.approx(w[t > 0].sum())
    assert w[t >= 0].mean() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="class_balance"):
        TrainConfig(class_balance="classes")


def test_unknown_pixels_get_zero_weight():
    lab = touching_squares()
    lab_scribble = lab.copy()
    lab_scribble[0:3, :] = 99  # background scribble
    tg = labels_to_target(lab_scribble, background_label=99)
    w = weight_map(tg.target, tg.objects, 2)
    assert np.all(w[tg.target == -1] == 0)
    assert np.all(w[tg.target >= 0] > 0)
    assert (tg.target == -1).sum() > 0


def test_single_object_has_no_border_term():
    lab = np.zeros((20, 20), np.int32)
    lab[5:10, 5:10] = 4
    assert not border_term(lab).any()
    assert not border_term(np.zeros((8, 8), np.int32)).any()


# ---------------------------------------------------------------------------- annotations
def test_touching_ids_are_separated_in_the_target():
    lab = touching_squares()
    tg = labels_to_target(lab)
    # columns 19 (object 1) and 20 (object 2) touch: both become background
    assert np.all(tg.target[5:20, 19] == 0) and np.all(tg.target[5:20, 20] == 0)
    assert np.all(tg.target[6:19, 10] == 1) and np.all(tg.target[6:19, 25] == 1)
    # connected components of the object class separate the two touching objects
    comp, n = ndimage.label(tg.target == 1)
    assert comp[10, 10] != comp[10, 25]
    assert n == 4
    # gap pixels to object 3 and a lone object are untouched
    assert np.all(tg.target[lab == 7] == 1)
    assert np.all(tg.known)
    assert set(np.unique(tg.target)) == {0, 1}


def test_touching_diagonally_is_separated():
    lab = np.zeros((10, 10), np.int32)
    lab[1:5, 1:5] = 1
    lab[5:9, 5:9] = 2  # touches 1 only at a corner (8-neighbourhood)
    tg = labels_to_target(lab)
    assert tg.target[4, 4] == 0 and tg.target[5, 5] == 0
    comp, n = ndimage.label(tg.target == 1, structure=np.ones((3, 3)))
    assert n == 2


def test_boundary_mode():
    lab = touching_squares()
    tg = labels_to_target(lab, mode="boundary")
    assert set(np.unique(tg.target)) == {0, 1, 2}
    assert tg.target[5, 10] == 1  # top edge of object 1 (next to background)
    assert tg.target[10, 19] == 1 and tg.target[10, 20] == 1  # contact between 1 and 2
    assert tg.target[12, 12] == 2  # interior
    assert tg.target[0, 0] == 0


def test_mask_region_and_scribbles():
    lab = np.zeros((30, 30), np.int32)
    lab[5:10, 5:10] = 3
    lab[20:25, 20:25] = 4  # outside the mask: painted, so known
    mask = np.zeros((30, 30), bool)
    mask[0:15, 0:15] = True
    tg = labels_to_target(lab, mask)
    assert np.all(tg.target[0:15, 0:15][lab[0:15, 0:15] == 0] == 0)  # complete region: background
    assert np.all(tg.target[lab == 4] == 1)
    assert tg.target[28, 2] == -1  # outside: unknown
    # scribbles: background painted with 9, the rest unpainted is unknown
    scr = np.zeros((30, 30), np.int32)
    scr[2, 2:20] = 9
    scr[12, 5:8] = 1
    tg = labels_to_target(scr, background_label=9)
    assert np.all(tg.target[2, 2:20] == 0)
    assert np.all(tg.target[12, 5:8] == 1)
    assert (tg.target == -1).sum() == 30 * 30 - 18 - 3
    assert tg.objects[2, 5] == 0  # the background label is not an object


def test_annotation_errors():
    img = np.zeros((16, 16), np.uint8)
    with pytest.raises(AnnotationError, match="no painted pixel"):
        labels_to_target(np.zeros((16, 16), np.int32))
    with pytest.raises(AnnotationError, match="integer label"):
        labels_to_target(np.ones((16, 16), np.float32))
    with pytest.raises(AnnotationError, match="differ in shape"):
        split_planes(img, np.zeros((16, 15), np.int32), None)
    with pytest.raises(AnnotationError, match="mask shape"):
        split_planes(img, np.zeros((16, 16), np.int32), np.ones((4, 4)))
    with pytest.raises(AnnotationError, match="integer label"):
        split_planes(img, np.zeros((16, 16), np.float64), None)


def test_only_one_class_painted_is_an_error():
    from napari_unet.core.modelfile.normalization import Normalization
    from napari_unet.core.network.unet import UNetConfig
    from napari_unet.core.train import prepare_data

    img = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    cfg = UNetConfig(depth=2, base_channels=4)
    scr = np.zeros((32, 32), np.int32)
    scr[3:6, 3:20] = 2  # objects only; background label 9 never painted
    with pytest.raises(AnnotationError, match="only one class.*no background"):
        prepare_data(img, scr, config=cfg, normalization=Normalization(), mode="binary",
                     background_label=9)
    bg_only = np.full((32, 32), 9, np.int32)
    with pytest.raises(AnnotationError, match="only one class.*no objects"):
        prepare_data(img, bg_only, config=cfg, normalization=Normalization(), mode="binary",
                     background_label=9)
    whole = np.ones((32, 32), np.int32)  # the whole frame is one object
    with pytest.raises(AnnotationError, match="only one class"):
        prepare_data(img, whole, config=cfg, normalization=Normalization(), mode="binary")
    with pytest.raises(AnnotationError, match="2 images but 1 labels"):
        prepare_data([img, img], [whole], config=cfg, normalization=Normalization(), mode="binary")


def test_user_arrays_are_not_modified():
    lab = touching_squares()
    lab[0, :5] = 9
    mask = np.zeros(lab.shape, np.uint8)
    mask[:20] = 1
    lab0, mask0 = lab.copy(), mask.copy()
    for mode in ("binary", "boundary"):
        tg = labels_to_target(lab, mask, background_label=9, mode=mode)
        weight_map(tg.target, tg.objects, 2 if mode == "binary" else 3)
    np.testing.assert_array_equal(lab, lab0)
    np.testing.assert_array_equal(mask, mask0)
    assert lab.dtype == lab0.dtype


def test_stack_planes():
    img = np.zeros((3, 16, 16), np.uint16)
    lab = np.zeros((3, 16, 16), np.int32)
    planes = split_planes(img, lab, None)
    assert [p[3] for p in planes] == [0, 1, 2]
    assert planes[0][0].shape == (1, 16, 16)
    rgb = np.zeros((16, 16, 3), np.uint8)
    (chw, _, _, _), = split_planes(rgb, lab[0], None, channel_axis=-1)
    assert chw.shape == (3, 16, 16)

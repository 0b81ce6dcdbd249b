"""Normalisation (whole image, before the network): a hot or dead pixel, float64 and uint64 images
far outside float32's range, clipping in the model file and in bioimage.io packages. Each of these
tests failed before its fix (issue 14: silent wrong results)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import tiny_model

from napari_unet.core.modelfile.normalization import CLIP, Normalization, percentiles
from napari_unet.core.predict.predict2d import predict_image
from napari_unet.core.segment import segment_image


def test_one_hot_pixel_does_not_change_the_segmentation_far_away(nuclei_model, nuclei_image):
    """A saturated camera pixel used to become a normalised value of ~330 that the network spread
    over its receptive field: 4454 pixels changed up to 95 px away, 5 of 32 nuclei lost."""
    crop = nuclei_image[:256, :256]
    hot = crop.copy()
    hot[128, 128] = np.iinfo(hot.dtype).max
    a = segment_image(crop, nuclei_model, device="cpu")
    b = segment_image(hot, nuclei_model, device="cpu")
    changed = (a > 0) != (b > 0)
    yy, xx = np.nonzero(changed)
    far = np.hypot(yy - 128, xx - 128) > 16
    # before: 4243 changed pixels, most far away; now a few boundary pixels of p ~ 0.5 flip
    assert changed.sum() < 150 and far.sum() < 30, (changed.sum(), far.sum())
    assert abs(int(b.max()) - int(a.max())) <= 1  # at most the hot pixel itself, not 5 lost
    pa = predict_image(crop, nuclei_model, device="cpu")[1]
    pb = predict_image(hot, nuclei_model, device="cpu")[1]
    dy, dx = np.nonzero(np.abs(pa - pb) > 0.1)
    assert np.hypot(dy - 128, dx - 128).max() < 60


def test_normalised_values_are_clipped_and_dead_pixels_too():
    img = np.full((1, 40, 40), 100.0)
    img[0, :20] = 200.0
    img[0, 5, 5] = 1e9  # hot
    img[0, 6, 6] = -1e9  # dead (or an offset camera)
    norm = Normalization()
    out = Normalization.apply(img, norm.stats(img, channel_axis=0))
    assert out.dtype == np.float32 and out.min() == CLIP[0] and out.max() == CLIP[1]
    raw = Normalization("none")
    assert Normalization.apply(img, raw.stats(img, channel_axis=0)).max() == np.float32(1e9)


@pytest.mark.parametrize("factor", [1e300, 1e-50, 1e-300, -1e300])
def test_float64_images_far_outside_float32_range_segment_like_the_original(nuclei_model, nuclei_image, factor):
    """Such images became all-NaN probabilities and 0 objects: the cast to float32 came before
    the normalisation (the NaN check ran on the float64 values, before the cast)."""
    crop = nuclei_image[:160, :160]
    ref = predict_image(crop.astype(np.float64), nuclei_model, device="cpu")
    scaled = crop.astype(np.float64) * factor
    out = predict_image(scaled, nuclei_model, device="cpu")
    assert np.all(np.isfinite(out))
    if factor > 0:
        np.testing.assert_allclose(out, ref, atol=1e-4)


def test_float64_extremes_give_finite_statistics():
    a = np.array([[-1.7e308, 1.7e308], [0.0, 1e308]])
    lo, hi = percentiles(a, [1, 99.8])
    assert np.isfinite(lo) and np.isfinite(hi) and lo < hi
    st = Normalization().stats(a, channel_axis=None)
    assert np.all(np.isfinite(st))
    assert np.all(np.isfinite(Normalization.apply(a[None], st)))


def test_uint64_above_2_63_normalises_like_its_shifted_copy():
    base = np.random.default_rng(0).integers(0, 1000, (50, 50)).astype(np.uint64)
    big = base + np.uint64(2**63 + 12345)
    assert percentiles(big, [1, 50, 99.8]) == pytest.approx(
        [v + 2**63 + 12345 for v in percentiles(base, [1, 50, 99.8])], rel=1e-15)
    # float64 steps are 2048 apart above 2**63: an image whose values are too
    coarse = base * np.uint64(4096)
    m = tiny_model(eval_mode=True)
    np.testing.assert_allclose(predict_image(coarse + np.uint64(2**63), m, device="cpu"),
                               predict_image(coarse, m, device="cpu"), atol=1e-4)


def test_clipping_is_recorded_only_when_off_and_travels_into_bioimageio_packages():
    """Model files keep their header (no 'clip' key by default: older versions read them); a
    package exported from one clips as we do, so bioimage.io tools give our probabilities."""
    assert "clip" not in Normalization().to_dict()
    off = Normalization("percentile", 1.0, 99.8, clip=False)
    assert Normalization.from_dict(off.to_dict()) == off
    assert off.clip_range[1] > 1e38 and Normalization().clip_range == CLIP
    pytest.importorskip("bioimageio.spec")
    import bioimageio.spec.model.v0_5 as v

    from napari_unet.core.exchange.bioimageio import _preprocessing

    ops = _preprocessing(Normalization(), v)
    assert [op.id for op in ops][-1] == "clip" and (ops[-1].kwargs.min, ops[-1].kwargs.max) == CLIP
    assert "clip" not in [op.id for op in _preprocessing(off, v)]

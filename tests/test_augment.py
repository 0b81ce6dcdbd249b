"""Elastic deformation and friends (paper 3.1): identity, ids preserved, alignment, seeds."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_unet.core.train.augment import (
    Augmentation,
    augment,
    elastic_deform,
    random_displacement,
    sampling_grid,
    warp,
)


def blobs(n=2, size=96, seed=0):
    """Images whose intensity is the object id (so image and labels can be compared)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((n, size, size), np.int64)
    for i in range(n):
        for k in range(1, 6):
            cy, cx = rng.integers(15, size - 15, 2)
            r = rng.integers(5, 10)
            yy, xx = np.ogrid[:size, :size]
            lab[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 10 * k + 3
    img = torch.from_numpy(lab[:, None].astype(np.float32) / 60.0)
    return img, torch.from_numpy(lab)


def test_zero_displacement_is_identity():
    img, lab = blobs()
    w = torch.rand(lab.shape)
    zero = torch.zeros(img.shape[0], 2, *img.shape[-2:])
    out, (lab2, w2) = augment(img, [lab, w], Augmentation.none(), displacement=zero)
    torch.testing.assert_close(out, img, atol=1e-4, rtol=0)
    assert torch.equal(lab2, lab)
    assert torch.equal(w2, w)
    # also through the sampling grid itself (no shortcut)
    out, (lab3,) = warp(img, [lab], sampling_grid(img.shape[-2:], zero))
    torch.testing.assert_close(out, img, atol=1e-4, rtol=0)
    assert torch.equal(lab3, lab)


def test_displacement_is_smooth_and_has_the_papers_scale():
    g = torch.Generator().manual_seed(1)
    d = random_displacement(64, (128, 128), grid_points=3, sigma=10.0, generator=g)
    assert d.shape == (64, 2, 128, 128)
    # at the coarse grid points the displacement is the drawn N(0, 10^2) value
    corners = torch.cat([d[:, :, 0, 0], d[:, :, -1, -1], d[:, :, 64, 64]]).flatten()
    assert 7.0 < float(corners.std()) < 13.0
    # it is bicubic interpolation of the coarse grid (computed separably)
    g2 = torch.Generator().manual_seed(1)
    coarse = torch.randn((64, 2, 3, 3), generator=g2) * 10.0
    ref = torch.nn.functional.interpolate(coarse, size=(128, 128), mode="bicubic", align_corners=True)
    torch.testing.assert_close(d, ref, atol=1e-4, rtol=0)
    # smooth: neighbouring pixels move almost together
    assert float((d[..., 1:] - d[..., :-1]).abs().max()) < 2.0


def test_label_ids_are_preserved():
    img, lab = blobs(4)
    g = torch.Generator().manual_seed(0)
    ids = set(torch.unique(lab).tolist())
    out_img, (out_lab,) = augment(img, [lab], Augmentation(sigma=15.0), g)
    assert set(torch.unique(out_lab).tolist()) <= ids
    assert out_lab.dtype == lab.dtype
    assert (out_lab != lab).any()  # it did deform
    big = torch.full((1, 32, 32), 2**40 + 7, dtype=torch.int64)
    big[0, :16] = 3
    _, (ob,) = augment(torch.zeros(1, 1, 32, 32), [big], Augmentation(), g)
    assert set(torch.unique(ob).tolist()) <= {3, 2**40 + 7}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_objects_move_with_their_pixels(seed):
    img, lab = blobs(2, seed=seed)
    g = torch.Generator().manual_seed(seed)
    out_img, (out_lab,) = augment(img, [lab], Augmentation(sigma=10.0, intensity=0.0), g)
    for i in range(img.shape[0]):
        li = out_lab[i].numpy()
        im = out_img[i, 0].numpy() * 60.0  # the image encodes the id
        for obj in np.unique(li):
            if obj == 0:
                continue
            sel = li == obj
            if sel.sum() < 20:
                continue
            c_lab = np.array(ndimage.center_of_mass(sel))
            img_obj = np.abs(im - obj) < 0.5
            c_img = np.array(ndimage.center_of_mass(img_obj & ndimage.binary_dilation(sel, iterations=3)))
            assert np.abs(c_lab - c_img).max() < 1.0


def test_labels_come_from_where_the_image_comes_from():
    """An image that is its own coordinates: bilinear resampling of a linear ramp returns the source
    position exactly, so each deformed label must be the original label at that (rounded) position."""
    _, lab = blobs(3, size=80)
    n, h, w = lab.shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                            torch.arange(w, dtype=torch.float32), indexing="ij")
    coords = torch.stack([yy, xx])[None].repeat(n, 1, 1, 1)
    g = torch.Generator().manual_seed(3)
    out, (ol,) = augment(coords, [lab], Augmentation(sigma=10.0, intensity=0.0), g)
    sy, sx = out[:, 0], out[:, 1]
    inside = (sy > 0.5) & (sy < h - 1.5) & (sx > 0.5) & (sx < w - 1.5)  # no mirroring involved
    # away from ties (half-pixel positions) nearest neighbour is unambiguous
    frac_y, frac_x = sy - sy.floor(), sx - sx.floor()
    clear = inside & ((frac_y - 0.5).abs() > 1e-3) & ((frac_x - 0.5).abs() > 1e-3)
    assert clear.float().mean() > 0.5
    iy, ix = sy.round().long().clamp(0, h - 1), sx.round().long().clamp(0, w - 1)
    nidx = torch.arange(n)[:, None, None].expand(n, h, w)
    expected = lab[nidx, iy, ix]
    assert torch.equal(ol[clear], expected[clear])
    assert not torch.equal(ol, lab)


def test_same_seed_same_output_and_inputs_unchanged():
    img, lab = blobs(3)
    img0, lab0 = img.clone(), lab.clone()
    a = augment(img, [lab], Augmentation(), torch.Generator().manual_seed(5))
    b = augment(img, [lab], Augmentation(), torch.Generator().manual_seed(5))
    c = augment(img, [lab], Augmentation(), torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1][0], b[1][0])
    assert not torch.equal(a[0], c[0])
    assert torch.equal(img, img0) and torch.equal(lab, lab0)


def test_flips_and_rotations_only_permute_pixels():
    img, lab = blobs(8)
    out, (ol,) = augment(img, [lab], Augmentation(elastic=False, intensity=0.0),
                         torch.Generator().manual_seed(0))
    for i in range(img.shape[0]):
        cands = []
        for k in range(4):
            r = torch.rot90(lab[i], k, (0, 1))
            cands += [r, r.flip(0)]
        assert any(torch.equal(ol[i], c) for c in cands)
        torch.testing.assert_close(out[i, 0], (ol[i].float() / 60.0), atol=1e-4, rtol=0)


def test_elastic_deform_shapes():
    img, lab = blobs(2, size=64)
    a, b = elastic_deform(img, lab, generator=torch.Generator().manual_seed(0))
    assert a.shape == img.shape and b.shape == lab.shape and b.dtype == lab.dtype

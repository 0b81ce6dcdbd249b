"""Synthetic colony of touching rod-shaped cells, phase-contrast-like rendering (tests, benchmarks).

A modality no shipped model was trained on: dark capsules (bacteria) packed side by side and end to
end in one cluster in the middle of the frame, a bright halo just outside the colony, a weak bright
line where two cells touch, a smooth illumination gradient, ~1 px blur, Poisson + Gaussian noise.

Units are pixels. Rods are capsules 20-40 px long (caps included) and 8-12 px wide. Touching cells
are rasterised by a Voronoi split of the union of capsules (each pixel goes to the capsule whose
surface it is deepest inside), so they share a border without overlapping and without a background
pixel between them. Everything is deterministic for a seed. numpy / scipy only.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["rod_colony", "rod_colony_stack"]

_PHOTONS = 800.0  # expected counts of the background


def _point_seg(p, a, b):
    """Distance from points ``p`` (..., 2) to segments ``a``-``b`` (..., 2), broadcast."""
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
    return np.linalg.norm(p - a - t[..., None] * ab, axis=-1)


def _cross(o, a, b):
    oa, ob = a - o, b - o
    return oa[..., 0] * ob[..., 1] - oa[..., 1] * ob[..., 0]


def _seg_dist(a0, a1, b0, b1):
    """Exact distance between 2D segments (broadcast): 0 if they cross, else at an endpoint."""
    d = np.minimum.reduce([_point_seg(a0, b0, b1), _point_seg(a1, b0, b1),
                           _point_seg(b0, a0, a1), _point_seg(b1, a0, a1)])
    hit = ((np.sign(_cross(a0, a1, b0)) != np.sign(_cross(a0, a1, b1)))
           & (np.sign(_cross(b0, b1, a0)) != np.sign(_cross(b0, b1, a1))))
    return np.where(hit, 0.0, d)


def _place(shape, n_cells, rng, packed):
    """Capsules as arrays: end points a, b (N, 2) in (y, x) and radii r (N,)."""
    h, w = shape
    margin = max(12.0, 0.1 * min(h, w))
    center = np.array([h / 2.0, w / 2.0])
    a, b, r, ang = [], [], [], []
    fails = 0
    while len(r) < n_cells and fails < 500:  # stop when the frame has no room left
        fails += 1
        ri = rng.uniform(4.0, 6.0)
        hl = rng.uniform(20.0, 40.0) / 2.0 - ri  # half length of the axis
        if packed and r:
            near = np.exp(-np.linalg.norm((np.array(a) + np.array(b)) / 2 - center, axis=1) / 20.0)
            k = rng.choice(len(r), p=near / near.sum())
            th = ang[k] + rng.normal(0.0, 0.3) if rng.random() < 0.8 else rng.uniform(0, np.pi)
            phi = ang[k] + (np.pi / 2 if rng.random() < 0.6 else 0.0) + rng.normal(0.0, 0.4)
            phi += np.pi * rng.integers(2)
            t = np.arange(0.0, 60.0, 0.5)[:, None]
            c = (np.array(a[k]) + np.array(b[k])) / 2 + t * np.array([np.sin(phi), np.cos(phi)])
        else:
            th = rng.uniform(0, np.pi)
            c = (center + (rng.random(2) - 0.5) * (np.array(shape) - 2 * margin))[None]
            if not r:
                c = center[None] + rng.normal(0, 2, (1, 2))
        u = np.array([np.sin(th), np.cos(th)]) * hl
        ca, cb = c - u, c + u  # (T, 2)
        inside = np.all((np.minimum(ca, cb) - ri >= margin)
                        & (np.maximum(ca, cb) + ri <= np.array(shape) - margin), axis=1)
        aa, bb, rr = np.array(a).reshape(-1, 2), np.array(b).reshape(-1, 2), np.array(r)
        span = np.linalg.norm(bb - aa, axis=1) / 2 + hl + rr + ri
        reach = _point_seg((aa + bb) / 2, c[0], c[-1]) <= span
        aa, bb, rr = aa[reach], bb[reach], rr[reach]  # only rods the search line can reach
        rsum = ri + rr
        d = _seg_dist(ca[:, None], cb[:, None], aa[None], bb[None])  # (T, N near)
        ok = inside & np.all(d >= (0.85 * rsum if packed else rsum + 4.0), axis=1)
        if not ok.any():
            continue
        i = int(np.argmax(ok))  # the closest free position along the search line
        if packed and r and not np.any(d[i] <= rsum):
            continue
        a.append(ca[i]), b.append(cb[i]), r.append(ri), ang.append(th)
        fails = 0
    return np.array(a).reshape(-1, 2), np.array(b).reshape(-1, 2), np.array(r)


def _rasterise(shape, a, b, r):
    """(Y, X) int32 instance ids 1..n, each pixel to the capsule it is deepest inside."""
    lab = np.zeros(shape, np.int32)
    best = np.full(shape, np.inf)
    for i in range(len(r)):
        lo = np.maximum(np.floor(np.minimum(a[i], b[i]) - r[i] - 1), 0).astype(int)
        hi = np.minimum(np.ceil(np.maximum(a[i], b[i]) + r[i] + 2), shape).astype(int)
        yy, xx = np.mgrid[lo[0]:hi[0], lo[1]:hi[1]]
        s = _point_seg(np.stack([yy, xx], -1).astype(float), a[i], b[i]) - r[i]
        sl = (slice(lo[0], hi[0]), slice(lo[1], hi[1]))
        take = (s <= 0) & (s < best[sl])
        best[sl][take], lab[sl][take] = s[take], i + 1
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):  # drop stray Voronoi fragments
        if sl is not None:
            comp, n = ndimage.label(lab[sl] == i, np.ones((3, 3)))
            if n > 1:
                keep = np.argmax(np.bincount(comp.ravel())[1:]) + 1
                lab[sl][(comp > 0) & (comp != keep)] = 0
    ids, inv = np.unique(lab, return_inverse=True)
    return (inv.reshape(shape) if ids[0] == 0 else inv.reshape(shape) + 1).astype(np.int32)


def _render(lab, rng, contact_gain):
    """Phase-contrast-like uint16 camera counts of the instance image ``lab``."""
    h, w = lab.shape
    fg = lab > 0
    img = np.ones((h, w))
    d_out = ndimage.distance_transform_edt(~fg)
    img += np.where(fg, 0.0, 0.5 * np.exp(-(d_out - 1.0) / 2.0))  # halo just outside the cells
    img[fg] = rng.uniform(0.32, 0.48, lab.max() + 1)[lab[fg]]
    # where cells touch (8-neighbours of another id): brighter than cells, darker than background
    big = np.where(fg, lab, np.iinfo(np.int32).max)
    up, down = ndimage.maximum_filter(lab, 3), ndimage.minimum_filter(big, 3)
    contact = fg & ((up != lab) | (down != lab))
    img[contact] += contact_gain
    img = ndimage.gaussian_filter(img, 1.0)
    y, x = np.mgrid[0:h, 0:w]
    gy, gx = rng.uniform(-0.25, 0.25, 2)
    y, x = y / h - 0.5, x / w - 0.5
    img *= 1.0 + gy * y + gx * x - 0.15 * (y**2 + x**2)  # smooth illumination, +-12% and vignetting
    counts = rng.poisson(img * _PHOTONS) + rng.normal(100.0, 6.0, (h, w))
    return np.clip(np.round(counts), 0, 65535).astype(np.uint16)


def rod_colony(shape=(192, 256), n_cells=18, seed=0, packed=True, *, contact=0.22):
    """One synthetic colony of rod-shaped cells.

    ``shape``: (Y, X) in pixels. ``n_cells``: the number of rods asked for (fewer come back if the
    frame has no room left inside its margins). ``packed``: True grows the colony cell by cell next
    to an earlier one (touching it, mostly aligned, side by side or end to end); False scatters
    separate rods (gap >= 4 px) over the middle of the frame. A background margin of max(12, 10% of
    the shorter side) px stays empty. ``contact``: brightness added on the 2 px line where two cells
    touch, in units of the background (1; cells ~0.4), before blur and noise: the difficulty knob
    (0 = touching cells separable only by their shape and slightly different grey levels).

    Returns ``(image, instances)``: image (Y, X) uint16 camera counts (read offset 100, background
    ~900, cells ~350-450, halo up to ~1250); instances (Y, X) int32, 0 = background, ids 1..n.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 32:
        raise ValueError(f"shape must be (Y, X) with both sides >= 32, got {shape}")
    rng = np.random.default_rng(seed)
    a, b, r = _place(shape, int(n_cells), rng, bool(packed))
    lab = _rasterise(shape, a, b, r)
    return _render(lab, rng, float(contact)), lab


def rod_colony_stack(n_frames, shape=(192, 256), n_cells=18, seed=0, packed=True, *,
                     contact=0.22):
    """``n_frames`` independent colonies: frame t is ``rod_colony(shape, n_cells, seed + t, packed,
    contact=contact)``.

    Returns ``(images, instances)``: (T, Y, X) uint16 and (T, Y, X) int32 (ids 1..n per frame).
    """
    frames = [rod_colony(shape, n_cells, seed + t, packed, contact=contact)
              for t in range(int(n_frames))]
    return np.stack([f[0] for f in frames]), np.stack([f[1] for f in frames])

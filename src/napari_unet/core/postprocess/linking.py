"""3D instances from plane-by-plane segmentation: objects linked across z.

A 2D model segments a (Z, Y, X) volume plane by plane, and its ids restart in every plane. A
nucleus cut by five planes is then five objects; 3D connected components of the foreground join
every pair of touching objects into one. :func:`stitch_planes` links the objects of neighbouring
planes by how much they overlap, one to one, so that two touching objects stay two objects. It
does not join fragments of one object *within* a plane: where the 2D model splits objects in-plane
(large nuclei, benchmarks/bench_volume.py), components can score higher.

Overlap is measured as the shared pixels over the *smaller* of the two cross-sections: towards the
poles of a nucleus its sections shrink quickly from plane to plane (more so the coarser the z
step), so their IoU falls while the small section still lies inside the large one. Among the pairs
that overlap by at least ``min_overlap``, a one-to-one assignment of the largest IoU sum is chosen
(``scipy.optimize.linear_sum_assignment``): a merged section in one plane links to one of the two
objects it covers, never to both.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def _check_volume(labels: np.ndarray) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise ValueError(f"a volume of labels must be (Z, Y, X), got shape {lab.shape}")
    if lab.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {lab.dtype}")
    if lab.size and lab.min() < 0:
        raise ValueError("labels must be >= 0 (0 = background)")
    return lab


def _plane_ids(lab: np.ndarray) -> tuple[np.ndarray, int]:
    """Ids unique across planes (1..n, plane after plane, 0 background) and n."""
    out = np.zeros(lab.shape, np.int64)
    offset = 0
    for z in range(lab.shape[0]):
        ids, inv = np.unique(lab[z], return_inverse=True)
        inv = inv.reshape(lab.shape[1:])
        fg = lab[z] > 0
        first = 1 if ids[0] == 0 else 0  # index of the first object id in ids
        out[z][fg] = inv[fg] - first + 1 + offset
        offset += int(ids.size - first)
    return out, offset


def _links(a: np.ndarray, b: np.ndarray, sizes: np.ndarray, min_overlap: float
           ) -> list[tuple[int, int]]:
    """One-to-one links between the objects of plane ``a`` and of plane ``b`` (global ids)."""
    both = (a > 0) & (b > 0)
    if not both.any():
        return []
    n = sizes.size
    pairs, inter = np.unique(a[both] * n + b[both], return_counts=True)
    pa, pb = np.divmod(pairs, n)
    sa, sb = sizes[pa], sizes[pb]
    contain = inter / np.minimum(sa, sb)
    keep = contain >= min_overlap
    pa, pb, iou = pa[keep], pb[keep], (inter / (sa + sb - inter))[keep]
    if not pa.size:
        return []
    ua, ia = np.unique(pa, return_inverse=True)
    ub, ib = np.unique(pb, return_inverse=True)
    score = np.zeros((ua.size, ub.size))
    score[ia, ib] = 1.0 + iou  # every candidate beats none; then the largest IoU sum
    rows, cols = linear_sum_assignment(score, maximize=True)
    return [(int(ua[r]), int(ub[c])) for r, c in zip(rows, cols, strict=True) if score[r, c] > 0]


def stitch_planes(labels: np.ndarray, min_overlap: float = 0.5) -> np.ndarray:
    """Link per-plane instance labels of a volume into 3D objects.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer ids per plane, shape (Z, Y, X), 0 = background; ids may restart in each plane or
        not: an id means an object of that plane only.
    min_overlap : float, default 0.5
        In (0, 1]: the share of the smaller of two cross-sections in neighbouring planes that must
        overlap the other for them to be one object.

    Returns
    -------
    numpy.ndarray
        (Z, Y, X) labels (uint16, or uint32 when needed) with one id per 3D object, 1..n in the
        order of their first plane. The input is not modified.

    Raises
    ------
    ValueError
        Labels that are not (Z, Y, X), not integers or negative, or ``min_overlap`` outside
        (0, 1].
    """
    if not 0.0 < float(min_overlap) <= 1.0:
        raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap}")
    lab = _check_volume(labels)
    ids, n = _plane_ids(lab)
    if n == 0:
        return np.zeros(lab.shape, np.uint16)
    sizes = np.bincount(ids.ravel(), minlength=n + 1)
    links = [e for z in range(lab.shape[0] - 1)
             for e in _links(ids[z], ids[z + 1], sizes, float(min_overlap))]
    i, j = (np.array(v, np.int64) for v in zip(*links, strict=True)) if links else \
        (np.zeros(0, np.int64),) * 2
    graph = coo_matrix((np.ones(i.size, np.int8), (i, j)), shape=(n + 1, n + 1))
    # components are numbered in the order of their smallest id: background (id 0, never linked)
    # stays 0 and objects come in the order of their first plane
    _, compact = connected_components(graph, directed=False)
    dtype = np.uint16 if compact.max() < np.iinfo(np.uint16).max else np.uint32
    return compact.astype(dtype)[ids]

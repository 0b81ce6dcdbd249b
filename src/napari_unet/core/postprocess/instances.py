"""Class probabilities -> semantic labels and separated instances.

The paper separates touching cells by training the network to predict the thin background line
between them (weight map, eq. 2); connected components of the object class then are the instances.
A background/boundary/interior model grows its interior components into the boundary pixels. An
optional watershed on the distance transform splits objects the network left touching.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_unet.core.modelfile.files import Postprocessing

SPLITS = ("components", "watershed", "seeded")
NEEDS_PROBABILITIES = ("watershed", "seeded")  # splits that read probabilities, not only classes


def semantic_labels(probabilities: np.ndarray) -> np.ndarray:
    """Semantic labels: the most probable class of every pixel.

    Parameters
    ----------
    probabilities : numpy.ndarray
        Float class probabilities (or scores) of shape (..., K, Y, X), K classes.

    Returns
    -------
    numpy.ndarray
        uint8 class ids of shape (..., Y, X) (the argmax over the class axis).

    Raises
    ------
    ValueError
        An array with fewer than 3 axes.
    """
    p = np.asarray(probabilities)
    if p.ndim < 3:
        raise ValueError(f"probabilities must have shape (..., classes, Y, X), got {p.shape}")
    return np.argmax(p, axis=-3).astype(np.uint8)


def _label_dtype(n: int) -> np.dtype:
    return np.dtype(np.uint16) if n < np.iinfo(np.uint16).max else np.dtype(np.uint32)


def instances_from_semantic(
    semantic: np.ndarray,
    postprocessing: Postprocessing | None = None,
    foreground_probability: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
    spacing: tuple[float, ...] | None = None,
) -> np.ndarray:
    """Instance labels of one semantic map of class ids: a plane or a volume.

    Objects are the 4-connected (6-connected in 3D) components of ``instance_classes``; they are
    grown into the pixels of ``grow_classes`` (nearest object wins); objects below ``min_size``
    pixels are dropped; with ``split="watershed"`` each component is additionally split at the
    saddles of its distance transform (or of ``foreground_probability`` when given).

    Parameters
    ----------
    semantic : numpy.ndarray
        Integer class ids of a plane (Y, X) or, from a 3D U-Net, a volume (Z, Y, X) (then
        connectivity, growing and splitting are in 3D).
    postprocessing : Postprocessing, optional
        Which classes are objects and which they grow into, ``min_size`` (pixels), ``split``
        (default: ``Postprocessing()``).
    foreground_probability : numpy.ndarray, optional
        Float probability of the object classes, the shape of ``semantic``: the watershed's
        relief for ``split="watershed"``.
    probabilities : numpy.ndarray, optional
        Float softmax (K, Y, X) (or (K, Z, Y, X)); needed by ``split="seeded"``
        (see :func:`seeded_instances`).
    spacing : tuple of float, optional
        The voxel size per axis (a volume's (z, y, x) scale): distances of the growing and the
        watershed split are physical, so a z step of anisotropic voxels counts as far as it is
        (None: isotropic).

    Returns
    -------
    numpy.ndarray
        uint16 labels (uint32 if needed) of the shape of ``semantic``, 0 = background, ids 1..n in
        raster order.

    Raises
    ------
    ValueError
        A map that is not 2D or 3D, ``split="seeded"`` without ``probabilities``, an unknown
        ``split``, or a ``spacing`` that is not one positive size per axis.
    """
    post = postprocessing or Postprocessing()
    if post.split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {post.split!r}")
    sem = np.asarray(semantic)
    if sem.ndim not in (2, 3):
        raise ValueError(f"instances_from_semantic expects a 2D (Y, X) or 3D (Z, Y, X) map, got "
                         f"shape {sem.shape}")
    spacing = _spacing(spacing, sem.ndim)
    if post.split == "seeded":
        if probabilities is None:
            raise ValueError("split='seeded' reads the class probabilities: pass probabilities")
        return _finish(seeded_instances(probabilities, post), post)
    fg = np.isin(sem, post.instance_classes)
    labels, n = ndi.label(fg)
    if post.split == "watershed" and n:
        labels = _watershed_split(fg, labels, foreground_probability, spacing)
    if post.grow_classes and labels.max() > 0:
        grow = np.isin(sem, post.grow_classes) & (labels == 0)
        if grow.any():
            _, idx = ndi.distance_transform_edt(labels == 0, sampling=spacing, return_indices=True)
            nearest = labels[tuple(idx)]
            # grow only into the grow-class region connected to the object
            reach = ndi.label(grow | (labels > 0))[0]
            same_region = reach == reach[tuple(idx)]
            labels = np.where(grow & same_region, nearest, labels)
    return _finish(labels, post)


def seeded_instances(probabilities: np.ndarray, post: Postprocessing) -> np.ndarray:
    """Objects seeded by confident interior, flooded over the foreground (``split="seeded"``).

    Seeds: 4-connected regions where the summed probability of ``post.instance_classes`` exceeds
    ``post.seed_threshold`` (or is the most probable class) with at least ``post.min_seed_size``
    pixels; foreground: background probability (class 0) < 0.5 (or not the most probable class).
    Each foreground pixel joins the seed it is reached from first when the interior probability is
    flooded from high to low (``skimage.segmentation.watershed`` of its negative), so two packed
    objects meet where the network is least sure they are interior: at the border it learnt. A
    foreground region that holds no seed is kept as one object.

    Parameters
    ----------
    probabilities : numpy.ndarray
        Float softmax of shape (K, Y, X).
    post : Postprocessing
        ``instance_classes``, ``seed_threshold`` (a probability) and ``min_seed_size`` (pixels).

    Returns
    -------
    numpy.ndarray
        int32 labels (Y, X), 0 = background, not yet filtered by ``min_size``.
    """
    from skimage.segmentation import watershed

    p = np.asarray(probabilities, np.float32)
    interior = p[list(post.instance_classes)].sum(axis=0)
    top = np.argmax(p, axis=0)
    seeds, n = ndi.label((interior > post.seed_threshold) | np.isin(top, post.instance_classes))
    if n and post.min_seed_size > 1:
        sizes = np.bincount(seeds.ravel())
        small = sizes < post.min_seed_size
        small[0] = False
        seeds[small[seeds]] = 0
    foreground = (p[0] < 0.5) | (top != 0)
    seeds = np.where(foreground, seeds, 0)
    # a foreground region without any seed is one object of its own (never dropped silently)
    regions, nr = ndi.label(foreground)
    if nr:
        seeded = np.zeros(nr + 1, bool)
        seeded[regions[seeds > 0]] = True
        orphan = ~seeded[regions] & (regions > 0)
        if orphan.any():
            extra, _ = ndi.label(orphan)
            seeds = np.where(orphan, extra + int(seeds.max()), seeds)
    if not seeds.any():
        return np.zeros(interior.shape, np.int32)
    return watershed(-interior, seeds, mask=foreground).astype(np.int32)


def _finish(labels: np.ndarray, post: Postprocessing) -> np.ndarray:
    """Drop objects below ``min_size`` and relabel 1..n in raster order (uint16, uint32 if needed)."""
    if post.min_size > 1 and labels.max() > 0:
        sizes = np.bincount(labels.ravel())
        small = sizes < post.min_size
        small[0] = False
        labels[small[labels]] = 0
    # relabel 1..n in raster order
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max()) + 1, dtype=_label_dtype(len(ids)))
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[labels]


def _spacing(spacing: Any, ndim: int) -> tuple[float, ...] | None:
    """None for isotropic pixels, else the voxel size per axis relative to the finest one."""
    if spacing is None:
        return None
    sp = tuple(float(v) for v in spacing)
    if len(sp) != ndim or not all(np.isfinite(v) and v > 0 for v in sp):
        raise ValueError(f"spacing must be {ndim} positive voxel sizes (one per axis of the "
                         f"{ndim}D labels), got {spacing!r}")
    if max(sp) / min(sp) < 1.01:
        return None
    return tuple(v / min(sp) for v in sp)


def _watershed_split(fg: np.ndarray, labels: np.ndarray, prob: np.ndarray | None,
                     spacing: tuple[float, ...] | None = None) -> np.ndarray:
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    dist = ndi.distance_transform_edt(fg, sampling=spacing)
    surface = dist if prob is None else dist * np.asarray(prob, np.float64)
    if spacing is None:
        smooth = ndi.gaussian_filter(surface, 1.0)
        peaks = peak_local_max(smooth, min_distance=3, labels=labels, exclude_border=False)
    else:  # the same smoothing and peak distance in physical units: fewer voxels along deep axes
        smooth = ndi.gaussian_filter(surface, [1.0 / s for s in spacing])
        footprint = np.ones([2 * int(round(3 / s)) + 1 for s in spacing], bool)
        peaks = peak_local_max(smooth, min_distance=1, footprint=footprint, labels=labels,
                               exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # every component keeps at least one marker
    missing = np.setdiff1d(np.unique(labels[fg]), np.unique(labels[markers > 0]))
    if len(missing):
        centres = ndi.maximum_position(smooth, labels, missing)
        for k, c in enumerate(centres, start=len(peaks) + 1):
            markers[c] = k
    return watershed(-smooth, markers, mask=fg)


def instances(
    probabilities: np.ndarray, postprocessing: Postprocessing | None = None
) -> np.ndarray:
    """Instance labels of class probabilities, plane by plane.

    Parameters
    ----------
    probabilities : numpy.ndarray
        Float softmax of shape (K, Y, X) or (..., K, Y, X).
    postprocessing : Postprocessing, optional
        How objects are formed (default: ``Postprocessing()``), see
        :func:`instances_from_semantic`.

    Returns
    -------
    numpy.ndarray
        uint16 (uint32 if needed) labels of shape (..., Y, X), 0 = background, ids restarting at 1
        in each plane.
    """
    post = postprocessing or Postprocessing()
    p = np.asarray(probabilities)
    sem = semantic_labels(p)
    lead = sem.shape[:-2]
    planes = [instances_from_semantic(sem[i], post, _fg_prob(p[i], post), p[i]) for i in np.ndindex(*lead)] \
        if lead else [instances_from_semantic(sem, post, _fg_prob(p, post), p)]
    dtype = max((pl.dtype for pl in planes), key=lambda d: d.itemsize)
    out = np.zeros(sem.shape, dtype)
    for i, pl in zip(np.ndindex(*lead) if lead else [()], planes, strict=True):
        out[i] = pl
    return out


def _fg_prob(p: np.ndarray, post: Postprocessing) -> np.ndarray | None:
    if post.split != "watershed":
        return None
    return p[list(post.instance_classes)].sum(axis=0)


def postprocess(probabilities: np.ndarray, output: str, postprocessing: Postprocessing | None = None) -> Any:
    """Turn probabilities into the requested output.

    Parameters
    ----------
    probabilities : numpy.ndarray
        Float softmax of shape (..., K, Y, X).
    output : {"probabilities", "semantic", "instances"}
        What to return.
    postprocessing : Postprocessing, optional
        For "instances": how objects are formed (default: ``Postprocessing()``).

    Returns
    -------
    numpy.ndarray
        "probabilities": the input as it is; "semantic": uint8 class ids (..., Y, X);
        "instances": uint16/uint32 labels (..., Y, X), 0 = background.

    Raises
    ------
    ValueError
        An unknown ``output``.
    """
    if output == "probabilities":
        return probabilities
    if output == "semantic":
        return semantic_labels(probabilities)
    if output == "instances":
        return instances(probabilities, postprocessing)
    raise ValueError(f"output must be 'instances', 'semantic' or 'probabilities', got {output!r}")

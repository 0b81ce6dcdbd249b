"""Random-forest pixel classifier: the baseline ilastik / APOC / convpaint users get.

The ilastik-style "pixel classification + watershed" pipeline with 3 classes: background 0,
boundary 1 (object pixels with known background or another object id in their 8-neighbourhood, 1 px
wide), interior 2:

1. per-pixel features: ``skimage.feature.multiscale_basic_features`` (intensity, edges, texture at
   sigma 1..16, 20 features) of the image normalised by its 1st / 99.8th percentiles;
2. a ``RandomForestClassifier`` fitted on a class-balanced sample of the annotated pixels;
3. instances: seeds = 4-connected components of p_interior > 0.5 (>= 10 px), watershed of
   -p_interior from the seeds inside p_background < 0.5, objects < 10 px removed, ids 1..n.

Three classes because with only background / object + connected components, packed cells that touch
merge into one component: the boundary class is what separates them (the U-Net's "boundary" mode).

Targets come from :func:`napari_unet.core.train.annotations.labels_to_target` (mode "boundary"): the
targets the U-Net fine-tune trains on, so both read an annotation the same way (painted objects are
known even outside a mask; a painted object is whole: its edge is boundary, also next to unknown).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from skimage.feature import multiscale_basic_features
from skimage.measure import label as cc_label
from skimage.segmentation import watershed
from sklearn.ensemble import RandomForestClassifier

from napari_unet.core.train.annotations import labels_to_target

MIN_SIZE = 10  # px, for seeds and for final objects


@dataclass(frozen=True)
class Forest:
    """A fitted pixel classifier. ``fit_seconds``: wall time of :func:`fit_forest` (targets,
    features, sampling and fit). ``samples_per_class``: pixels it was fitted on for background,
    boundary, interior."""

    classifier: RandomForestClassifier
    fit_seconds: float
    samples_per_class: tuple[int, int, int]


def features(image2d: np.ndarray) -> np.ndarray:
    """(Y, X) image of any dtype -> (Y, X, F) float32 features (F = 20)."""
    img = np.asarray(image2d, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"image must be 2D (Y, X), got shape {img.shape}")
    lo, hi = np.percentile(img, [1.0, 99.8])
    img = (img - lo) / max(float(hi - lo), 1e-6)
    f = multiscale_basic_features(img, intensity=True, edges=True, texture=True,
                                  sigma_min=1, sigma_max=16, channel_axis=None)
    return np.ascontiguousarray(f, dtype=np.float32)


def fit_forest(images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
               masks: Sequence[np.ndarray | None] | None = None, *, n_trees: int = 100,
               max_samples_per_class: int = 20000, seed: int = 0,
               background_label: int | None = None) -> Forest:
    """Fit the 3-class forest on lists of 2D images (Y, X) and napari-style labels (Y, X) int ids.

    ``labels``: 0 = unpainted. Without masks and ``background_label`` the whole frame is complete
    (0 = background); with ``masks`` (one per image, nonzero = complete region, or None) 0 inside
    the mask is background; with ``background_label`` pixels of that value are background and
    other 0 pixels are unknown. At most ``max_samples_per_class`` known pixels per class are drawn
    (seeded), pooled over all images. Raises ValueError when the sample holds a single class.
    """
    t0 = time.perf_counter()
    if len(images) != len(labels) or not images:
        raise ValueError(
            f"need as many labels as images (>= 1), got {len(images)} and {len(labels)}"
        )
    masks = [None] * len(images) if masks is None else list(masks)
    targets = [labels_to_target(lab, m, background_label, mode="boundary").target.ravel()
               for lab, m in zip(labels, masks, strict=True)]
    rng = np.random.default_rng(seed)
    offsets = np.cumsum([0] + [t.size for t in targets])
    flat = np.concatenate(targets)
    chosen = []
    for c in range(3):
        idx = np.flatnonzero(flat == c)
        if idx.size > max_samples_per_class:
            idx = rng.choice(idx, max_samples_per_class, replace=False)
        chosen.append(np.sort(idx))
    counts = tuple(int(c.size) for c in chosen)
    pick = np.sort(np.concatenate(chosen))
    x, y = [], []
    for i, img in enumerate(images):
        sel = pick[(pick >= offsets[i]) & (pick < offsets[i + 1])] - offsets[i]
        if sel.size:
            f = features(img)
            x.append(f.reshape(-1, f.shape[-1])[sel])
            y.append(targets[i][sel])
    x, y = np.concatenate(x), np.concatenate(y)
    if np.unique(y).size < 2:
        raise ValueError(f"the annotations hold only one class ({np.unique(y)}); need at least two")
    clf = RandomForestClassifier(n_estimators=n_trees, n_jobs=2, random_state=seed)
    clf.fit(x, y)
    return Forest(clf, time.perf_counter() - t0, counts)


def predict_probabilities(forest: Forest, image2d: np.ndarray) -> np.ndarray:
    """(Y, X) image -> (3, Y, X) float32 probabilities of background, boundary, interior (a class
    absent from the training sample gets 0)."""
    f = features(image2d)
    h, w, n = f.shape
    p = forest.classifier.predict_proba(f.reshape(-1, n))
    out = np.zeros((3, h * w), np.float32)
    out[np.asarray(forest.classifier.classes_, dtype=int)] = p.T
    return out.reshape(3, h, w)


def _drop_small(lab: np.ndarray, min_size: int) -> np.ndarray:
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return np.where(keep[lab], lab, 0)


def probabilities_to_instances(prob: np.ndarray) -> np.ndarray:
    """(3, Y, X) probabilities -> (Y, X) int32 instances 1..n (seeded watershed, see module doc)."""
    p_bg, p_int = prob[0], prob[2]
    seeds = _drop_small(cc_label(p_int > 0.5, connectivity=1), MIN_SIZE)
    lab = watershed(-p_int, markers=seeds, mask=p_bg < 0.5)
    lab = _drop_small(lab, MIN_SIZE)
    ids, inv = np.unique(lab, return_inverse=True)
    inv = inv.reshape(lab.shape)
    return (inv if ids[0] == 0 else inv + 1).astype(np.int32)


def predict_instances(forest: Forest, image2d: np.ndarray) -> np.ndarray:
    """(Y, X) image -> (Y, X) int32 instances, 0 = background, ids 1..n."""
    return probabilities_to_instances(predict_probabilities(forest, image2d))

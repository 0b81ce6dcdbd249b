"""From what a user painted to a training target.

A labels image is what a napari Labels layer holds: every object painted with its own id, 0 = not
painted. Unpainted is *unknown*, not background, unless the user says the annotation is complete there:

- a fully annotated image or region: ``mask`` (nonzero where the annotation is complete, e.g. a
  rasterised Shapes layer or a Labels layer), or no mask and no ``background_label``: the whole frame.
  Inside the mask 0 means background.
- scribbles: background painted with ``background_label``; every other unpainted pixel is unknown.

Both can be combined (painted background outside a complete region). Painted objects are known
wherever they are.

Target conventions (other code depends on them):

- mode "binary" (the paper): 0 background, 1 object. Object pixels that touch a pixel of a
  *different* object id (8-neighbourhood) become background: the separating line between touching
  objects (paper Fig. 3), which the border weight map (:mod:`.weights`) makes count.
- mode "boundary": 0 background, 1 boundary (object pixels with a background pixel, a pixel of
  another object or an unpainted pixel in their 8-neighbourhood: a painted object is whole, its edge
  is its border), 2 interior.
- unknown pixels: -1 (the loss's ignore_index).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MODES = ("binary", "boundary")
CLASS_NAMES = {"binary": ("background", "object"), "boundary": ("background", "boundary", "interior")}
IGNORE = -1


class AnnotationError(ValueError):
    """The painted data cannot be used for training (a sentence a user understands).

    ``pair``: which (image, labels) pair of the ``pairs`` given the message is about (0-based; None:
    all of them), ``plane``: which plane of a stack. ``str()`` names the pair by its name when the
    caller gave ``names`` (the layer or file names of its inputs, one per pair: see :meth:`named`),
    else by its position ("image 2 of 3"; a single image is not numbered).
    """

    def __init__(self, message: str, *, pair: int | None = None, pairs: int = 1,
                 plane: int | None = None, names: Sequence[str] | None = None) -> None:
        self.message = message
        self.pair, self.pairs, self.plane = pair, pairs, plane
        self.names = tuple(str(n) for n in names) if names else None
        super().__init__(self._text())

    def where(self) -> str:
        """The pair (and plane) the message is about, in words; "" when it is about all."""
        if self.pair is None:
            return ""
        if self.names is not None and self.pair < len(self.names):
            who = self.names[self.pair]
        elif self.pairs > 1:
            who = f"image {self.pair + 1} of {self.pairs}"
        else:
            who = ""
        return ", ".join(w for w in (who, "" if self.plane is None else f"plane {self.plane}") if w)

    def _text(self) -> str:
        where = self.where()
        return f"{where}: {self.message}" if where else self.message

    def at(self, pair: int, pairs: int, plane: int | None = None) -> AnnotationError:
        """The same error, said to be about pair ``pair`` of ``pairs`` (and ``plane``)."""
        return type(self)(self.message, pair=pair, pairs=pairs,
                          plane=self.plane if plane is None else plane, names=self.names)

    def named(self, names: Sequence[str] | None) -> AnnotationError:
        """The same error, naming its pair by ``names`` (one per pair: e.g. a layer's or a file's
        name, as the user knows it) instead of its position."""
        if not names:
            return self
        return type(self)(self.message, pair=self.pair, pairs=self.pairs, plane=self.plane,
                          names=names)


class NothingAnnotated(AnnotationError):
    """Nothing is known in a plane: no painted pixel, and no region where the annotation is
    complete (an unpainted plane of a stack is skipped, not an error)."""


@dataclass(frozen=True)
class Target:
    """A training target for one 2D plane.

    ``target``: (H, W) int8 class ids, -1 unknown. ``objects``: (H, W) int32, the objects after the
    separating lines were cut (0 elsewhere), for the border weight map. ``known``: (H, W) bool.
    """

    target: np.ndarray
    objects: np.ndarray
    known: np.ndarray

    def classes_present(self) -> set[int]:
        return {int(c) for c in np.unique(self.target) if c >= 0}


def num_classes_for(mode: str) -> int:
    check_mode(mode)
    return len(CLASS_NAMES[mode])


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def check_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """Integer (or bool) labels as an array; float or other dtypes raise AnnotationError."""
    lab = np.asarray(labels)
    if lab.dtype == bool:
        return lab.astype(np.uint8)
    if lab.dtype.kind not in "iu":
        raise AnnotationError(
            f"{name} must be an integer label image (each object painted with its own id, 0 = not "
            f"painted), got dtype {lab.dtype}; a probability or float image is not a labels image"
        )
    return lab


def touches_other(lab: np.ndarray) -> np.ndarray:
    """Object pixels with a pixel of a different nonzero id in their 8-neighbourhood."""
    h, w = lab.shape
    out = np.zeros((h, w), bool)
    p = np.pad(lab, 1, mode="constant")
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            nb = p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
            out |= (nb != 0) & (nb != lab)
    return out & (lab != 0)


def _touches_known_other(lab: np.ndarray, bg_known: np.ndarray) -> np.ndarray:
    """Object pixels with known background or another object in their 8-neighbourhood."""
    h, w = lab.shape
    out = np.zeros((h, w), bool)
    p = np.pad(lab, 1, mode="constant")
    pb = np.pad(bg_known, 1, mode="constant")
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            nb = p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
            nbb = pb[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
            out |= ((nb != 0) & (nb != lab)) | nbb
    return out & (lab != 0)


def labels_to_target(labels: np.ndarray, mask: np.ndarray | None = None,
                     background_label: int | None = None, mode: str = "binary") -> Target:
    """Turn one painted 2D labels image into a training target (see the module docstring).

    ``labels``: (H, W) integer ids. ``mask``: (H, W), nonzero where the annotation is complete (0 there
    is background); None with ``background_label=None`` means the whole frame is complete.
    ``background_label``: the id painted on background (scribbles); pixels of that value are
    background, not an object. The inputs are not modified.

    Raises AnnotationError when nothing is known (no painted pixel and no mask).
    """
    check_mode(mode)
    lab = check_labels(labels)
    if lab.ndim != 2:
        raise AnnotationError(f"labels must be a 2D (Y, X) image here, got shape {lab.shape}")
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != lab.shape:
            raise AnnotationError(f"mask shape {m.shape} does not match labels shape {lab.shape}")
        complete = m != 0
    elif background_label is None:
        complete = np.ones(lab.shape, bool)
    else:
        complete = np.zeros(lab.shape, bool)

    if background_label is not None:
        bg_painted = lab == background_label
        objects_in = np.where(bg_painted, 0, lab)
    else:
        bg_painted = np.zeros(lab.shape, bool)
        objects_in = lab
    if objects_in.dtype.kind == "i" and objects_in.size and int(objects_in.min()) < 0:
        raise AnnotationError(
            f"labels have negative values (minimum {int(objects_in.min())}): paint each object with its "
            f"own positive id and leave pixels you did not annotate 0; -1 does not mean 'unknown' here "
            f"(give a mask of the annotated region, or paint background with a background label)")
    painted = objects_in != 0
    if mask is None and background_label is None and not painted.any():
        raise NothingAnnotated(
            "the labels have no painted pixel: paint the objects on the image, each with its own "
            "id (every pixel left unpainted is background)"
        )
    bg_known = bg_painted | (complete & ~painted)
    known = bg_known | painted
    if not known.any():
        if mask is None:  # scribbles over the whole frame: nothing painted at all
            raise NothingAnnotated(
                f"the labels have no painted pixel: paint some objects (each with its own id) and "
                f"some background with the background label {background_label}")
        raise NothingAnnotated(
            "nothing is annotated: the labels have no painted pixel and the region where the "
            "annotation is complete is empty: paint objects, or draw the region over the image")

    target = np.full(lab.shape, IGNORE, np.int8)
    target[bg_known] = 0
    if mode == "binary":
        line = touches_other(objects_in)  # separating lines between touching objects
        target[painted] = 1
        target[line] = 0
        objects = np.where(line, 0, objects_in)
    else:
        # a painted object is a whole object: its edge is its boundary wherever it lies, next to
        # background, another object or unpainted (unknown) pixels; with objects painted one by
        # one in a sea of unknown (live painting), taking edges next to unknown for interior
        # taught the network that objects have no border, and neighbours merged
        edge = _touches_known_other(objects_in, bg_known | ~known)
        target[painted] = 2
        target[edge] = 1
        objects = objects_in
    return Target(target=target, objects=_relabel(objects), known=known)


def _relabel(objects: np.ndarray) -> np.ndarray:
    ids, inv = np.unique(objects, return_inverse=True)
    inv = inv.reshape(objects.shape).astype(np.int32)
    if ids[0] != 0:
        inv += 1
    return inv


def split_planes(image: np.ndarray, labels: np.ndarray, mask: np.ndarray | None,
                 channel_axis: int | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None, int | None]]:
    """Check one (image, labels[, mask]) pair and cut it into 2D planes.

    ``image``: (Y, X), (C, Y, X) with ``channel_axis`` set, or a stack (Z, Y, X) with labels (Z, Y, X)
    (planes of a stack). Returns ``[(image_plane (C, Y, X), labels_plane, mask_plane, z)]`` as views
    (not copies; nothing is written to them). Raises AnnotationError for float labels and mismatched
    shapes.
    """
    img = np.asarray(image)
    lab = check_labels(labels)
    if img.dtype.kind not in "biuf":
        raise AnnotationError(f"image must be numeric, got dtype {img.dtype}")
    if channel_axis is not None:
        if img.ndim < 3:
            raise AnnotationError(f"channel_axis={channel_axis} given for a 2D image {img.shape}")
        img = np.moveaxis(img, channel_axis, -3)
        spatial = img.shape[:-3] + img.shape[-2:]
    else:
        spatial = img.shape
    if spatial != lab.shape and channel_axis is None and img.ndim == lab.ndim + 1 and (
            img.shape[:-1] == lab.shape or img.shape[1:] == lab.shape):
        ax = img.ndim - 1 if img.shape[:-1] == lab.shape else 0
        raise AnnotationError(
            f"the image {img.shape} has one axis more than the labels {lab.shape}: axis {ax} "
            f"({img.shape[ax]} values) looks like colour channels. A grey-value model reads 1 channel: "
            f"convert the image to grey (or pick one channel) first; to train a {img.shape[ax]}-channel "
            f"model say which axis holds the channels (channel_axis={ax if ax == 0 else -1})")
    if spatial != lab.shape:
        raise AnnotationError(
            f"image and labels differ in shape: image {img.shape}"
            + (f" (channel axis {channel_axis})" if channel_axis is not None else "")
            + f", labels {lab.shape}; labels must cover the image pixel for pixel"
        )
    m = None if mask is None else np.asarray(mask)
    if m is not None and m.shape != lab.shape:
        raise AnnotationError(f"mask shape {m.shape} does not match labels shape {lab.shape}")
    if lab.ndim == 2:
        chw = img if channel_axis is not None else img[None]
        return [(chw, lab, m, None)]
    if lab.ndim == 3:
        out = []
        for z in range(lab.shape[0]):
            chw = img[z] if channel_axis is not None else img[z][None]
            out.append((chw, lab[z], None if m is None else m[z], z))
        return out
    raise AnnotationError(f"labels must be 2D (Y, X) or a stack (Z, Y, X), got shape {lab.shape}")

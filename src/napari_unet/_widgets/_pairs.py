"""The Fine-tune widget's (image, labels, region) layer names -> plain training arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Shapes

from napari_unet._widgets._common import level0
from napari_unet._widgets._corrections import CORRECTED
from napari_unet._widgets._train_jobs import TrainingPair

WHOLE = "(whole frame)"


def pair_names(names: list[tuple[str, str, str]]) -> list[str]:
    """How messages name each (image, labels, region) pair: by its layers' names ("'cells
    labels' on 'cells'"), for the core's errors (``AnnotationError.named``, ``_runner.explain``)."""
    return [f"'{lab}' on '{img}'" for img, lab, _reg in names]


def collect_pairs(viewer: Any, names: list[tuple[str, str, str]], corrections: Any
                  ) -> list[TrainingPair]:
    """The training pairs as plain arrays (labels and masks copied; a region "(corrected
    objects)" keeps the corrected objects of the labels only, see ``_corrections``). Raises
    ValueError with a sentence for the user that names the layers (nothing painted on the whole
    frame, an empty region, shapes that differ)."""
    if not names:
        raise ValueError("choose an image layer and a labels layer painted on it")
    pairs = []
    for img_name, lab_name, reg_name in names:
        for n in (img_name, lab_name) + (() if reg_name in (WHOLE, CORRECTED) else (reg_name,)):
            if n not in viewer.layers:
                raise ValueError(f"the layer '{n}' is no longer in the viewer")
        img = viewer.layers[img_name]
        lab = viewer.layers[lab_name]
        labels = np.array(level0(lab.data))  # a copy: painting goes on during training
        image = level0(img.data)
        rgb = bool(getattr(img, "rgb", False))
        spatial = tuple(image.shape[:-1] if rgb else image.shape)
        if spatial != labels.shape:
            raise ValueError(_shape_mismatch(img_name, spatial, lab_name, labels.shape))
        mask = None
        if reg_name == WHOLE and not labels.any():
            raise ValueError(f"nothing is painted in '{lab_name}': paint the objects of "
                             f"'{img_name}' in it first, each with its own id")
        if reg_name == CORRECTED:
            labels, mask = corrections.masked_labels(lab)
        elif reg_name != WHOLE:
            region = viewer.layers[reg_name]
            if isinstance(region, Shapes):
                if len(region.data) == 0:
                    raise ValueError(f"the Shapes layer '{reg_name}' has no shape: draw the region "
                                     f"where '{lab_name}' is complete, or choose {WHOLE}")
                mask = region.to_masks(mask_shape=labels.shape[-2:]).any(0)
                if labels.ndim == 3:
                    mask = np.broadcast_to(mask, labels.shape).copy()
            else:
                mask = np.array(level0(region.data)) != 0
                if mask.shape != labels.shape:
                    raise ValueError(f"the region '{reg_name}' {mask.shape} and the labels "
                                     f"'{lab_name}' {labels.shape} differ in shape")
            if not mask.any() and not labels.any():
                raise ValueError(f"the region '{reg_name}' covers none of '{img_name}' and nothing "
                                 f"is painted in '{lab_name}': draw the region over the image where "
                                 f"'{lab_name}' is complete, or choose {WHOLE}")
        pairs.append(TrainingPair(img_name, image, labels, mask, rgb))
    return pairs


def _shape_mismatch(img_name: str, spatial: tuple[int, ...], lab_name: str, lab_shape: tuple[int, ...]) -> str:
    """Why an image and a labels layer cannot be trained on together, and what to do."""
    if len(spatial) == len(lab_shape) + 1 and spatial[1:] == lab_shape:
        return (f"'{img_name}' is a stack of {spatial[0]} planes {spatial} but '{lab_name}' is one 2D "
                f"plane {lab_shape}: paint on a labels layer made for the stack (select '{img_name}', "
                f"then New labels layer), or train on a single 2D image")
    if len(lab_shape) == len(spatial) + 1 and lab_shape[1:] == spatial:
        return (f"'{lab_name}' is a stack of {lab_shape[0]} planes {lab_shape} but '{img_name}' is one "
                f"2D image {spatial}: choose the image the labels were painted on")
    return (f"'{img_name}' {spatial} and '{lab_name}' {lab_shape} differ in shape: the labels must be "
            f"painted on that image (a labels layer made for it has its shape)")

"""Spatial metadata of layers: what a source layer's scale, translate, units, axis labels and affine
become on its result layer (the Segment widget's results carry their source's)."""

from __future__ import annotations

from typing import Any

SPATIAL = ("scale", "translate", "units", "axis_labels")


def spatial_metadata(layer: Any) -> dict[str, Any]:
    """The spatial metadata of a layer, per (non-RGB) axis, plus its affine pieces."""
    meta: dict[str, Any] = {}
    for key in SPATIAL:
        value = getattr(layer, key, None)
        if value is not None:
            meta[key] = list(value)
    for key in ("rotate", "shear"):
        value = getattr(layer, key, None)
        if value is not None:
            meta[key] = value
    affine = getattr(layer, "affine", None)
    if affine is not None:
        meta["affine"] = affine.affine_matrix
    return meta


_FILL = {"scale": 1.0, "translate": 0.0, "units": "pixel", "axis_labels": "class"}


def output_metadata(meta: dict[str, Any], axes: str, probabilities: bool) -> dict[str, Any]:
    """Spatial keyword arguments for the result layer of a source with ``meta`` and ``axes``.

    Axes the output lacks (a channel axis "C") are dropped; probabilities get a class axis before
    (Y, X) with unit scale. Rotation, shear and affine are copied only when the axes are unchanged.
    """
    keep = [i for i, a in enumerate(axes) if a != "C"]
    same = len(keep) == len(axes) and not probabilities
    out: dict[str, Any] = {}
    for key in SPATIAL:
        if key not in meta or len(meta[key]) != len(axes):
            continue
        values = [meta[key][i] for i in keep]
        if probabilities:
            fill = _FILL[key]
            if key == "axis_labels":
                fill = "class" if "class" not in values else "classes"
            values = values[:-2] + [fill] + values[-2:]
        out[key] = tuple(values)
    if same:
        for key in ("rotate", "shear", "affine"):
            if key in meta:
                out[key] = meta[key]
    return out

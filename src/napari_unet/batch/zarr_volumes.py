"""A 3D U-Net's volumes into a zarr array, volume by volume (a (T, Z, Y, X) stack: one time point
at a time), written atomically; equal to in-memory ``segment``.

Semantic and probability outputs stream from the 3D tiles straight into zarr (memory: the tile and
the normalisation sample); 3D instances need the whole volume for the 3D post-processing, so one
volume's labels are held in memory at a time, never the whole stack. This process only: a volume
is one task, and the 2D block engine's cluster path is for planes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.batch.images import commit_output, output_lock, partial_path, read_image
from napari_unet.core.events import TileDone


def volumes_to_zarr(
    image: Any,
    model: Any,
    output: str | os.PathLike,
    *,
    output_type: str = "instances",
    axes: str | None = None,
    tile_size: int | tuple[int, ...] | None = None,
    padding: str = "mirror",
    device: str = "auto",
    spacing: tuple[float, float, float] | None = None,
    chunk: int = 1024,
) -> Generator[TileDone, None, Path]:
    """Segment every (Z, Y, X) volume of ``image`` (array or file path) with the 3D ``model``
    into the zarr array ``output``: built in a hidden ``.partial`` folder next to it and renamed
    when complete. Instances are uint32 (ids 1..n per volume). Yields TileDone; returns the path."""
    import zarr

    from napari_unet.core.modelfile.files import make_parent
    from napari_unet.core.predict.checks import as_image
    from napari_unet.core.predict.predict3d import volume_axes
    from napari_unet.core.segment import OUTPUT_TYPES, segment

    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    arr = as_image(read_image(image) if isinstance(image, (str, os.PathLike)) else image)
    layout, z = volume_axes(tuple(arr.shape), model.config, axes)
    rest = tuple(arr.shape[a] for a in layout.plane_axes if a != z)
    d, h, w = arr.shape[z], arr.shape[layout.y], arr.shape[layout.x]
    k = model.config.num_classes
    shape = rest + ((d, k, h, w) if output_type == "probabilities" else (d, h, w))
    dtype = {"probabilities": np.float32, "semantic": np.uint8, "instances": np.uint32}[output_type]
    side = (min(h, int(chunk)), min(w, int(chunk)))
    chunks = (1,) * len(rest) + ((d, k) if output_type == "probabilities" else (d,)) + side
    dest = Path(output)
    make_parent(dest)
    with output_lock(dest):
        partial = partial_path(dest)
        if partial.exists():
            shutil.rmtree(partial)
        try:
            out = zarr.open_array(store=str(partial), mode="w", shape=shape, chunks=chunks,
                                  dtype=dtype, fill_value=0)
            if output_type != "instances" or not rest:  # streamed tile by tile (one volume: whole)
                yield from segment(arr, model, output=output_type, axes=axes, tile_size=tile_size,
                                   padding=padding, device=device, out=out, spacing=spacing)
            else:  # one volume at a time: its semantic map and labels, never the stack's
                vaxes = _volume_axes(layout.axes, z)
                rest_axes = [a for a in layout.plane_axes if a != z]
                for ridx in np.ndindex(*rest):
                    key: list[Any] = [slice(None)] * arr.ndim
                    for a, i in zip(rest_axes, ridx, strict=True):
                        key[a] = i
                    out[ridx] = yield from segment(arr[tuple(key)], model, output="instances",
                                                   axes=vaxes, tile_size=tile_size, padding=padding,
                                                   device=device, spacing=spacing)
            commit_output(partial, dest)
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
    return dest


def _volume_axes(axes: str, z: int) -> str:
    """The axes of one volume of a stack laid out as ``axes``: Z, Y, X (and C) in source order."""
    return "".join("Z" if i == z else a for i, a in enumerate(axes) if i == z or a in "YXC")

"""The checks at the public entry points: what an image and a tile size may be, with messages that
name the argument and say what to do. Each entry point (``predict``, ``segment``, the batch jobs)
runs them once; inside, the data is trusted."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from napari_unet.core.network.unet import UNetConfig


def as_image(image: Any, name: str = "image") -> Any:
    """``image`` as an array the tiler can read, or a TypeError/ValueError naming ``name``.

    numpy, memmap, dask and zarr arrays pass through unchanged (never copied); a torch tensor
    becomes a numpy array (a CPU copy where it lives on a GPU); a nested list or tuple of numbers
    becomes a numpy array. Refused: other objects, complex/object/string dtypes, and shapes with
    an axis of length 0 (nothing to segment).
    """
    if type(image).__module__.split(".")[0] == "torch":
        import torch

        if isinstance(image, torch.Tensor):
            image = image.detach().to("cpu").numpy()
    if isinstance(image, (list, tuple)):
        try:
            image = np.asarray(image)
        except ValueError:
            raise TypeError(f"{name} is a list of rows of different lengths: give a rectangular "
                            f"array (e.g. numpy.asarray of an image)") from None
        if image.dtype == object:
            raise TypeError(f"{name} is a list that is not an array of numbers: give a numpy array")
    if not all(hasattr(image, a) for a in ("shape", "dtype", "__getitem__")):
        raise TypeError(f"{name} must be an array (numpy, dask, zarr or a torch tensor), "
                        f"got {type(image).__name__}")
    dt = np.dtype(image.dtype)
    if dt.kind not in "biuf":
        raise ValueError(f"{name} must have an integer, boolean or float dtype, got {dt}: convert it "
                         f"first (e.g. the magnitude of a complex image with numpy.abs)")
    shape = tuple(int(s) for s in image.shape)
    if 0 in shape:
        raise ValueError(f"{name} has shape {shape}: an axis of length 0 holds no pixels to segment")
    return image


def tile_pair(tile_size: Any) -> tuple[int, int]:
    """A tile size (a whole number of pixels, or a (height, width) pair of them) as (h, w), or a
    ValueError/TypeError that names ``tile_size``."""
    what = ("tile_size must be a whole number of pixels or a (height, width) pair of them, "
            f"got {tile_size!r}")
    items = [tile_size, tile_size] if _is_number(tile_size) else tile_size
    if isinstance(items, (str, bytes)) or not hasattr(items, "__len__"):
        raise TypeError(what)
    if len(items) != 2:
        raise ValueError(f"{what} ({len(items)} values; give one, or two: height and width)")
    out = []
    for t in items:
        if not _is_number(t):
            raise TypeError(what)
        f = float(t)
        if not math.isfinite(f) or f != int(f):
            raise ValueError(what)
        if f < 1:
            raise ValueError(f"tile_size must be positive, got {tile_size!r}")
        out.append(int(f))
    return out[0], out[1]


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def smallest_tile(config: UNetConfig) -> int:
    """The smallest network input tile of a model: its context on both sides plus one step of
    the pooling grid (the output tiles then advance by 2**depth pixels)."""
    return config.yx_axis.smallest_tile


def check_tile_size(config: UNetConfig, tile_size: Any) -> tuple[int, int]:
    """:func:`tile_pair`, refusing tiles below :func:`smallest_tile` (which were rounded up, and
    then kept 2**depth pixels each: a tile size of 2 planned 1024 tiles for a 512 x 512 image)."""
    pair = tile_pair(tile_size)
    low = smallest_tile(config)
    if min(pair) < low:
        raise ValueError(
            f"tile_size {tile_size!r} is smaller than the smallest tile this model can use ({low} px: "
            f"{config.halo} px of context on each side and one {config.grid}-px step); give at least "
            f"{low} (larger tiles are faster, e.g. 512), or leave it out to choose it from memory")
    return pair

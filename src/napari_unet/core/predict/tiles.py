"""The one overlap-tile planner (paper Fig. 2), for (Y, X) planes and (Z, Y, X) volumes alike.

Every axis follows the same rule, from its :class:`~napari_unet.core.network.geometry.Axis`: the
fewest tiles of at most the requested input size that cover the axis, each shrunk to the smallest
valid size that still does; output tiles abut, and every tile starts on a multiple of the axis's
pooling grid, so each tile sees the poolings of the whole image and the tiled output equals the
network applied to the whole (padded) image. Beside the planner: the tile sizes chosen from a
device's free memory (:func:`auto_tile_size`, :func:`auto_volume_tile`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_unet.core.device import free_memory_bytes
from napari_unet.core.network.geometry import Axis
from napari_unet.core.network.unet import UNetConfig
from napari_unet.core.predict.checks import check_tile_size

Sizes = tuple[int, ...]


@dataclass(frozen=True)
class TilePlan:
    """Where the overlap tiles of one image lie. Every field holds one value per axis, (Y, X) for
    a plane or (Z, Y, X) for a volume, in pixels (planes along z).

    Attributes
    ----------
    shape : tuple of int
        The image's size.
    tile_in : tuple of int
        Network input tile (a valid size of the axis).
    tile_out : tuple of int
        Network output of that tile (``tile_in`` for same-padded models).
    keep : tuple of int
        Output pixels kept per tile: the step between tiles, a multiple of the axis's pooling grid.
    kept_max : tuple of int
        Output pixels the last tile of a row may keep (valid models: all of ``tile_out``;
        same-padded: ``keep``).
    context : tuple of int
        Input pixels read before a tile's first output pixel (the axis's halo).
    skip : tuple of int
        First kept pixel inside the network output (0 for valid models, the halo for same-padded).
    starts : tuple of tuple of int
        Per axis, the first output pixel of each row of tiles, in image coordinates.
    origins : tuple of tuple of int
        Each tile's first output pixel (one coordinate per axis), the last axis fastest.
    """

    shape: Sizes
    tile_in: Sizes
    tile_out: Sizes
    keep: Sizes
    kept_max: Sizes
    context: Sizes
    skip: Sizes
    starts: tuple[Sizes, ...]
    origins: tuple[Sizes, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "origins", tuple(itertools.product(*self.starts)))

    def __len__(self) -> int:
        return len(self.origins)

    def origins_in(self, shape: Sizes) -> tuple[Sizes, ...]:
        """The first output pixels of the tiles that cover a region of ``shape`` pixels (one size
        per axis), relative to the region's first pixel: the region's own rows of tiles, with this
        plan's tiles and steps (a block of a plane, :mod:`~napari_unet.core.predict.blocks`)."""
        return tuple(itertools.product(*(tile_starts(n, km, k) for n, km, k in
                                         zip(shape, self.kept_max, self.keep, strict=True))))


def tile_starts(size: int, kept_max: int, keep: int) -> Sizes:
    """The first output pixel of each tile along one axis.

    Parameters
    ----------
    size : int
        Pixels along the axis to cover.
    kept_max : int
        Pixels the last tile may keep (:attr:`TilePlan.kept_max`).
    keep : int
        The step between tiles in pixels (:attr:`TilePlan.keep`).

    Returns
    -------
    tuple of int
        0, keep, 2 * keep, ... up to the first tile that reaches ``size``.
    """
    starts = [0]
    while starts[-1] + kept_max < size:
        starts.append(starts[-1] + keep)
    return tuple(starts)


def _plan_axis(ax: Axis, size: int, target: int) -> Sizes:
    """(tile_in, tile_out, keep, kept_max, context, skip) along one axis: the fewest tiles of at most
    ``target`` input pixels that cover ``size`` pixels, each shrunk to the smallest valid size that
    still does (a 2048-px axis with 1024-px tiles needs 3 tiles of ~800 px, not 3 of 1024)."""
    g, halo, smallest = ax.grid, ax.halo, ax.smallest_tile
    if ax.valid:
        below, _ = ax.nearest_valid(max(int(target), smallest))
        largest = max(below or smallest, smallest)
        sizes = [t for t in range(smallest, largest + 1) if ax.is_valid(t)]

        def out_keep(t: int) -> tuple[int, int]:
            out = ax.output_size(t)
            return out, max((out // g) * g, g)  # type: ignore[operator]
    else:
        sizes = list(range(smallest, max((int(target) // g) * g, smallest) + 1, g))

        def out_keep(t: int) -> tuple[int, int]:
            return t, t - 2 * halo

    def coverage(t: int, n: int) -> int:  # pixels covered by n tiles of input size t
        out, keep = out_keep(t)
        return (n - 1) * keep + (out if ax.valid else keep)

    n = 1
    while coverage(sizes[-1], n) < size:
        n += 1
    t = next(t for t in sizes if coverage(t, n) >= size)
    out, keep = out_keep(t)
    if ax.valid:
        return t, out, keep, out, halo, 0
    return t, out, keep, keep, halo, halo


def _triple(v: Any, name: str) -> Sizes:
    t = (int(v),) * 3 if np.isscalar(v) else tuple(int(i) for i in v)
    if len(t) != 3 or min(t) < 1:
        raise ValueError(f"{name} must be a positive int or (z, y, x), got {v!r}")
    return t


def plan_tiles(config: UNetConfig, shape: Sizes, tile_size: int | Sizes) -> TilePlan:
    """The tile plan of a (Y, X) plane or a (Z, Y, X) volume.

    Parameters
    ----------
    config : UNetConfig
        The network; a (Z, Y, X) plan needs a 3D U-Net (``dims=3``).
    shape : tuple of int
        (Y, X) or (Z, Y, X) size of the image in pixels, at least 1 per axis.
    tile_size : int or tuple of int
        Requested network input tile in pixels: one size for every axis, or (h, w) / (z, y, x). It
        is lowered to a valid size of each axis and to what covers the image. In 2D, sizes below
        the model's smallest tile (:func:`~napari_unet.core.predict.checks.smallest_tile`) are
        refused with a ValueError.

    Returns
    -------
    TilePlan
        One value per axis of ``shape`` in every field; ``len(plan)`` tiles.
    """
    if len(shape) == 3:
        if config.dims != 3:
            raise ValueError("a (Z, Y, X) tile plan is for 3D U-Nets (dims=3); a 2D model segments planes")
        shape = _triple(shape, "the volume shape")
        targets = _triple(tile_size, "tile_size")
        axes = (config.z_axis, config.yx_axis, config.yx_axis)
    elif len(shape) == 2:
        if min(int(s) for s in shape) < 1:
            raise ValueError(f"image must have at least one pixel per axis, got shape {shape}")
        shape = tuple(int(s) for s in shape)
        targets = check_tile_size(config, tile_size)
        axes = (config.yx_axis, config.yx_axis)
    else:
        raise ValueError(f"a tile plan is for (Y, X) or (Z, Y, X) shapes, got {tuple(shape)}")
    per_axis = [_plan_axis(ax, n, t) for ax, n, t in zip(axes, shape, targets, strict=True)]
    tile_in, tile_out, keep, kept_max, context, skip = (tuple(a[i] for a in per_axis) for i in range(6))
    starts = tuple(tile_starts(n, km, k) for n, km, k in zip(shape, kept_max, keep, strict=True))
    return TilePlan(shape, tile_in, tile_out, keep, kept_max, context, skip, starts)


def auto_tile_size(config: UNetConfig, device: torch.device, batch_size: int = 1) -> int:
    """A 2D network input tile size chosen from the device's free memory.

    Inference keeps roughly six level-0 feature maps alive at once: about 24 * base_channels bytes
    per input pixel. Larger tiles waste less on the halo, so the CPU uses up to 1024 px (a tenth of
    the free memory) and GPUs up to a quarter of the free memory, at most 2048 px
    (docs/benchmarks.md has the measurements behind the CPU's cap).

    Parameters
    ----------
    config : UNetConfig
        The network.
    device : torch.device
        Where it runs.
    batch_size : int
        Tiles per forward pass.

    Returns
    -------
    int
        A valid input tile side in pixels, at least the model's smallest tile.
    """
    bytes_per_px = 24 * config.base_channels + 8 * config.in_channels + 8 * config.num_classes
    budget = free_memory_bytes(device) * (0.25 if device.type != "cpu" else 0.1)
    side = int(math.sqrt(max(budget / max(batch_size, 1) / bytes_per_px, 1)))
    cap = 2048 if device.type != "cpu" else 1024
    side = max(min(side, cap), 2 * config.halo + config.grid)
    if config.padding == "valid":
        below, above = config.nearest_valid_input_sizes(side)
        return below or above
    return max((side // config.grid) * config.grid, 2 * config.halo + config.grid)


def auto_volume_tile(config: UNetConfig, device: torch.device, depth: int) -> Sizes:
    """A 3D network input tile chosen from the device's free memory.

    All of a thin volume's planes (up to 64 output planes); Y and X as large as about
    24 * base_channels bytes per input voxel allow (CPU: a tenth of the free memory, at most 512;
    GPUs: a quarter, at most 1024).

    Parameters
    ----------
    config : UNetConfig
        A 3D U-Net.
    device : torch.device
        Where it runs.
    depth : int
        The volume's planes along z.

    Returns
    -------
    tuple of int
        (z, y, x) input tile in voxels, for :func:`plan_tiles`.
    """
    tz_out = min(int(depth), 64)
    tz = config.z_axis.input_size(tz_out) if config.padding == "valid" else tz_out + 2 * config.z_halo
    per_voxel = 24 * config.base_channels + 8 * config.in_channels + 8 * config.num_classes
    budget = free_memory_bytes(device) * (0.25 if device.type != "cpu" else 0.1)
    side = int(math.sqrt(max(budget / per_voxel / tz, 1)))
    side = max(min(side, 1024 if device.type != "cpu" else 512), 2 * config.halo + config.grid)
    return tz, side, side

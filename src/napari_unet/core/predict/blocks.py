"""Blocks of one plane predicted independently, exactly as the whole plane would be.

Large images and distributed jobs cut each plane into blocks (the chunks of a zarr output) and predict
each block on its own: in another process, on another machine, or one after the other to keep memory
bounded. A block reads its own context (the halo of its overlap tiles) from the source through
:class:`~napari_unet.core.predict.planes.PlaneReader`, with normalisation statistics computed once for
the whole plane and handed in. Block origins are multiples of the tile step, which is a multiple of the
pooling grid, and the tiles are those of the plane's plan (:func:`~napari_unet.core.predict.tiles.plan_tiles`,
as in :func:`~napari_unet.core.predict.predict2d.predict`): every output pixel is computed from the same
input window on the same pooling grid, so the blocks put together equal the whole-plane prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_unet.core.modelfile.normalization import Normalization
from napari_unet.core.network.unet import UNet, UNetConfig
from napari_unet.core.predict.layout import Layout
from napari_unet.core.predict.planes import PlaneReader
from napari_unet.core.predict.predict2d import predict_tiles
from napari_unet.core.predict.tiles import TilePlan, plan_tiles


@dataclass(frozen=True)
class BlockGrid:
    """Blocks of one (h, w) plane: ``block`` (bh, bw) is a multiple of the tile step ``plan.keep``;
    ``origins`` are the (y, x) of each block's first pixel; edge blocks are cut at the image border."""

    plan: TilePlan
    block: tuple[int, int]
    origins: tuple[tuple[int, int], ...]

    @property
    def shape(self) -> tuple[int, int]:
        return self.plan.shape  # type: ignore[return-value]

    def region(self, i: int) -> tuple[int, int, int, int]:
        """(y0, x0, h, w) of block ``i``."""
        y0, x0 = self.origins[i]
        h, w = self.shape
        return y0, x0, min(self.block[0], h - y0), min(self.block[1], w - x0)

    def tiles_in(self, i: int) -> int:
        """Number of overlap tiles block ``i`` needs."""
        _, _, bh, bw = self.region(i)
        return len(self.plan.origins_in((bh, bw)))

    def __len__(self) -> int:
        return len(self.origins)


def block_grid(config: UNetConfig, image_shape: tuple[int, int], tile_size: int | tuple[int, int],
               block_size: int | tuple[int, int] = 1024) -> BlockGrid:
    """Cut an (h, w) plane into blocks of about ``block_size`` pixels, rounded to the tile step.

    ``tile_size`` is the network input tile, as in :func:`~napari_unet.core.predict.tiles.plan_tiles`
    (pass the same value to the whole-image call to get the same result).
    """
    if config.dims == 3:
        raise ValueError("a 3D U-Net segments whole volumes: blockwise (distributed) jobs are for 2D "
                         "models; segment without --workers/--scheduler")
    plan = plan_tiles(config, image_shape, tile_size)
    bs = (block_size, block_size) if np.isscalar(block_size) else tuple(block_size)
    if any(int(b) < 1 for b in bs):
        raise ValueError(f"block_size must be positive, got {block_size!r}")
    block = tuple(max(1, round(int(b) / k)) * k for b, k in zip(bs, plan.keep, strict=True))
    h, w = plan.shape
    origins = tuple((y, x) for y in range(0, h, block[0]) for x in range(0, w, block[1]))
    return BlockGrid(plan, block, origins)  # type: ignore[arg-type]


class _FixedStatsReader(PlaneReader):
    """A PlaneReader using normalisation statistics computed beforehand for the whole plane."""

    def __init__(self, source: Any, index: tuple, yx_axes: tuple[int, int], c_axis: int | None,
                 stats: np.ndarray, padding: str) -> None:
        self._given = np.asarray(stats, np.float64)
        super().__init__(source, index, yx_axes, c_axis, Normalization("none"), padding)

    def _stats(self, normalization: Normalization) -> np.ndarray:
        return self._given


def plane_index(layout: Layout, plane: tuple[int, ...]) -> tuple:
    """The PlaneReader index of ``plane`` (indices along the layout's plane axes)."""
    index: list[Any] = [None] * len(layout.axes)
    for ax, i in zip(layout.plane_axes, plane, strict=True):
        index[ax] = i
    return tuple(index)


def plane_stats(source: Any, layout: Layout, plane: tuple[int, ...], normalization: Normalization,
                padding: str = "mirror") -> np.ndarray:
    """Whole-plane statistics (C, 5) of one plane, exactly as ``predict`` computes them: the
    normalisation (offset, scale, clip range) and the zero-padding context."""
    reader = PlaneReader(source, plane_index(layout, plane), (layout.y, layout.x), layout.c,
                         normalization, padding)
    return reader.stats


def predict_block(
    source: Any,
    net: UNet,
    grid: BlockGrid,
    i: int,
    *,
    layout: Layout,
    plane: tuple[int, ...],
    stats: np.ndarray,
    output: str = "probabilities",
    padding: str = "mirror",
    device: torch.device | None = None,
    batch_size: int = 1,
    tta: bool = False,
) -> np.ndarray:
    """Predict block ``i`` of ``grid`` in ``plane`` of ``source``.

    ``net`` comes from :func:`~napari_unet.core.predict.inference.inference_net`; ``stats`` from
    :func:`plane_stats` (whole plane).
    Returns float32 (classes, bh, bw) probabilities or uint8 (bh, bw) class ids, equal to the
    corresponding part of ``predict(...)`` on the whole plane with the same tile size (and ``tta``).
    """
    if output not in ("probabilities", "semantic"):
        raise ValueError(f"output must be 'probabilities' or 'semantic', got {output!r}")
    dev = device or next(net.parameters()).device
    plan = grid.plan
    y0, x0, bh, bw = grid.region(i)
    reader = _FixedStatsReader(source, plane_index(layout, plane), (layout.y, layout.x), layout.c,
                               stats, padding)
    origins = [(y0 + dy, x0 + dx) for dy, dx in plan.origins_in((bh, bw))]
    k = net.config.num_classes
    out = np.zeros((k, bh, bw), np.float32) if output == "probabilities" else np.zeros((bh, bw), np.uint8)
    sy, sx = plan.skip
    for b0 in range(0, len(origins), batch_size):
        batch_origins = origins[b0 : b0 + batch_size]
        res = predict_tiles(net, reader, plan, batch_origins, dev, output, tta)
        for r, (y, x) in zip(res, batch_origins, strict=True):
            kh, kw = min(plan.kept_max[0], y0 + bh - y), min(plan.kept_max[1], x0 + bw - x)
            oy, ox = y - y0, x - x0
            if output == "probabilities":
                out[:, oy : oy + kh, ox : ox + kw] = r[:, sy : sy + kh, sx : sx + kw]
            else:
                out[oy : oy + kh, ox : ox + kw] = r[sy : sy + kh, sx : sx + kw].astype(np.uint8)
    return out

"""Reading one 2D plane of an image block by block for the overlap-tile strategy: normalised with
whole-plane statistics (never per tile, so tiles agree), with mirrored or zero context outside the
image (paper Fig. 2), reading only the block needed from numpy, memmap, dask or zarr sources."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_unet.core.modelfile.normalization import Normalization
from napari_unet.core.predict.padding import mirror_index, zero_context


class PlaneReader:
    """Reads (C, h, w) float32 blocks of one 2D plane of an image, normalised with whole-plane
    statistics, with mirrored or zero context outside the image. Only the needed block of the source
    is read (numpy, memmap, dask and zarr sources work)."""

    def __init__(self, source: Any, index: tuple, yx_axes: tuple[int, int], c_axis: int | None,
                 normalization: Normalization, padding: str) -> None:
        self.source = source
        self.index = index  # per source axis: an int (plane), or None for Y/X/C
        self.y_axis, self.x_axis = yx_axes
        self.c_axis = c_axis
        self.h = source.shape[self.y_axis]
        self.w = source.shape[self.x_axis]
        self.padding = padding
        self.stats = self._stats(normalization)

    def _read(self, ys: slice, xs: slice) -> np.ndarray:
        key = []
        for ax, fixed in enumerate(self.index):
            if ax == self.y_axis:
                key.append(ys)
            elif ax == self.x_axis:
                key.append(xs)
            elif ax == self.c_axis:
                key.append(slice(None))
            else:
                key.append(fixed)
        block = np.asarray(self.source[tuple(key)])
        # remaining axes are, in source order, a subset of (C, Y, X)
        kept = [ax for ax in range(len(self.index)) if ax in (self.y_axis, self.x_axis, self.c_axis)]
        order = ([kept.index(self.c_axis)] if self.c_axis is not None else []) + [
            kept.index(self.y_axis), kept.index(self.x_axis)]
        block = np.transpose(block, order)
        if self.c_axis is None:
            block = block[None]
        return block

    def _stats(self, normalization: Normalization) -> np.ndarray:
        """(C, 5): the normalisation's (offset, scale, clip low, clip high) and, last, the value
        of the zero-padding context, all from the whole plane (never per tile)."""
        c = 1 if self.c_axis is None else self.source.shape[self.c_axis]
        if normalization.mode in ("none", "fixed") and self.padding != "zero":
            stats = normalization.stats(np.zeros((c, 1, 1)), channel_axis=0)
            return np.concatenate([stats, np.zeros((c, 1))], axis=1)
        # a regular subsample of the plane, read block-wise through _read
        step = max(1, int(np.ceil(np.sqrt(self.h * self.w / (1 << 22)))))
        sample = self._read(slice(None, None, step), slice(None, None, step))
        if sample.dtype.kind not in "biu":  # integer images are finite and keep the fast percentiles
            sample = sample.astype(np.float64)
            if not np.all(np.isfinite(sample)):
                raise ValueError(_NONFINITE)
        stats = normalization.stats(sample, channel_axis=0)
        fill = np.zeros((c, 1))
        if self.padding == "zero":
            fill[:, 0] = zero_context(Normalization.apply(sample, stats))
        return np.concatenate([stats, fill], axis=1)

    def block(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """The normalised (C, h, w) block whose top-left corner is (y0, x0) in image coordinates."""
        ry = np.arange(y0, y0 + h)
        rx = np.arange(x0, x0 + w)
        if self.padding == "mirror":
            my, mx = mirror_index(ry, self.h), mirror_index(rx, self.w)
            ylo, yhi, xlo, xhi = int(my.min()), int(my.max()) + 1, int(mx.min()), int(mx.max()) + 1
            raw = self._read(slice(ylo, yhi), slice(xlo, xhi))
            _check_finite(raw)
            data = Normalization.apply(raw, self.stats)
            return data[:, (my - ylo)[:, None], (mx - xlo)[None, :]]
        fill = self.stats[:, 4] if self.stats.shape[1] > 4 else np.zeros(len(self.stats))
        out = np.empty((len(self.stats), h, w), np.float32)
        out[...] = fill.astype(np.float32)[:, None, None]
        iy0, iy1 = max(y0, 0), min(y0 + h, self.h)
        ix0, ix1 = max(x0, 0), min(x0 + w, self.w)
        if iy1 > iy0 and ix1 > ix0:
            raw = self._read(slice(iy0, iy1), slice(ix0, ix1))
            _check_finite(raw)
            out[:, iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = Normalization.apply(raw, self.stats)
        return out


_NONFINITE = ("the image contains NaN or infinite values; replace them first "
              "(e.g. with numpy.nan_to_num) so that the network sees only real intensities")


def _check_finite(a: np.ndarray) -> None:
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise ValueError(_NONFINITE)

"""Overlap-tile inference of a 3D U-Net (Cicek et al. 2016): class probabilities of (Z, Y, X)
volumes of any size (:func:`predict_volume`, :func:`predict_volume_image`), exactly as the network
applied to the whole (padded) volume, and the reader of normalised blocks of a volume.

The tiles are :mod:`~napari_unet.core.predict.tiles`'s plan along three axes: each input tile carries
the context its output tile needs, mirrored beyond the volume's faces (z too; ``padding="zero"``: one
constant, the volume's median), output tiles abut, and every tile starts on the pooling grid of its
axis (along z the product of the levels' z poolings). Memory grows with the tile: the source is read
block by block (numpy, memmap, dask, zarr) with normalisation statistics computed once per volume.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import torch

from napari_unet.core.device import resolve_device
from napari_unet.core.events import TileDone, run_to_end
from napari_unet.core.modelfile.files import UNetModel
from napari_unet.core.modelfile.normalization import Normalization
from napari_unet.core.network.unet import UNet, UNetConfig
from napari_unet.core.predict.checks import as_image
from napari_unet.core.predict.inference import OUTPUTS, PADDING_MODES, inference_net
from napari_unet.core.predict.layout import infer_layout
from napari_unet.core.predict.padding import mirror_index, zero_context
from napari_unet.core.predict.tiles import auto_volume_tile, plan_tiles

Triple = tuple[int, int, int]


class VolumeReader:
    """Normalised (C, d, h, w) float32 blocks of one volume of a source, with mirrored or constant
    context beyond its faces; statistics from the whole volume (never per tile).

    ``index``: per source axis an int (a fixed plane: a time point), or None for Z, Y, X and C."""

    def __init__(self, source: Any, index: tuple, zyx: Triple, c_axis: int | None,
                 normalization: Normalization, padding: str) -> None:
        self.source, self.index, self.zyx, self.c_axis = source, index, zyx, c_axis
        self.shape = tuple(int(source.shape[a]) for a in zyx)
        self.padding = padding
        d, h, w = self.shape
        step = max(1, int(np.ceil((d * h * w / (1 << 22)) ** (1 / 3))))
        sample = self._read(*(slice(None, None, step),) * 3)
        if sample.dtype.kind not in "biu":
            sample = sample.astype(np.float64)
            if not np.all(np.isfinite(sample)):
                raise ValueError("the volume contains NaN or infinite values; replace them first "
                                 "(e.g. with numpy.nan_to_num)")
        flat = sample.reshape(sample.shape[0], -1, sample.shape[-1])  # (C, d*h, w): one "plane"
        self.stats = normalization.stats(flat, channel_axis=0)
        self.fill = zero_context(Normalization.apply(flat, self.stats)) if padding == "zero" else None

    def _read(self, zs: slice, ys: slice, xs: slice) -> np.ndarray:
        key: list[Any] = []
        for ax, fixed in enumerate(self.index):
            if ax in self.zyx:
                key.append((zs, ys, xs)[self.zyx.index(ax)])
            elif ax == self.c_axis:
                key.append(slice(None))
            else:
                key.append(fixed)
        block = np.asarray(self.source[tuple(key)])
        kept = [ax for ax in range(len(self.index)) if ax in self.zyx or ax == self.c_axis]
        order = ([kept.index(self.c_axis)] if self.c_axis is not None else []) + \
            [kept.index(a) for a in self.zyx]
        block = np.transpose(block, order)
        return block if self.c_axis is not None else block[None]

    def _norm(self, raw: np.ndarray) -> np.ndarray:
        c, d, h, w = raw.shape
        return Normalization.apply(raw.reshape(c, d * h, w), self.stats).reshape(c, d, h, w)

    def block(self, origin: Triple, size: Triple) -> np.ndarray:
        """The normalised (C, d, h, w) block whose first voxel is ``origin`` (may lie outside)."""
        ranges = [np.arange(o, o + s) for o, s in zip(origin, size, strict=True)]
        if self.padding == "mirror":
            idx = [mirror_index(r, n) for r, n in zip(ranges, self.shape, strict=True)]
            lo = [int(i.min()) for i in idx]
            raw = self._read(*(slice(a, int(i.max()) + 1) for a, i in zip(lo, idx, strict=True)))
            data = self._norm(raw)
            return data[:, (idx[0] - lo[0])[:, None, None], (idx[1] - lo[1])[None, :, None],
                        (idx[2] - lo[2])[None, None, :]]
        out = np.empty((len(self.stats),) + tuple(size), np.float32)
        out[...] = np.asarray(self.fill, np.float32)[:, None, None, None]
        inner = [(max(o, 0), min(o + s, n)) for o, s, n in zip(origin, size, self.shape, strict=True)]
        if all(b > a for a, b in inner):
            raw = self._read(*(slice(a, b) for a, b in inner))
            dst = (slice(None),) + tuple(slice(a - o, b - o) for (a, b), o in zip(inner, origin, strict=True))
            out[dst] = self._norm(raw)
        return out


def volume_axes(shape: tuple[int, ...], config: UNetConfig, axes: str | None) -> tuple[Any, int]:
    """The layout of an image for a 3D model and the source axis that is Z: the one named Z in
    ``axes``, else the last axis besides Y, X and channels (a (T, Z, Y, X) stack: Z)."""
    layout = infer_layout(shape, config.in_channels, axes)
    planes = layout.plane_axes
    if not planes:
        raise ValueError(f"a 3D model segments volumes (Z, Y, X); this image (shape {tuple(shape)}) "
                         f"has no axis besides Y and X: use a 2D model for single planes")
    z = axes.upper().index("Z") if axes is not None and "Z" in axes.upper() else planes[-1]
    return layout, z


def predict_volume(
    image: Any,
    model: UNetModel | UNet,
    *,
    axes: str | None = None,
    output: str = "probabilities",
    tile_size: int | tuple[int, ...] | None = None,
    padding: str = "mirror",
    device: str | torch.device = "auto",
    normalization: Normalization | None = None,
    out: Any = None,
) -> Generator[TileDone, None, Any]:
    """Predict every volume of ``image`` with a 3D U-Net, tile by tile (a generator).

    Parameters
    ----------
    image : array-like
        numpy, memmap, dask, zarr or a torch tensor of shape (Z, Y, X), with channels and/or
        further leading axes (T, Z, Y, X: each volume separately); integer, boolean or float dtype.
    model : UNetModel or UNet
        A 3D U-Net (``config.dims == 3``).
    axes : str, optional
        The image's axes ("ZYX", "TZYX", "CZYX", ...); default: the last axis besides Y, X and
        channels is Z.
    output : {"probabilities", "semantic"}
        "probabilities": float32 (*rest, Z, classes, Y, X), the layout of plane-by-plane
        prediction; "semantic": uint8 (*rest, Z, Y, X) class ids.
    tile_size : int or (int, int, int), optional
        Network input tile in voxels, one size or (z, y, x); lowered to valid sizes and to what
        covers the volume; None chooses it from the device's free memory
        (:func:`~napari_unet.core.predict.tiles.auto_volume_tile`).
    padding : {"mirror", "zero"}
        Context beyond the volume's faces: mirrored (z too) or the volume's median intensity.
    device : str or torch.device
        "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "mps".
    normalization : Normalization, optional
        Overrides the model's intensity normalisation (whole-volume statistics).
    out : array, optional
        Preallocated numpy or zarr array of the output's shape and dtype.

    Yields
    ------
    TileDone
        After each tile (``plane`` counts volumes).

    Returns
    -------
    array
        ``out`` (or a new numpy array) as described under ``output``: equal to the network on the
        whole padded volume, whatever ``tile_size``.
    """
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    cfg = model.config
    if cfg.dims != 3:
        raise ValueError("predict_volume needs a 3D U-Net; a 2D model predicts plane by plane "
                         "(predict2d.predict)")
    image = as_image(image)
    shape = tuple(image.shape)
    layout, z = volume_axes(shape, cfg, axes)
    norm = normalization or (model.normalization if isinstance(model, UNetModel) else Normalization())
    dev = resolve_device(device)
    zyx = (z, layout.y, layout.x)
    vshape = tuple(shape[a] for a in zyx)
    plan = plan_tiles(cfg, vshape, tile_size or auto_volume_tile(cfg, dev, vshape[0]))
    rest_axes = tuple(a for a in layout.plane_axes if a != z)
    rest = tuple(shape[a] for a in rest_axes)
    k = cfg.num_classes
    d, h, w = vshape
    oshape = rest + ((d, k, h, w) if output == "probabilities" else (d, h, w))
    if out is None:
        out = np.zeros(oshape, np.float32 if output == "probabilities" else np.uint8)
    elif tuple(out.shape) != oshape:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {oshape}")
    net = inference_net(model, dev)
    vols = list(np.ndindex(*rest)) if rest else [()]
    total, done = len(vols) * len(plan), 0
    for vi, ridx in enumerate(vols):
        index: list[Any] = [None] * len(shape)
        for ax, i in zip(rest_axes, ridx, strict=True):
            index[ax] = i
        reader = VolumeReader(image, tuple(index), zyx, layout.c, norm, padding)
        for o in plan.origins:
            tile = reader.block(tuple(a - c for a, c in zip(o, plan.context, strict=True)), plan.tile_in)
            with torch.inference_mode():
                logits = net(torch.from_numpy(tile[None]).to(dev))
                res = (torch.softmax(logits, 1) if output == "probabilities" else logits.argmax(1))
                res = res[0].to("cpu").numpy()
            n = [min(km, size - a) for km, size, a in zip(plan.kept_max, vshape, o, strict=True)]
            s = plan.skip
            if output == "probabilities":  # (classes, z, y, x) -> (z, classes, y, x)
                part = res[:, s[0]:s[0] + n[0], s[1]:s[1] + n[1], s[2]:s[2] + n[2]].transpose(1, 0, 2, 3)
                out[ridx + (slice(o[0], o[0] + n[0]), slice(None), slice(o[1], o[1] + n[1]),
                            slice(o[2], o[2] + n[2]))] = part
            else:
                part = res[s[0]:s[0] + n[0], s[1]:s[1] + n[1], s[2]:s[2] + n[2]].astype(np.uint8)
                out[ridx + (slice(o[0], o[0] + n[0]), slice(o[1], o[1] + n[1]),
                            slice(o[2], o[2] + n[2]))] = part
            done += 1
            yield TileDone(done, total, vi, len(vols), str(dev))
    return out


def predict_volume_image(image: Any, model: UNetModel | UNet, **kwargs: Any) -> Any:
    """Plain-function form of :func:`predict_volume`: runs all tiles.

    Parameters
    ----------
    image : array-like
        As for :func:`predict_volume`.
    model : UNetModel or UNet
        A 3D U-Net.
    **kwargs
        The keyword arguments of :func:`predict_volume`.

    Returns
    -------
    array
        float32 (*rest, Z, classes, Y, X) probabilities, or uint8 (*rest, Z, Y, X) class ids for
        ``output="semantic"``.
    """
    return run_to_end(predict_volume(image, model, **kwargs))

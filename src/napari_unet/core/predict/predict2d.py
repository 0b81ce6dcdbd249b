"""Overlap-tile inference of a 2D U-Net (paper Fig. 2): class probabilities for images of any size,
plane by plane (:func:`predict`, :func:`predict_image`), and the forward passes over a batch of tiles.

Where the tiles lie is :mod:`~napari_unet.core.predict.tiles`'s plan: output tiles abut and start on the
pooling grid, so the tiled output equals the network applied to the whole padded image, whatever the
tile size. The context beyond the border is mirrored (``padding="mirror"``, the paper) or one constant
(``"zero"``, see :func:`~napari_unet.core.predict.padding.zero_context`). Work is a generator yielding
:class:`~napari_unet.core.events.TileDone` after each batch of tiles; the source is read block by block
(:mod:`~napari_unet.core.predict.planes`) and results go into ``out`` (numpy or zarr).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import torch

from napari_unet.core.device import resolve_device
from napari_unet.core.events import TileDone, relay, run_to_end
from napari_unet.core.modelfile.files import UNetModel
from napari_unet.core.modelfile.normalization import Normalization
from napari_unet.core.network.unet import UNet
from napari_unet.core.predict.checks import as_image
from napari_unet.core.predict.inference import OUTPUTS, PADDING_MODES, inference_net
from napari_unet.core.predict.layout import infer_layout
from napari_unet.core.predict.planes import PlaneReader
from napari_unet.core.predict.tiles import TilePlan, auto_tile_size, plan_tiles

# ---------------------------------------------------------------------------- prediction
# the 8 symmetries of the square (transpose?, flip rows?, flip columns?), identity first
DIHEDRAL = tuple((t, fy, fx) for t in (False, True) for fy in (False, True) for fx in (False, True))


def _transform(x: torch.Tensor, g: tuple[bool, bool, bool]) -> torch.Tensor:
    t, fy, fx = g
    if t:
        x = x.transpose(-1, -2)
    dims = [d for d, f in ((-2, fy), (-1, fx)) if f]
    return torch.flip(x, dims) if dims else x


def _untransform(x: torch.Tensor, g: tuple[bool, bool, bool]) -> torch.Tensor:
    t, fy, fx = g
    dims = [d for d, f in ((-2, fy), (-1, fx)) if f]
    if dims:
        x = torch.flip(x, dims)
    return x.transpose(-1, -2) if t else x


def predict_tiles(net: UNet, reader: PlaneReader, plan: TilePlan, origins: Any, device: torch.device,
                  output: str, tta: bool = False) -> np.ndarray:
    """One forward pass over the tiles whose first output pixels are ``origins``: (n, classes, h, w)
    float32 softmax for "probabilities", (n, h, w) class ids for "semantic" (network output size).

    ``tta``: test-time augmentation, the softmax averaged over the 8 flips and 90-degree rotations
    of each tile (8 forward passes). Valid tile sizes are congruent modulo the pooling grid and
    tiles start on it, so a flipped or rotated tile's pooling grid lines up across tiles and tile
    sizes too: the averaged output does not depend on the tile size (tiled equals one whole-image
    tile), as without ``tta``."""
    return run_to_end(predict_tiles_passes(net, reader, plan, origins, device, output, tta))


def predict_tiles_passes(net: UNet, reader: PlaneReader, plan: TilePlan, origins: Any,
                         device: torch.device, output: str, tta: bool = False
                         ) -> Generator[None, None, np.ndarray]:
    """:func:`predict_tiles` as a generator that yields between its forward passes (the eight of
    ``tta``; without it, never), so that a job can be stopped between the passes of a large tile."""
    th, tw = plan.tile_in
    cy, cx = plan.context
    batch = np.stack([reader.block(y - cy, x - cx, th, tw) for y, x in origins])
    xb = torch.from_numpy(batch).to(device)
    acc = None
    for i, g in enumerate(DIHEDRAL if tta else DIHEDRAL[:1]):
        if i:
            yield None
        with torch.inference_mode():  # entered per pass: never held across a yield
            logits = _untransform(net(_channels_last(_transform(xb, g), device)), g)
            if not tta and output == "semantic":
                acc = logits.argmax(1)
            else:
                p = torch.softmax(logits, dim=1)
                acc = p if acc is None else acc.add_(p)
    with torch.inference_mode():
        if tta:
            acc = acc.div_(len(DIHEDRAL))
            if output == "semantic":
                acc = acc.argmax(1)
        return acc.to("cpu").numpy()


def _channels_last(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x if device.type == "mps" else x.contiguous(memory_format=torch.channels_last)


def predict(
    image: Any,
    model: UNetModel | UNet,
    *,
    axes: str | None = None,
    rgb: bool | None = None,
    output: str = "probabilities",
    tile_size: int | tuple[int, int] | None = None,
    padding: str = "mirror",
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    normalization: Normalization | None = None,
    tta: bool = False,
    out: Any = None,
) -> Generator[TileDone, None, Any]:
    """Predict an image of any size tile by tile (a generator; see :func:`predict_image`).

    Parameters
    ----------
    image : array-like
        numpy, memmap, dask, zarr, a torch tensor or nested lists, of shape (Y, X), (C, Y, X),
        (Y, X, 3|4), or with leading plane axes (Z, T, ...). Any integer, boolean or float dtype;
        NaN/inf and axes of length 0 are refused (:func:`~napari_unet.core.predict.checks.as_image`).
    model : UNetModel or UNet
        A 2D model (its normalisation is used) or a bare network.
    axes : str, optional
        The image's axes ("YX", "ZYX", "CYX", "YXC", ...); default: guessed from the shape.
    rgb : bool, optional
        Whether the last axis is colour (napari knows this of its layers).
    output : {"probabilities", "semantic"}
        "probabilities": float32 (*planes, classes, Y, X) softmax; "semantic": uint8 (*planes, Y, X)
        argmax, written tile by tile (no full probability map is held).
    tile_size : int or (int, int), optional
        Network input tile in pixels; lowered to the nearest valid size; None chooses it from the
        device's free memory (:func:`~napari_unet.core.predict.tiles.auto_tile_size`); below the
        model's smallest tile (:func:`~napari_unet.core.predict.checks.smallest_tile`) a ValueError.
    padding : {"mirror", "zero"}
        Context beyond the image border: mirrored (the paper) or the plane's median intensity.
    device : str or torch.device
        "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "mps".
    batch_size : int, optional
        Tiles per forward pass (default 1 on the CPU, 4 on GPUs).
    normalization : Normalization, optional
        Overrides the model's intensity normalisation (whole-plane statistics, never per tile).
    tta : bool
        Test-time augmentation: the softmax averaged over the 8 flips and 90-degree rotations of
        every tile (8x the compute; the paper averaged rotated inputs for ISBI 2012). Still exact:
        the output does not depend on the tile size.
    out : array, optional
        Preallocated numpy or zarr array of the output's shape and dtype.

    Yields
    ------
    TileDone
        After each batch of tiles (and between the passes of ``tta``).

    Returns
    -------
    array
        ``out`` (or a new numpy array) as described under ``output``, Y and X of the image's size.
    """
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    image = as_image(image)
    cfg = model.config
    if cfg.dims == 3:
        raise ValueError("this is a 3D U-Net: it segments (Z, Y, X) volumes as a whole "
                         "(predict3d.predict_volume, or segment), not plane by plane")
    norm = normalization or (model.normalization if isinstance(model, UNetModel) else Normalization())
    layout = infer_layout(tuple(image.shape), cfg.in_channels, axes, rgb)
    dev = resolve_device(device)
    if batch_size is None:
        batch_size = 1 if dev.type == "cpu" else 4
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tile_size is None:
        tile_size = auto_tile_size(cfg, dev, batch_size)
    plane_shape = tuple(image.shape[a] for a in layout.plane_axes)
    h, w = image.shape[layout.y], image.shape[layout.x]
    plan = plan_tiles(cfg, (h, w), tile_size)
    k = cfg.num_classes
    out_shape = plane_shape + ((k, h, w) if output == "probabilities" else (h, w))
    out_dtype = np.float32 if output == "probabilities" else np.uint8
    if out is None:
        out = np.zeros(out_shape, out_dtype)
    elif tuple(out.shape) != out_shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {out_shape}")
    planes = list(np.ndindex(*plane_shape)) if plane_shape else [()]
    total = len(planes) * len(plan)
    net = inference_net(model, dev)
    done = 0
    for pi, pidx in enumerate(planes):
        index: list[Any] = [None] * len(layout.axes)
        for ax, i in zip(layout.plane_axes, pidx, strict=True):
            index[ax] = i
        reader = PlaneReader(image, tuple(index), (layout.y, layout.x), layout.c, norm, padding)
        for b0 in range(0, len(plan), batch_size):
            origins = plan.origins[b0 : b0 + batch_size]
            # between the passes of test-time augmentation: no new tile yet, but a point where
            # the job can be stopped
            res = yield from relay(predict_tiles_passes(net, reader, plan, origins, dev, output, tta),
                                   lambda _, pi=pi, done=done: TileDone(done, total, pi, len(planes), str(dev)))
            for r, (y, x) in zip(res, origins, strict=True):
                # every output pixel of every tile is exact: keep all of it inside the image
                kh, kw = min(plan.kept_max[0], h - y), min(plan.kept_max[1], w - x)
                sy, sx = plan.skip
                if output == "probabilities":
                    out[pidx + (slice(None), slice(y, y + kh), slice(x, x + kw))] = r[:, sy : sy + kh, sx : sx + kw]
                else:
                    out[pidx + (slice(y, y + kh), slice(x, x + kw))] = r[sy : sy + kh, sx : sx + kw].astype(np.uint8)
            done += len(origins)
            yield TileDone(done, total, pi, len(planes), str(dev))
    return out


def predict_image(image: Any, model: UNetModel | UNet, **kwargs: Any) -> Any:
    """Plain-function form of :func:`predict`: runs all tiles.

    Parameters
    ----------
    image : array-like
        As for :func:`predict`.
    model : UNetModel or UNet
        A 2D model or network.
    **kwargs
        The keyword arguments of :func:`predict`.

    Returns
    -------
    array
        float32 (*planes, classes, Y, X) probabilities, or uint8 (*planes, Y, X) class ids for
        ``output="semantic"``.
    """
    gen = predict(image, model, **kwargs)
    return run_to_end(gen)

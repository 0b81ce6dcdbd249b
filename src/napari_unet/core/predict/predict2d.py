"""Overlap-tile inference (paper Fig. 2): class probabilities for images of any size.

Each network input tile carries the context (halo) its output tile needs; at the image border that
context is extrapolated by mirroring (``padding="mirror"``, the paper) or left empty (``"zero"``, the
paper's dental variant: one constant, the plane's median, see :func:`zero_context`). Output tiles abut exactly, and every tile starts on a multiple of the pooling
grid (2**depth), so each tile sees the same 2x2 pooling grid as the whole image would: the tiled output
equals the output of the network applied to the whole (padded) image, whatever the tile size.

Work is a generator yielding :class:`~napari_unet.core.events.TileDone` after each batch of tiles; close
it (or quit the napari worker driving it) to stop between batches. Memory grows with the tile, not the
image: the source is read block by block (:mod:`.planes`; numpy, memmap, dask, zarr all work) and
results are written into ``out``, which may be a preallocated numpy array or a zarr array.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_unet.core.device import free_memory_bytes, resolve_device
from napari_unet.core.events import TileDone, relay, run_to_end
from napari_unet.core.modelfile.files import UNetModel
from napari_unet.core.modelfile.normalization import Normalization
from napari_unet.core.network.unet import UNet, UNetConfig
from napari_unet.core.predict.checks import as_image, check_tile_size
from napari_unet.core.predict.layout import Layout, infer_layout  # noqa: F401 - Layout: importable from here as before
from napari_unet.core.predict.padding import mirror_index, zero_context, zero_padding_note  # noqa: F401 - importable here
from napari_unet.core.predict.planes import _NONFINITE, PlaneReader, _check_finite  # noqa: F401 - importable here

PADDING_MODES = ("mirror", "zero")
OUTPUTS = ("probabilities", "semantic")


# ---------------------------------------------------------------------------- tile plan
@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one 2D plane lie.

    ``tile_in``: network input size (h, w); ``tile_out``: network output size; ``keep``: output pixels
    kept per tile (h, w, a multiple of the pooling grid: the step between tiles); ``context``: input
    pixels read before a tile's first output pixel (the halo); ``skip``: first kept pixel inside the
    network output (0 for valid models, the halo for same-padded ones); ``origins``: (y, x) of each
    tile's first output pixel in image coordinates.
    """

    image_shape: tuple[int, int]
    tile_in: tuple[int, int]
    tile_out: tuple[int, int]
    keep: tuple[int, int]
    context: int
    skip: int
    origins: tuple[tuple[int, int], ...]

    def __len__(self) -> int:
        return len(self.origins)


def _axis_origins(size: int, tile_out_kept_max: int, step: int) -> list[int]:
    origins = [0]
    while origins[-1] + tile_out_kept_max < size:
        origins.append(origins[-1] + step)
    return origins


def _coverage(cfg: UNetConfig, t: int, n: int) -> int:
    """Pixels covered along one axis by ``n`` tiles of input size ``t``."""
    g = cfg.grid
    if cfg.padding == "valid":
        out = cfg.output_size(t)
        return (n - 1) * max((out // g) * g, g) + out
    return n * (t - 2 * cfg.halo)


def _tile_for_axis(cfg: UNetConfig, size: int, target_in: int) -> int:
    """Network input size along one axis.

    The largest valid size <= ``target_in`` fixes the number of tiles needed; then the tile is shrunk
    to the smallest valid size that still covers the axis with that many tiles, so no tile computes
    much beyond the image (a 2048-px axis with 1024-px tiles needs 3 tiles of ~800 px, not 3 of 1024).
    """
    g = cfg.grid
    if cfg.padding == "valid":
        smallest = cfg.input_size(g)  # the smallest tile that keeps at least one grid step
        below, _ = cfg.nearest_valid_input_sizes(max(target_in, smallest))
        t_max = max(below or smallest, smallest)
        candidates = range(smallest, t_max + 1, g)  # valid sizes are spaced by the grid
        candidates = [t for t in candidates if cfg.is_valid_input_size(t)]
    else:
        smallest = 2 * cfg.halo + g
        t_max = max((int(target_in) // g) * g, smallest)
        candidates = list(range(smallest, t_max + 1, g))
    n = 1
    while _coverage(cfg, t_max, n) < size:
        n += 1
    return next(t for t in candidates if _coverage(cfg, t, n) >= size)


def plan_tiles(config: UNetConfig, image_shape: tuple[int, int], tile_size: int | tuple[int, int]) -> TilePlan:
    """Tile plan for an image of ``image_shape`` (h, w) and a requested network input ``tile_size``.

    The tile size is lowered to the nearest valid size (every 2x2 pooling on an even size) and to what
    covers the image; tile steps are multiples of the pooling grid. Sizes below the model's smallest
    tile (:func:`~napari_unet.core.predict.checks.smallest_tile`) are refused with a message.
    """
    h, w = (int(s) for s in image_shape)
    if h < 1 or w < 1:
        raise ValueError(f"image must have at least one pixel per axis, got shape {image_shape}")
    ts = check_tile_size(config, tile_size)
    g = config.grid
    tin = (_tile_for_axis(config, h, int(ts[0])), _tile_for_axis(config, w, int(ts[1])))
    if config.padding == "valid":
        tout = (config.output_size(tin[0]), config.output_size(tin[1]))
        context, skip = config.halo, 0
        # kept region: a multiple of the grid; the last tile may keep up to the full output
        keep = tuple(max((o // g) * g, g) for o in tout)
        kept_max = tout
    else:
        tout = tin
        context = skip = config.halo
        keep = tuple(t - 2 * config.halo for t in tin)
        kept_max = keep
    ys = _axis_origins(h, kept_max[0], keep[0])
    xs = _axis_origins(w, kept_max[1], keep[1])
    origins = tuple((y, x) for y in ys for x in xs)
    return TilePlan((h, w), tin, tout, keep, context, skip, origins)  # type: ignore[arg-type]


def auto_tile_size(config: UNetConfig, device: torch.device, batch_size: int = 1) -> int:
    """A network input tile size chosen from the device's free memory.

    Inference keeps roughly six level-0 feature maps alive at once: about 24 * base_channels bytes
    per input pixel. Larger tiles waste less on the halo (2 x 92 px for a valid depth-4 model, 2 x 112
    for a same-padded one): 1024-px tiles were faster than 640-px ones in every paired measurement on
    a 2-core CPU (docs/benchmarks.md), so the CPU uses up to 1024 px; GPUs use up to a quarter of
    the free memory, at most 2048 px.
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


# ---------------------------------------------------------------------------- reading blocks
# PlaneReader: core/planes.py (importable from here as before)


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
    batch = np.stack([reader.block(y - plan.context, x - plan.context, th, tw) for y, x in origins])
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


def _inference_net(model: UNetModel | UNet, device: torch.device) -> UNet:
    net = model.net if isinstance(model, UNetModel) else model
    # a private copy: the caller's model keeps its device, mode and memory layout
    net = copy.deepcopy(net).to(device).eval()
    if device.type != "mps":
        three_d = getattr(getattr(net, "config", None), "dims", 2) == 3
        net = net.to(memory_format=torch.channels_last_3d if three_d else torch.channels_last)
    return net


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
    image: array-like (numpy, memmap, dask, zarr, a torch tensor, nested lists) of shape (Y, X),
        (C, Y, X), (Y, X, 3|4), or with leading plane axes (Z, T, ...). Any integer, boolean or
        float dtype; NaN/inf and axes of length 0 are rejected (:func:`~napari_unet.core.predict.checks.as_image`).
    model: a :class:`UNetModel` (its normalisation is used) or a bare :class:`UNet`.
    output: "probabilities" -> float32 (*planes, classes, Y, X) softmax; "semantic" -> uint8
        (*planes, Y, X) argmax, written tile by tile (no full probability map is held).
    tile_size: network input tile size in pixels (int or (h, w)); lowered to the nearest valid
        size; None chooses it from the device's free memory; below the model's smallest tile
        (:func:`~napari_unet.core.predict.checks.smallest_tile`) a ValueError.
    padding: "mirror" (paper) or "zero" context beyond the image border ("zero": the plane's
        median intensity, see :func:`zero_context`).
    device: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "mps".
    batch_size: tiles per forward pass (default 1 on the CPU, more on GPUs).
    normalization: overrides the model's intensity normalisation (whole plane statistics).
    tta: test-time augmentation: average the softmax over the 8 flips and 90-degree rotations of
        every tile (8x the compute; the paper averaged rotated versions of the input for its
        ISBI 2012 result). Still exact: the output does not depend on the tile size.
    out: optional preallocated array (numpy or zarr) of the output's shape and dtype.

    Yields TileDone after each batch; returns the output array.
    """
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    image = as_image(image)
    cfg = model.config
    if cfg.dims == 3:
        raise ValueError("this is a 3D U-Net: it segments (Z, Y, X) volumes as a whole "
                         "(tiling3d.predict_volume, or segment), not plane by plane")
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
    net = _inference_net(model, dev)
    kept_max = plan.tile_out if cfg.padding == "valid" else plan.keep
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
                kh, kw = min(kept_max[0], h - y), min(kept_max[1], w - x)
                s = plan.skip
                if output == "probabilities":
                    out[pidx + (slice(None), slice(y, y + kh), slice(x, x + kw))] = r[:, s : s + kh, s : s + kw]
                else:
                    out[pidx + (slice(y, y + kh), slice(x, x + kw))] = r[s : s + kh, s : s + kw].astype(np.uint8)
            done += len(origins)
            yield TileDone(done, total, pi, len(planes), str(dev))
    return out


def predict_image(image: Any, model: UNetModel | UNet, **kwargs: Any) -> Any:
    """Plain-function form of :func:`predict`: runs all tiles and returns the output array."""
    gen = predict(image, model, **kwargs)
    return run_to_end(gen)

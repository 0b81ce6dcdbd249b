"""Segment an image, a stack or a volume: overlap-tile prediction, then post-processing.

:func:`segment` (a generator of :class:`~napari_unet.core.events.TileDone` progress events) and
:func:`segment_image` (its plain-function form) are what the Segment widget, the CLI and batch jobs
call; :func:`summarize` says in words what a result holds. A 2D U-Net works plane by plane (memory
holds one plane's probabilities at a time, the output is written into ``out``, numpy or zarr,
plane by plane); a 3D U-Net predicts each (Z, Y, X) volume as a whole.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from napari_unet.core.device import resolve_device
from napari_unet.core.events import TileDone, relay, run_to_end
from napari_unet.core.modelfile.files import UNetModel
from napari_unet.core.modelfile.normalization import Normalization, without_integer_offset
from napari_unet.core.network.unet import UNet
from napari_unet.core.postprocess.instances import (
    NEEDS_PROBABILITIES,
    instances_from_semantic,
    semantic_labels,
)
from napari_unet.core.postprocess.prior import adapt_background_prior
from napari_unet.core.predict.checks import as_image
from napari_unet.core.predict.layout import infer_layout
from napari_unet.core.predict.predict2d import predict
from napari_unet.core.predict.tiles import auto_tile_size, plan_tiles

OUTPUT_TYPES = ("instances", "semantic", "probabilities")


def output_shape(image_shape: tuple[int, ...], layout_axes: str, output: str, num_classes: int
                 ) -> tuple[int, ...]:
    planes = tuple(s for s, a in zip(image_shape, layout_axes, strict=True) if a not in "YXC")
    yx = (image_shape[layout_axes.index("Y")], image_shape[layout_axes.index("X")])
    return planes + ((num_classes,) if output == "probabilities" else ()) + yx


def segment(
    image: Any,
    model: UNetModel | UNet,
    *,
    output: str = "instances",
    axes: str | None = None,
    rgb: bool | None = None,
    tile_size: int | tuple[int, int] | None = None,
    padding: str = "mirror",
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    tta: bool = False,
    out: Any = None,
    volume: bool = False,
    spacing: tuple[float, float, float] | None = None,
) -> Generator[TileDone, None, Any]:
    """Segment an image of any size tile by tile: a generator of progress events.

    A model whose post-processing records the background share it was trained on has each plane's
    probabilities re-weighted to that plane's own share first
    (:mod:`~napari_unet.core.postprocess.prior`; all three outputs). A 32- or 64-bit integer image
    whose values lie beyond float precision (a uint64 image above 2**53) is read minus its offset,
    computed in integers (:func:`~napari_unet.core.modelfile.normalization.without_integer_offset`):
    it segments as the same image without the offset. The input is never modified.

    Parameters
    ----------
    image : array-like
        numpy, memmap, dask, zarr, a torch tensor or nested lists, of shape (Y, X), (C, Y, X),
        (Y, X, 3|4), or with leading plane axes ((Z, Y, X), (T, Z, Y, X), ...). Any integer,
        boolean or float dtype; NaN/inf and axes of length 0 are refused
        (:func:`~napari_unet.core.predict.checks.as_image`).
    model : UNetModel or UNet
        A :class:`~napari_unet.core.modelfile.files.UNetModel` (its normalisation and
        post-processing are used) or a bare network (default normalisation, no post-processing
        settings). A 3D U-Net segments every (Z, Y, X) volume as a whole.
    output : {"instances", "semantic", "probabilities"}, default "instances"
        "instances": uint16 (uint32 above 65534 objects) labels of shape (*planes, Y, X),
        touching objects separated, ids restarting at 1 in each plane (each volume for a 3D
        U-Net, or across z with ``volume``); "semantic": uint8 class ids (*planes, Y, X);
        "probabilities": float32 softmax (*planes, classes, Y, X).
    axes : str, optional
        The image's axes, e.g. "YX", "ZYX", "CYX", "YXC", "TCYX"; None guesses them from the
        shape and the model's input channels
        (:func:`~napari_unet.core.predict.layout.infer_layout`).
    rgb : bool, optional
        True: the last axis is colour (napari knows this of its layers).
    tile_size : int or (int, int), optional
        The network's input tile in pixels; lowered to the nearest valid size; None chooses it
        from the device's free memory. Below the model's smallest tile: ValueError.
    padding : {"mirror", "zero"}, default "mirror"
        Context beyond the image border: mirrored (the paper) or constant (the plane's median).
    device : str or torch.device, default "auto"
        "auto" (CUDA, then MPS, then the CPU), "cpu", "cuda", "mps".
    batch_size : int, optional
        Tiles per forward pass (default 1 on the CPU, 4 on a GPU).
    tta : bool, default False
        Average over the 8 flips and 90-degree rotations of each tile (8x the compute; still
        independent of the tile size).
    out : array-like, optional
        A preallocated numpy or zarr array of the output's shape and dtype, written plane by
        plane (2D U-Net only; not with ``volume``).
    volume : bool, default False
        The planes are the z-slices of one (Z, Y, X) volume: instances become 3D objects, linked
        across z by :func:`~napari_unet.core.postprocess.linking.stitch_planes` (one id per
        object). Needs ``output="instances"`` and exactly one plane axis.
    spacing : (float, float, float), optional
        The (z, y, x) voxel size (a layer's scale) for a 3D U-Net's 3D instances (growing and
        watershed distances, :func:`~napari_unet.core.postprocess.instances.instances_from_semantic`);
        linking planes by overlap needs none.

    Yields
    ------
    TileDone
        After each batch of tiles: ``done`` of ``total`` over all tiles of all planes.

    Returns
    -------
    numpy.ndarray or array-like
        The output (``out`` when given), of the shape and dtype ``output`` says.

    Raises
    ------
    ValueError
        An unknown ``output`` or ``padding``, axes that do not fit the image, a tile below the
        model's smallest, ``volume`` with an unsuitable image or output, ``out`` of the wrong
        shape; the message names the argument and what was expected.
    TypeError
        An image that is not array-like.
    """
    if output not in OUTPUT_TYPES:
        raise ValueError(f"output must be one of {OUTPUT_TYPES}, got {output!r}")
    image = as_image(image)
    # a 32/64-bit integer image beyond float precision (uint64 above 2**53): read minus its
    # offset, in integers (normalize.py), or its contrast is lost
    image = without_integer_offset(
        image, model.normalization if isinstance(model, UNetModel) else Normalization())
    cfg = model.config
    if cfg.dims == 3:  # a 3D U-Net: every (Z, Y, X) volume as a whole
        return (yield from segment_volumes(image, model, output=output, axes=axes,
                                           tile_size=tile_size, padding=padding, device=device,
                                           tta=tta, out=out, spacing=spacing))
    layout = infer_layout(tuple(image.shape), cfg.in_channels, axes, rgb)
    if volume and (output != "instances" or len(layout.plane_axes) != 1 or out is not None):
        raise ValueError(
            "volume=True makes 3D instances of one (Z, Y, X) volume in memory: it needs "
            f"output='instances', exactly one axis besides Y, X (and channels) (got axes "
            f"{layout.axes!r}) and no out array (zarr output)")
    dev = resolve_device(device)
    if tile_size is None:
        tile_size = auto_tile_size(cfg, dev, batch_size or (1 if dev.type == "cpu" else 4))
    shape = tuple(image.shape)
    plane_axes = layout.plane_axes
    plane_shape = tuple(shape[a] for a in plane_axes)
    h, w = shape[layout.y], shape[layout.x]
    n_tiles = len(plan_tiles(cfg, (h, w), tile_size))
    planes = list(np.ndindex(*plane_shape)) if plane_shape else [()]
    total = n_tiles * len(planes)
    oshape = output_shape(shape, layout.axes, output, cfg.num_classes)
    post = model.postprocessing if isinstance(model, UNetModel) else None
    # the 2D plane's own axes, in source order
    plane_axes_str = "".join(a for a in layout.axes if a in "YXC")
    if out is None:
        out = None  # allocated after the first plane, when the instance dtype is known
    elif tuple(out.shape) != oshape:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {oshape}")
    adapt = post is not None and post.background_prior is not None  # core/prior.py
    done = 0
    for pi, pidx in enumerate(planes):
        key: list[Any] = [slice(None)] * len(shape)
        for ax, i in zip(plane_axes, pidx, strict=True):
            key[ax] = i
        plane = image[tuple(key)]
        mode = "semantic" if output in ("semantic", "instances") and not _needs_probs(post, output) \
            and not adapt else "probabilities"
        gen = predict(plane, model, axes=plane_axes_str, output=mode, tile_size=tile_size,
                      padding=padding, device=dev, batch_size=batch_size, tta=tta)
        result = yield from relay(gen, lambda ev, done=done, pi=pi: replace(
            ev, done=done + ev.done, total=total, plane=pi, planes=len(planes)))
        done += n_tiles
        if adapt:  # the plane's own background share (EM), on the stitched whole plane
            result, _ = adapt_background_prior(result, post.background_prior)
        if output == "instances":
            sem = result if mode == "semantic" else semantic_labels(result)
            fgp = None if mode == "semantic" else result[list(post.instance_classes)].sum(0)
            result = instances_from_semantic(sem, post, fgp, None if mode == "semantic" else result)
        elif output == "semantic" and mode == "probabilities":
            result = semantic_labels(result)
        if out is None:
            dtype = result.dtype if output != "instances" else np.uint32 if len(planes) > 1 else result.dtype
            out = np.zeros(oshape, dtype)
        out[pidx] = result
    if volume:
        from napari_unet.core.postprocess.linking import stitch_planes

        out = stitch_planes(out)
    if output == "instances" and isinstance(out, np.ndarray) and out.dtype == np.uint32 and out.max() < 65535:
        out = out.astype(np.uint16)
    return out


def segment_volumes(image: Any, model: UNetModel | UNet, *, output: str = "instances",
                    axes: str | None = None, tile_size: int | tuple[int, ...] | None = None,
                    padding: str = "mirror", device: str | torch.device = "auto",
                    tta: bool = False, out: Any = None,
                    spacing: tuple[float, float, float] | None = None) -> Generator[TileDone, None, Any]:
    """:func:`segment` with a 3D U-Net: each (Z, Y, X) volume (a (T, Z, Y, X) stack: each time
    point) is predicted as a whole by exact 3D overlap-tiles (:mod:`~napari_unet.core.predict.predict3d`); instances are
    3D objects (one id per object in each volume), in the layout of plane-by-plane output."""
    from napari_unet.core.predict.predict3d import predict_volume

    if tta:
        raise ValueError("test-time augmentation (tta) is for 2D models; a 3D model predicts "
                         "each volume once: switch tta off")
    if spacing is not None and len(tuple(spacing)) != 3:
        raise ValueError(f"spacing is the (z, y, x) voxel size of the volume, got {spacing!r}")
    post = model.postprocessing if isinstance(model, UNetModel) else None
    adapt = post is not None and post.background_prior is not None
    mode = "semantic" if output in ("semantic", "instances") and not _needs_probs(post, output) \
        and not adapt else "probabilities"
    direct = out if output == mode else None  # streamed tile by tile (zarr: bounded memory)
    result = yield from predict_volume(image, model, axes=axes, output=mode, tile_size=tile_size,
                                       padding=padding, device=device, out=direct)
    if output == mode and not adapt:
        return result
    rest = result.shape[:-4] if mode == "probabilities" else result.shape[:-3]
    for ridx in (np.ndindex(*rest) if rest else [()]):
        r = result[ridx]
        if mode == "probabilities":  # (Z, K, Y, X) -> (K, Z, Y, X)
            r = np.moveaxis(np.asarray(r), 1, 0)
            if adapt:
                k, z, h, w = r.shape
                r = adapt_background_prior(r.reshape(k, z * h, w), post.background_prior)[0]
                r = r.reshape(k, z, h, w)
        if output == "instances":
            sem = r if mode == "semantic" else semantic_labels(r)
            fgp = None if mode == "semantic" else r[list(post.instance_classes)].sum(0)
            res = instances_from_semantic(sem, post, fgp, None if mode == "semantic" else r,
                                          spacing=spacing)
        else:
            res = semantic_labels(r) if output == "semantic" else np.moveaxis(r, 0, 1)
        if out is None:
            shape = rest + res.shape
            out = np.zeros(shape, np.uint32 if output == "instances" else res.dtype)
        out[ridx] = res
    if output == "instances" and isinstance(out, np.ndarray) and out.max(initial=0) < 65535:
        out = out.astype(np.uint16)
    return out


def _needs_probs(post: Any, output: str) -> bool:
    return output == "instances" and post is not None and post.split in NEEDS_PROBABILITIES


def segment_image(image: Any, model: UNetModel | UNet, **kwargs: Any) -> Any:
    """Segment an image and return the result: the plain-function form of :func:`segment`.

    Parameters
    ----------
    image : array-like
        (Y, X), (C, Y, X), (Y, X, 3|4) or with leading plane axes; any integer, boolean or float
        dtype (see :func:`segment`).
    model : UNetModel or UNet
        The model, e.g. from :func:`~napari_unet.core.exchange.opening.load_model`.
    **kwargs
        Keyword arguments of :func:`segment` (``output``, ``axes``, ``tile_size``, ``padding``,
        ``device``, ``tta``, ``volume``, ``spacing``, ...).

    Returns
    -------
    numpy.ndarray
        Instances: uint16/uint32 labels (*planes, Y, X), 0 = background; semantic: uint8 class
        ids (*planes, Y, X); probabilities: float32 (*planes, classes, Y, X).

    Raises
    ------
    ValueError
        As :func:`segment`.

    Examples
    --------
    >>> from napari_unet import load_model, segment_image
    >>> labels = segment_image(image, load_model("nuclei"), output="instances")  # doctest: +SKIP
    """
    gen = segment(image, model, **kwargs)
    return run_to_end(gen)


@dataclass(frozen=True)
class ResultSummary:
    """What a segmentation found, in words for the user (see :func:`summarize`).

    ``objects``: instances found (None for semantic and probability output); ``fractions``: the
    share of the pixels of each class but the background (semantic output); ``text``: e.g.
    "117 objects", "nucleus: 23.4% of the pixels" ("" for probabilities); ``empty``: nothing was
    found (0 objects, or no pixel of any class but the background)."""

    objects: int | None
    fractions: tuple[float, ...]
    text: str
    empty: bool


def _count_ids(labels: np.ndarray) -> int:
    """Distinct non-zero ids of a non-negative integer labels array."""
    a = np.asarray(labels).ravel()
    if a.size == 0:
        return 0
    top = int(a.max())
    if top <= 4 * a.size + 65536:  # ids are small: count them without sorting
        return int(np.count_nonzero(np.bincount(a, minlength=1)[1:]))
    ids = np.unique(a)
    return int(np.count_nonzero(ids))


def _percent(f: float) -> str:
    return "0%" if f == 0 else "<0.1%" if f < 0.001 else f"{100 * f:.1f}%"


def summarize(result: Any, output: str, *, class_names: tuple[str, ...] | None = None,
              object_ndim: int | None = None) -> ResultSummary:
    """Count what ``result`` (the output of :func:`segment`) holds.

    instances: the objects. ``object_ndim`` says over how many trailing axes one id space goes:
    2 when ids restart in every plane of a stack (plane-by-plane segmentation), 3 when they
    restart in every volume of a (T, Z, Y, X) series (a 3D U-Net); None (default): the whole
    array (one image, or 3D objects linked across z); the counts of the parts are summed.
    semantic: the share of the pixels of each class but class 0, named by ``class_names`` (the
    model's ``config.class_names``; a nameless 2-class model's is "foreground"). probabilities:
    nothing is counted.
    """
    if output not in OUTPUT_TYPES:
        raise ValueError(f"output must be one of {OUTPUT_TYPES}, got {output!r}")
    if output == "probabilities":
        return ResultSummary(None, (), "", False)
    a = np.asarray(result)
    if output == "instances":
        d = a.ndim if object_ndim is None else min(int(object_ndim), a.ndim)
        per = [_count_ids(p) for p in a.reshape(-1, *a.shape[a.ndim - d:])]
        n, parts, empty = sum(per), len(per), sum(1 for c in per if c == 0)
        where = ""
        if parts > 1:
            what = "planes" if d == 2 else "volumes"
            where = f" in {parts} {what}" + (f" ({empty} of them without any)"
                                             if 0 < empty < parts else "")
        return ResultSummary(n, (), f"{n} object{'' if n == 1 else 's'}{where}", n == 0)
    k = max(len(class_names or ()), int(a.max(initial=0)) + 1, 2)
    counts = np.bincount(a.ravel(), minlength=k)[:k]
    fractions = tuple(float(c) / max(1, a.size) for c in counts[1:])
    names = list(class_names or ())[1:k]
    names += [f"class {i}" for i in range(len(names) + 1, k)]
    if k == 2 and names == ["class 1"]:
        names = ["foreground"]
    text = ", ".join(f"{nm}: {_percent(f)}" for nm, f in zip(names, fractions, strict=True))
    return ResultSummary(None, fractions, text + " of the pixels", not any(fractions))

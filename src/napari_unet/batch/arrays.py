"""Several in-memory arrays (napari layers) segmented as one job with one progress total."""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_unet.core.events import ItemDone, TileDone, relay


@dataclass(frozen=True)
class ArrayDone(ItemDone):
    """An :class:`ItemDone` that carries the finished result (None when the item failed), so a
    widget can add each layer as soon as it is ready and keep the finished ones after a Cancel."""

    result: Any = field(default=None, repr=False, compare=False)


def segment_arrays(
    images: Mapping[str, Any],
    model: Any,
    *,
    output_type: str = "instances",
    options: Mapping[str, Mapping[str, Any]] | None = None,
    **segment_kwargs: Any,
) -> Generator[TileDone | ArrayDone, None, dict[str, Any]]:
    """Segment several in-memory images as one job: a generator of progress events.

    An image that fails (wrong shape for the model, NaN values...) is reported and the job goes
    on. Inputs are not modified.

    Parameters
    ----------
    images : mapping of str to array-like
        Name -> image (e.g. napari layers' data), shapes and dtypes as for
        :func:`~napari_unet.core.segment.segment`.
    model : UNetModel or UNet
        The model.
    output_type : {"instances", "semantic", "probabilities"}, default "instances"
        What each result holds.
    options : mapping of str to mapping, optional
        Per-image keyword arguments for :func:`~napari_unet.core.segment.segment` (e.g.
        ``{"rgb image": {"rgb": True}}``).
    **segment_kwargs
        Keyword arguments of :func:`~napari_unet.core.segment.segment` for all images.

    Yields
    ------
    TileDone or ArrayDone
        Tiles done over all images (one progress bar); after each image an :class:`ArrayDone`
        (status "done" with ``result``, or "failed" with the error message).

    Returns
    -------
    dict of str to numpy.ndarray
        Name -> result, for the images that succeeded.
    """
    from dataclasses import replace

    from napari_unet.core.device import resolve_device
    from napari_unet.core.predict.layout import infer_layout
    from napari_unet.core.predict.tiles import auto_tile_size, plan_tiles
    from napari_unet.core.segment import segment

    kw = dict(segment_kwargs)
    dev = resolve_device(kw.pop("device", "auto"))
    cfg = model.config
    if kw.get("tile_size") is None:
        kw["tile_size"] = auto_tile_size(cfg, dev, kw.get("batch_size") or (1 if dev.type == "cpu" else 4))
    names = list(images)
    opts = {n: {**kw, **dict((options or {}).get(n, {}))} for n in names}
    tiles: dict[str, int] = {}
    for n in names:
        try:
            arr = images[n]
            lay = infer_layout(tuple(arr.shape), cfg.in_channels, opts[n].get("axes"), opts[n].get("rgb"))
            planes = int(np.prod([arr.shape[a] for a in lay.plane_axes])) if lay.plane_axes else 1
            tiles[n] = planes * len(plan_tiles(cfg, (arr.shape[lay.y], arr.shape[lay.x]),
                                               opts[n]["tile_size"]))
        except Exception:
            tiles[n] = 0  # fails again, and is reported, when its turn comes
    total = sum(tiles.values())
    done = 0
    results: dict[str, Any] = {}
    for i, n in enumerate(names):
        try:
            gen = segment(images[n], model, output=output_type, device=dev, **opts[n])
            result = yield from relay(gen, lambda ev, done=done: replace(ev, done=done + ev.done, total=total))
        except (ValueError, TypeError) as exc:
            done += tiles[n]
            yield ArrayDone(i + 1, len(names), n, "failed", str(exc))
            continue
        done += tiles[n]
        results[n] = result
        yield ArrayDone(i + 1, len(names), n, "done", "", result)
    return results



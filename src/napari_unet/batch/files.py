"""Files, globs and folders segmented one by one into an output folder: resumable, atomic, inputs
never overwritten, unreadable inputs reported and skipped."""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.batch.images import (
    expand_inputs,
    is_complete,
    is_zarr_path,
    output_path_for,
    read_image,
    write_image,
)
from napari_unet.batch.zarr_blocks import segment_to_zarr
from napari_unet.core.events import ItemDone, TileDone


def segment_files(
    paths: Sequence[str | os.PathLike],
    model: Any,
    output: str | os.PathLike,
    *,
    output_type: str = "instances",
    overwrite: bool = False,
    zarr_output: bool | None = None,
    client: Any = None,
    block_size: int | tuple[int, int] = 1024,
    **segment_kwargs: Any,
) -> Generator[TileDone | ItemDone, None, dict[str, str]]:
    """Segment image files into an output file or folder: a generator of progress events.

    Each result goes to ``output/<name>_<output_type>.tif`` (``.zarr`` for zarr inputs, for a
    ``.zarr`` output and for distributed jobs), written under a temporary name and renamed when
    complete. An existing result (a non-empty TIFF, a zarr array) is not recomputed (status
    "skipped") unless ``overwrite``; an empty folder in its place is replaced, anything else is
    reported and kept. A zarr output being written by another run is refused (its lock). Unreadable
    or unsuitable inputs are reported (status "failed") and the run goes on; a result that would
    replace an input is refused.

    Parameters
    ----------
    paths : sequence of str or os.PathLike
        Files (TIFF or zarr), glob patterns or folders (see :func:`~napari_unet.batch.images.expand_inputs`).
    model : UNetModel
        The model (e.g. from :func:`~napari_unet.core.exchange.opening.load_model`).
    output : str or os.PathLike
        A file for one input, else a folder.
    output_type : {"instances", "semantic", "probabilities"}, default "instances"
        What each result holds (dtypes as in :func:`~napari_unet.core.segment.segment`).
    overwrite : bool, default False
        Recompute results that exist.
    zarr_output : bool, optional
        Force zarr (True) or TIFF (False) results; None decides by input and output.
    client : dask.distributed.Client, optional
        Runs the blocks of zarr results on a dask cluster (the files must be reachable from every
        worker).
    block_size : int or (int, int), default 1024
        Pixels per block side of zarr results (:func:`~napari_unet.batch.zarr_blocks.segment_to_zarr`):
        memory grows with the block, not the image.
    **segment_kwargs
        Keyword arguments of :func:`~napari_unet.core.segment.segment` (``axes``, ``tile_size``,
        ``padding``, ``device``, ``tta``, ...).

    Yields
    ------
    TileDone or ItemDone
        Tiles done over the whole job; one :class:`~napari_unet.core.events.ItemDone` per input
        (status "done", "skipped" or "failed" with its message).

    Returns
    -------
    dict of str to str
        Input -> output path, or ``"error: ..."`` for an input that failed.
    """
    from napari_unet.core.segment import segment

    files, problems = expand_inputs(paths)
    out = Path(output)
    n = len(files) + len(problems)
    results: dict[str, str] = {}
    k = 0
    for pattern, problem in problems:
        k += 1
        results[pattern] = f"error: {problem}"
        yield ItemDone(k, n, pattern, "failed", problem)
    inputs = {p.resolve() for p in files}
    single = len(files) == 1 and len(problems) == 0
    for p in files:
        k += 1
        as_zarr = zarr_output if zarr_output is not None else (
            client is not None or is_zarr_path(p) or (single and out.suffix.lower() == ".zarr"))
        dest = output_path_for(p, out, 1 if single else n, output_type, ".zarr" if as_zarr else ".tif")
        if as_zarr and not dest.name.lower().endswith(".zarr"):
            msg = f"this job writes zarr, so the output must end in .zarr, not {dest.name!r}"
            results[str(p)] = f"error: {msg}"
            yield ItemDone(k, n, str(p), "failed", msg)
            continue
        if as_zarr and segment_kwargs.get("volume"):
            msg = ("3D instances (--volume) are made in memory and written as TIFF: drop --zarr, "
                   "--workers and --scheduler, or segment plane by plane without --volume")
            results[str(p)] = f"error: {msg}"
            yield ItemDone(k, n, str(p), "failed", msg)
            continue
        if dest.resolve() in inputs:
            msg = f"refusing to overwrite the input file {str(dest)!r}"
            results[str(p)] = f"error: {msg}"
            yield ItemDone(k, n, str(p), "failed", msg)
            continue
        if not overwrite and is_complete(dest):
            results[str(p)] = str(dest)
            yield ItemDone(k, n, str(p), "skipped", str(dest))
            continue
        if not overwrite and dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
            # an empty folder is replaced; anything else that is not a finished result is kept
            kind = "a folder without zarr metadata" if dest.is_dir() else "not a finished result"
            msg = (f"{str(dest)!r} exists but is {kind}: move it away, or rerun with overwrite "
                   f"(--overwrite) to replace it")
            results[str(p)] = f"error: {msg}"
            yield ItemDone(k, n, str(p), "failed", msg)
            continue
        try:
            if as_zarr:
                yield from segment_to_zarr(p, model, dest, output_type=output_type, client=client,
                                           block_size=block_size, **segment_kwargs)
            else:
                image = read_image(p)
                result = yield from segment(image, model, output=output_type, **segment_kwargs)
                write_image(dest, np.asarray(result))
        except Exception as exc:  # one bad input must not stop the run
            results[str(p)] = f"error: {exc}"
            yield ItemDone(k, n, str(p), "failed", str(exc) or type(exc).__name__)
            continue
        results[str(p)] = str(dest)
        yield ItemDone(k, n, str(p), "done", str(dest))
    return results

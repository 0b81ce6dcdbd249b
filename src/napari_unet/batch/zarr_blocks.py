"""The zarr block engine: one image (numpy, dask, zarr, a file) into a zarr array, block by block,
in this process or on a dask cluster; equal to whole-image ``segment``."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.batch.images import commit_output, output_lock, partial_path, read_image
from napari_unet.batch.instances import block_instances
from napari_unet.batch.workers import BlockJob, open_source, open_zarr, run_blocks, worker_net
from napari_unet.core.events import TileDone


def _task_predict(job: BlockJob, model: Any, pi: int, i: int, out_path: str, output: str) -> int:
    from napari_unet.core.predict.blocks import predict_block

    net = worker_net(job, model)
    plane = job.planes[pi]
    res = predict_block(open_source(job), net, job.grid, i, layout=job.layout, plane=plane,
                        stats=job.stats[plane], output=output, padding=job.padding,
                        device=next(net.parameters()).device, batch_size=job.batch_size, tta=job.tta)
    y0, x0, h, w = job.grid.region(i)
    lead = (slice(None),) if output == "probabilities" else ()
    open_zarr(out_path)[plane + lead + (slice(y0, y0 + h), slice(x0, x0 + w))] = res
    return job.grid.tiles_in(i)



def segment_to_zarr(
    image: Any,
    model: Any,
    output: str | os.PathLike,
    *,
    output_type: str = "instances",
    axes: str | None = None,
    rgb: bool | None = None,
    tile_size: int | tuple[int, int] | None = None,
    block_size: int | tuple[int, int] = 1024,
    padding: str = "mirror",
    device: str = "auto",
    batch_size: int | None = None,
    client: Any = None,
    grow_halo: int = 64,
    tta: bool = False,
    spacing: tuple[float, float, float] | None = None,
) -> Generator[TileDone, None, Path]:
    """Segment one image block by block into a zarr array: a generator of progress events.

    The result equals :func:`~napari_unet.core.segment.segment`'s (instances: up to a renumbering;
    ids restart at 1 in each plane; uint32). It is written atomically (a temporary name, renamed
    when complete). A 3D model (3D U-Net) goes volume by volume instead
    (:mod:`~napari_unet.batch.zarr_volumes`); not on a cluster. Peak memory: a few blocks and their
    halos, plus label tables (8 bytes per object).

    Parameters
    ----------
    image : array-like or str or os.PathLike
        A numpy, dask or zarr array, or the path of a TIFF/zarr file (required with ``client``: the
        workers open it themselves); shapes and dtypes as for :func:`~napari_unet.core.segment.segment`.
    model : UNetModel
        The model.
    output : str or os.PathLike
        The zarr array to write.
    output_type : {"instances", "semantic", "probabilities"}, default "instances"
        What the result holds.
    axes, rgb, tile_size, padding, device, batch_size
        As for :func:`~napari_unet.core.segment.segment`.
    block_size : int or (int, int), default 1024
        Pixels per block side, rounded to a multiple of the tile step; also the zarr chunks.
    client : dask.distributed.Client, optional
        Runs the blocks on its workers. The image, the output folder and its scratch space must be
        reachable from every worker (a shared file system).
    grow_halo : int, default 64
        First window margin (pixels) for growing objects into grow classes; widened where needed.
    tta : bool, default False
        Average over the 8 flips/rotations of each tile (8x the compute; 2D models only).
    spacing : (float, float, float), optional
        A 3D model's (z, y, x) voxel size for its 3D instances.

    Yields
    ------
    TileDone
        Tiles predicted, then blocks post-processed.

    Returns
    -------
    pathlib.Path
        The output path.

    Raises
    ------
    ValueError
        An unknown ``output_type`` or ``padding``; a model whose post-processing needs the whole
        plane (a whole-plane watershed, a background prior); a 3D model or ``tta`` on a cluster; a
        distributed job on an in-memory image.
    """
    import zarr

    from napari_unet.core.device import resolve_device
    from napari_unet.core.modelfile.files import Postprocessing, UNetModel, make_parent
    from napari_unet.core.predict.blocks import block_grid, plane_stats
    from napari_unet.core.predict.checks import as_image
    from napari_unet.core.predict.inference import PADDING_MODES
    from napari_unet.core.predict.layout import infer_layout
    from napari_unet.core.predict.tiles import auto_tile_size
    from napari_unet.core.segment import OUTPUT_TYPES

    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if model.config.dims == 3:  # a 3D U-Net: volume by volume (batch/volumes.py)
        if client is not None:
            raise ValueError("a 3D model segments whole volumes in this process: drop --workers and "
                             "--scheduler (zarr output works without them)")
        if tta:
            raise ValueError("test-time augmentation (tta) is for 2D models: switch it off")
        from napari_unet.batch.zarr_volumes import volumes_to_zarr

        return (yield from volumes_to_zarr(image, model, output, output_type=output_type, axes=axes,
                                           tile_size=tile_size, padding=padding, device=device,
                                           spacing=spacing, chunk=int(np.max(block_size))))
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
    post = model.postprocessing if isinstance(model, UNetModel) else Postprocessing()
    from napari_unet.core.postprocess.instances import NEEDS_PROBABILITIES

    if output_type == "instances" and post.split in NEEDS_PROBABILITIES:
        raise ValueError("this model separates instances by a watershed over the whole plane, which "
                         "cannot be done block by block: write 'semantic' or 'probabilities' to zarr, "
                         "or segment to a TIFF output (in memory)")
    if post.background_prior is not None:
        raise ValueError("this model re-weights each whole plane to that plane's own background share "
                         "(it was trained with prior adaptation), which cannot be done block by block: "
                         "segment to a TIFF output (in memory), or train the model with "
                         "--no-prior-adaptation for block-wise zarr output")
    dest = Path(output)
    if isinstance(image, (str, os.PathLike)):
        arr = as_image(read_image(image), f"the image {str(image)!r}")
        # workers open the file themselves; in this process the opened array is used
        src: Any = str(Path(image).resolve()) if client is not None else arr
    else:
        if client is not None:
            raise ValueError("a distributed job reads its image from a file every worker can reach: "
                             "pass the image's path, not an array")
        src = arr = as_image(image)
    cfg = model.config
    layout = infer_layout(tuple(arr.shape), cfg.in_channels, axes, rgb)
    dev = resolve_device(device) if client is None else None
    if batch_size is None:
        batch_size = 1 if dev is None or dev.type == "cpu" else 4
    if tile_size is None:  # resolved once here, so that every block uses the same tiles
        import torch

        tile_size = auto_tile_size(cfg, dev or torch.device("cpu"), batch_size)
    h, w = arr.shape[layout.y], arr.shape[layout.x]
    grid = block_grid(cfg, (h, w), tile_size, block_size)
    plane_shape = tuple(arr.shape[a] for a in layout.plane_axes)
    planes = list(np.ndindex(*plane_shape)) if plane_shape else [()]
    norm = getattr(model, "normalization", None)
    if norm is None:
        from napari_unet.core.modelfile.normalization import Normalization

        norm = Normalization()
    stats = {pl: plane_stats(arr, layout, pl, norm, padding) for pl in planes}
    job = BlockJob(uuid.uuid4().hex, src, axes, rgb, padding, str(dev or device), batch_size, grid, layout,
               stats, planes, bool(tta))

    make_parent(dest)
    with output_lock(dest):
        partial = partial_path(dest)
        scratch = dest.with_name(f".{dest.name}.scratch")
        for d in (partial, scratch):
            if d.exists():
                shutil.rmtree(d)
        bh, bw = grid.block
        ones = (1,) * len(plane_shape)

        def create(path: Path, dtype: Any, classes: int | None = None) -> str:
            shape = plane_shape + ((classes,) if classes else ()) + (h, w)
            chunks = ones + ((classes,) if classes else ()) + (bh, bw)
            zarr.open_array(store=str(path), mode="w", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
            return str(path)

        if output_type == "probabilities":
            pred_path = create(partial, np.float32, cfg.num_classes)
        elif output_type == "semantic":
            pred_path = create(partial, np.uint8)
        else:
            pred_path = create(scratch / "semantic.zarr", np.uint8)
        mode = "probabilities" if output_type == "probabilities" else "semantic"
        n_tiles = sum(grid.tiles_in(i) for i in range(len(grid))) * len(planes)
        grow = output_type == "instances" and bool(post.grow_classes)
        post_passes = 0 if output_type != "instances" else (4 if grow else 2)
        total = n_tiles + post_passes * len(grid) * len(planes)
        dev_name = str(dev) if dev is not None else "dask"
        model_ref = client.scatter(model, broadcast=True) if client is not None else model
        done = 0
        try:
            calls = [(job, model_ref, pi, i, pred_path, mode) for pi in range(len(planes)) for i in range(len(grid))]
            for k, tiles in run_blocks(_task_predict, calls, client):
                done += tiles
                yield TileDone(done, total, calls[k][2], len(planes), dev_name)
            if output_type == "instances":
                for ev_done in block_instances(job.grid, job.planes, post, pred_path, partial, scratch, create, client, grow, grow_halo):
                    done += ev_done
                    yield TileDone(done, total, 0, len(planes), dev_name)
            commit_output(partial, dest)
        finally:
            if scratch.exists():
                shutil.rmtree(scratch, ignore_errors=True)
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
            if client is not None:
                client.cancel(model_ref)
    return dest



"""Many images: opened arrays, files on disk (TIFF, zarr), images larger than memory, dask clusters.

Everything here drives the core generators and yields the same small events (``TileDone`` for work
done, ``ItemDone`` per image), so a napari worker, the CLI and a test can all run it.

- :func:`segment_arrays`: several in-memory arrays (napari layers) in one job, one progress total.
- :func:`segment_files`: files, globs and folders (:func:`expand_inputs`); unreadable inputs are
  reported and skipped; outputs are written to a temporary name and renamed when complete, so a
  rerun skips what is done (resume) and never sees half a result; inputs are never overwritten.
- :func:`segment_to_zarr`: one image (numpy, dask, zarr, a file) into a zarr array, block by block:
  memory grows with the block, not the image. Blocks lie on the tile step (a multiple of the pooling
  grid) and read their own halo, so the result equals whole-image ``segment`` exactly. Instances are
  labelled per block and merged across block borders (union of the labels that touch across each
  border, solved as graph components with scipy), then grown and size-filtered block by block.
  Given a ``dask.distributed`` ``Client``, the blocks run on its workers (each deserialises the model
  once per job) and write into the zarr chunks they own: no write races.

Where it lives: ``images`` (reading and writing TIFF/zarr files, input patterns, output paths),
``arrays`` (in-memory arrays), ``files`` (files into an output folder), ``zarr_blocks`` (the zarr
block engine), ``zarr_volumes`` (a 3D model's volumes into zarr), ``instances`` (instance labels
across blocks), ``workers`` (in-process or dask tasks and what a worker caches). Every public name is importable from ``napari_unet.batch``.
"""

from __future__ import annotations

from napari_unet.batch.arrays import ArrayDone, segment_arrays
from napari_unet.batch.files import segment_files
from napari_unet.batch.images import (
    IMAGE_SUFFIXES,
    ImageReadError,
    OutputBusyError,
    expand_inputs,
    is_complete,
    output_lock,
    output_path_for,
    read_image,
    read_tiff,
    write_image,
)
from napari_unet.batch.instances import instances_to_zarr
from napari_unet.batch.workers import MODEL_LOADS
from napari_unet.batch.zarr_blocks import segment_to_zarr

__all__ = [
    "IMAGE_SUFFIXES",
    "MODEL_LOADS",
    "ArrayDone",
    "ImageReadError",
    "OutputBusyError",
    "expand_inputs",
    "instances_to_zarr",
    "is_complete",
    "output_lock",
    "output_path_for",
    "read_image",
    "read_tiff",
    "segment_arrays",
    "segment_files",
    "segment_to_zarr",
    "write_image",
]

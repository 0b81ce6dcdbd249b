"""Where block tasks run: in this process or on a dask.distributed cluster, with what each worker
process keeps between the tasks of one job (its opened image, its prepared network)."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_unet.batch.images import read_image

_WORKER_CACHE: dict[Any, Any] = {}
MODEL_LOADS: list[str] = []  # job tokens for which this process prepared a network (tests read it)


@dataclass
class BlockJob:
    """Everything a block task needs; small and picklable when ``source`` is a path."""

    token: str
    source: Any  # a path (str) or, in-process, any array
    axes: str | None
    rgb: bool | None
    padding: str
    device: str
    batch_size: int
    grid: Any  # core.predict.blocks.BlockGrid
    layout: Any  # core.predict.layout.Layout
    stats: dict[tuple[int, ...], np.ndarray]
    planes: list[tuple[int, ...]]
    tta: bool = False


def _for_job(job: BlockJob) -> None:
    """Forget what earlier jobs cached in this process (one job's network and image at a time)."""
    for k in [k for k in _WORKER_CACHE if k[1] != job.token]:
        del _WORKER_CACHE[k]


def open_source(job: BlockJob) -> Any:
    if not isinstance(job.source, str):
        return job.source
    key = ("source", job.token)
    if key not in _WORKER_CACHE:
        _for_job(job)
        _WORKER_CACHE[key] = read_image(job.source)
    return _WORKER_CACHE[key]


def worker_net(job: BlockJob, model: Any) -> Any:
    """The job's inference network, prepared once per process (per worker) and reused."""
    key = ("net", job.token)
    if key not in _WORKER_CACHE:
        import torch

        from napari_unet.core.device import resolve_device
        from napari_unet.core.predict.inference import inference_net

        _for_job(job)
        try:
            from distributed import get_worker

            torch.set_num_threads(max(1, int(get_worker().state.nthreads)))
        except (ImportError, ValueError, AttributeError):
            pass
        _WORKER_CACHE[key] = inference_net(model, resolve_device(job.device))
        MODEL_LOADS.append(job.token)
    return _WORKER_CACHE[key]


def open_zarr(path: str) -> Any:
    import zarr

    return zarr.open_array(store=path, mode="r+")



def run_blocks(fn: Callable, calls: list[tuple], client: Any, weights: Sequence[int] | None = None
         ) -> Generator[tuple[int, Any], None, None]:
    """Run ``fn(*args)`` for each args tuple, in this process or on a dask cluster, yielding
    (index, result) as each finishes. Closing the generator cancels what has not run."""
    if client is None:
        for k, args in enumerate(calls):
            yield k, fn(*args)
        return
    from distributed import as_completed

    futures = [client.submit(fn, *args, pure=False) for args in calls]
    where = {f.key: k for k, f in enumerate(futures)}
    try:
        for fut in as_completed(futures):
            yield where[fut.key], fut.result()
    finally:
        client.cancel([f for f in futures if not f.done()])



"""The Segment widget's job: plain data in, small events out (no Qt, no layers).

The Segment widget runs :func:`segment_jobs` in a napari ``thread_worker``. It queues several images
in one generator (one progress bar, one Cancel), yields :class:`JobProgress` after every tile batch
(so ``worker.quit()`` stops between tiles) and :class:`JobResult` when an image is complete; an image
that fails yields :class:`JobFailed` and the queue goes on.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from napari_unet._widgets._runner import explain
from napari_unet._widgets._state import load_in_worker


@dataclass(frozen=True)
class SegmentJob:
    """One image to segment: ``data`` is the layer's array (numpy or dask; level 0 of a pyramid)."""

    name: str
    data: Any
    rgb: bool = False
    spacing: tuple[float, float, float] | None = None  # the layer's (z, y, x) scale, for 3D models


@dataclass(frozen=True)
class JobProgress:
    index: int  # which job (0-based)
    count: int  # jobs in the queue
    name: str
    done: int  # tiles done in this job
    total: int  # tiles in this job
    plane: int
    planes: int
    device: str


@dataclass(frozen=True)
class JobResult:
    """A finished image: ``data`` the output array, ``axes`` the source's axes as the core read them
    (without an RGB colour axis; "C" marks a channel axis that the output does not have)."""

    index: int
    name: str
    data: Any
    axes: str
    summary: Any = None  # core.segment.ResultSummary: what was found, in words


@dataclass(frozen=True)
class JobFailed:
    index: int
    name: str
    message: str


@contextmanager
def one_core_for_the_viewer(device: str) -> Iterator[None]:
    """While a CPU job runs, let torch use all cores but one, so that napari's event loop keeps a
    core (with torch on every core of a 2-core machine the viewer's event loop ticked every ~40-60
    ms instead of 10 ms, and the job was no faster; see benchmarks/bench_responsiveness.py)."""
    import torch

    from napari_unet.core.device import usable_cores

    if device not in ("auto", "cpu") or (device == "auto" and torch.cuda.is_available()):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, usable_cores() - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def segment_jobs(
    jobs: list[SegmentJob],
    model: Any,
    model_name: str,
    *,
    output: str = "instances",
    tile_size: int | None = None,
    padding: str = "mirror",
    device: str = "auto",
    tta: bool = False,
    volume: bool = False,
) -> Generator[Any, None, int]:
    """Segment each job's image in turn; returns the number of images that succeeded.
    ``volume``: a (Z, Y, X) stack's instances are 3D objects linked across z (2D images are
    segmented as they are).

    ``model`` is a loaded UNetModel or the path of a model file (loaded here, then reported with
    :class:`~napari_unet._widgets._state.ModelLoaded` so the caller can cache it).
    """
    model = yield from load_in_worker(model, model_name)
    with one_core_for_the_viewer(device):
        return (yield from _segment_all(jobs, model, output, tile_size, padding, device, tta,
                                        volume))


def _segment_all(jobs: list[SegmentJob], model: Any, output: str, tile_size: int | None,
                 padding: str, device: str, tta: bool = False, volume: bool = False
                 ) -> Generator[Any, None, int]:
    from napari_unet.core.events import relay
    from napari_unet.core.predict.layout import infer_layout
    from napari_unet.core.segment import segment, summarize

    ok = 0
    for i, job in enumerate(jobs):
        try:
            layout = infer_layout(tuple(job.data.shape), model.config.in_channels, None, job.rgb)
            gen = segment(job.data, model, output=output, rgb=job.rgb, tile_size=tile_size,
                          padding=padding, device=device, tta=tta,
                          volume=volume and len(layout.plane_axes) > 0,
                          spacing=job.spacing)  # used by 3D models only
            result = yield from relay(gen, lambda ev, i=i, job=job: JobProgress(
                i, len(jobs), job.name, ev.done, ev.total, ev.plane, ev.planes, ev.device))
        except Exception as exc:  # one bad image does not stop the queue
            yield JobFailed(i, job.name, explain(exc))
            continue
        axes = layout.axes[:-1] if job.rgb and layout.axes.endswith("C") else layout.axes
        # ids restart in every plane (2D model, plane by plane) or volume (3D model); 3D objects
        # linked across z share one id space
        linked = volume and len(layout.plane_axes) > 0 and model.config.dims == 2
        per = None if linked else model.config.dims
        summary = summarize(result, output, class_names=model.config.class_names, object_ndim=per)
        ok += 1
        yield JobResult(i, job.name, result, axes, summary)
    return ok

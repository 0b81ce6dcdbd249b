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
"""

from __future__ import annotations

import glob
import os
import shutil
import uuid
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .core.events import ItemDone, TileDone, relay

IMAGE_SUFFIXES = (".tif", ".tiff", ".zarr")


class ImageReadError(ValueError):
    """An input file that cannot be read as an image."""


# ---------------------------------------------------------------------------- reading / writing
def _is_zarr_path(p: Path) -> bool:
    return p.name.lower().endswith(".zarr") or (
        p.is_dir() and ((p / ".zarray").exists() or (p / "zarr.json").exists()))


def read_image(path: str | os.PathLike, lazy: bool = True) -> Any:
    """Open a TIFF (memory-mapped when possible) or a zarr array; raises ImageReadError."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{str(p)!r} does not exist")
    try:
        if _is_zarr_path(p):
            import zarr

            z = zarr.open(str(p), mode="r")
            if hasattr(z, "shape"):
                return z
            # a group: take its first array
            arrays = list(z.arrays()) if hasattr(z, "arrays") else []
            if not arrays:
                raise ImageReadError(f"{str(p)!r} is a zarr group without arrays")
            return arrays[0][1]
        import tifffile

        data = None
        if lazy:
            try:
                data = tifffile.memmap(str(p), mode="r")
            except Exception:
                pass
        if data is None:
            data = tifffile.imread(str(p))
        if data.size == 0:  # tifffile reads some broken files as empty arrays, with a warning
            raise ImageReadError(f"cannot read {str(p)!r} as an image: the TIFF holds no image data")
        return data
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(f"cannot read {str(p)!r} as an image (TIFF or zarr expected): {exc}") from None


def write_image(path: str | os.PathLike, data: np.ndarray) -> Path:
    """Write ``data`` as TIFF (or zarr for a ``.zarr`` path) atomically: temporary name, then rename."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.name.lower().endswith(".zarr"):
        import zarr

        tmp = _partial_path(p)
        if tmp.exists():
            shutil.rmtree(tmp)
        z = zarr.open_array(store=str(tmp), mode="w", shape=data.shape, dtype=data.dtype, fill_value=0,
                            chunks=tuple(min(s, 1024) if i >= data.ndim - 2 else 1
                                         for i, s in enumerate(data.shape)))
        z[...] = data
        _commit(tmp, p)
        return p
    import tifffile

    from .core.io import atomic_write

    return atomic_write(p, lambda tmp: tifffile.imwrite(
        tmp, data, compression="zlib" if data.dtype != np.float32 else None))


def _partial_path(dest: Path) -> Path:
    """Where a zarr output is built before it is renamed to ``dest`` (hidden, same folder)."""
    return dest.with_name(f".{dest.name}.partial")


def _commit(tmp: Path, dest: Path) -> None:
    """Rename a finished zarr folder to its final name (replacing an older result)."""
    if dest.exists():
        shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
    os.replace(tmp, dest)


# ---------------------------------------------------------------------------- inputs
def expand_inputs(patterns: Iterable[str | os.PathLike]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files, glob patterns and folders -> (image paths, [(pattern, problem)]).

    A folder gives the .tif/.tiff/.zarr images directly inside it (sorted; hidden names such as
    unfinished outputs are left out); a glob (``*``, ``?``, ``[``, ``**``) is expanded here, so quoted
    patterns work on every shell; a zarr folder is one image. Duplicates are dropped, the order kept.
    Patterns that match nothing are returned as problems, not raised.
    """
    found: list[Path] = []
    problems: list[tuple[str, str]] = []
    for pat in patterns:
        s = str(pat)
        p = Path(s).expanduser()
        if p.exists():
            if p.is_dir() and not _is_zarr_path(p):
                images = sorted(q for q in p.iterdir()
                                if not q.name.startswith(".") and q.name.lower().endswith(IMAGE_SUFFIXES))
                if not images:
                    problems.append((s, "folder contains no .tif, .tiff or .zarr images"))
                found.extend(images)
            else:
                found.append(p)
        elif glob.has_magic(s):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(s), recursive=True))
            images = [m for m in matches if not m.name.startswith(".")
                      and (_is_zarr_path(m) or (m.is_file() and m.name.lower().endswith(IMAGE_SUFFIXES)))]
            if not images:
                problems.append((s, "no image matches this pattern"))
            found.extend(images)
        else:
            problems.append((s, "does not exist"))
    seen: set[Path] = set()
    unique = []
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, problems


def _stem(path: Path) -> str:
    name = path.name
    for suf in IMAGE_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def output_path_for(image_path: Path, output: Path, n_inputs: int, output_type: str,
                    suffix: str = ".tif") -> Path:
    """Where the result of ``image_path`` goes: ``output`` itself for a single input with a file
    suffix, else ``output/<stem>_<output_type><suffix>``."""
    if n_inputs == 1 and output.suffix.lower() in IMAGE_SUFFIXES:
        return output
    return output / f"{_stem(image_path)}_{output_type}{suffix}"


# ---------------------------------------------------------------------------- in-memory arrays
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
    """Segment several in-memory images (name -> array, e.g. napari layers) as one job.

    ``TileDone`` events count tiles over all images (one progress bar); after each image an
    :class:`ArrayDone` (status "done" with ``result``, or "failed" with the error message) follows.
    An image that fails (wrong shape for the model, NaN values...) is reported and the job goes on.
    ``options`` gives per-image keyword arguments for :func:`~napari_unet.core.segment.segment`
    (e.g. ``{"rgb image": {"rgb": True}}``); ``segment_kwargs`` apply to all.
    Returns {name: result} for the images that succeeded. Inputs are not modified.
    """
    from dataclasses import replace

    from .core.device import resolve_device
    from .core.segment import segment
    from .core.tiling import auto_tile_size, infer_layout, plan_tiles

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


# ---------------------------------------------------------------------------- block engine
_WORKER_CACHE: dict[Any, Any] = {}
MODEL_LOADS: list[str] = []  # job tokens for which this process prepared a network (tests read it)


@dataclass
class _Job:
    """Everything a block task needs; small and picklable when ``source`` is a path."""

    token: str
    source: Any  # a path (str) or, in-process, any array
    axes: str | None
    rgb: bool | None
    padding: str
    device: str
    batch_size: int
    grid: Any  # core.blocks.BlockGrid
    layout: Any  # core.tiling.Layout
    stats: dict[tuple[int, ...], np.ndarray]
    planes: list[tuple[int, ...]]
    tta: bool = False


def _for_job(job: _Job) -> None:
    """Forget what earlier jobs cached in this process (one job's network and image at a time)."""
    for k in [k for k in _WORKER_CACHE if k[1] != job.token]:
        del _WORKER_CACHE[k]


def _open_source(job: _Job) -> Any:
    if not isinstance(job.source, str):
        return job.source
    key = ("source", job.token)
    if key not in _WORKER_CACHE:
        _for_job(job)
        _WORKER_CACHE[key] = read_image(job.source)
    return _WORKER_CACHE[key]


def _worker_net(job: _Job, model: Any) -> Any:
    """The job's inference network, prepared once per process (per worker) and reused."""
    key = ("net", job.token)
    if key not in _WORKER_CACHE:
        import torch

        from .core.blocks import inference_net
        from .core.device import resolve_device

        _for_job(job)
        try:
            from distributed import get_worker

            torch.set_num_threads(max(1, int(get_worker().state.nthreads)))
        except (ImportError, ValueError, AttributeError):
            pass
        _WORKER_CACHE[key] = inference_net(model, resolve_device(job.device))
        MODEL_LOADS.append(job.token)
    return _WORKER_CACHE[key]


def _zopen(path: str) -> Any:
    import zarr

    return zarr.open_array(store=path, mode="r+")


def _task_predict(job: _Job, model: Any, pi: int, i: int, out_path: str, output: str) -> int:
    from .core.blocks import predict_block

    net = _worker_net(job, model)
    plane = job.planes[pi]
    res = predict_block(_open_source(job), net, job.grid, i, layout=job.layout, plane=plane,
                        stats=job.stats[plane], output=output, padding=job.padding,
                        device=next(net.parameters()).device, batch_size=job.batch_size, tta=job.tta)
    y0, x0, h, w = job.grid.region(i)
    lead = (slice(None),) if output == "probabilities" else ()
    _zopen(out_path)[plane + lead + (slice(y0, y0 + h), slice(x0, x0 + w))] = res
    return job.grid.tiles_in(i)


@dataclass(frozen=True)
class _Edges:
    """Labels along the four borders of a block (top, bottom rows; left, right columns)."""

    top: np.ndarray
    bottom: np.ndarray
    left: np.ndarray
    right: np.ndarray

    @classmethod
    def of(cls, lab: np.ndarray) -> _Edges:
        return cls(lab[0].copy(), lab[-1].copy(), lab[:, 0].copy(), lab[:, -1].copy())


def _task_label(region: tuple[int, int, int, int], plane: tuple, sem_path: str, obj_path: str,
                reach_path: str | None, instance_classes: tuple, grow_classes: tuple) -> dict:
    """Pass 1: connected components of one block (4-connected, as in core postprocess)."""
    from scipy import ndimage as ndi

    y0, x0, h, w = region
    win = plane + (slice(y0, y0 + h), slice(x0, x0 + w))
    sem = np.asarray(_zopen(sem_path)[win])
    fg = np.isin(sem, instance_classes)
    lab, n = ndi.label(fg)
    _zopen(obj_path)[win] = lab
    info = {"n": int(n), "edges": _Edges.of(lab), "sizes": np.bincount(lab.ravel(), minlength=n + 1)}
    if reach_path is not None:
        reach, nr = ndi.label(fg | np.isin(sem, grow_classes))
        _zopen(reach_path)[win] = reach
        region_of = np.zeros(n + 1, np.int64)
        region_of[lab[fg]] = reach[fg]  # every object lies inside one reach region
        info.update(nr=int(nr), redges=_Edges.of(reach), region_of=region_of)
    return info


def _merge_labels(grid: Any, counts: list[int], edges: list[_Edges]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Union of block labels that touch across block borders (4-connectivity).

    Block ``b`` labelled its pixels 1..counts[b]; returns (lut over global provisional ids ->
    component 1..k, 0 for background; per block its (counts[b] + 1) slice of the lut).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n_total = int(offsets[-1])
    index = {o: b for b, o in enumerate(grid.origins)}
    rows, cols = [], []
    for b, (y, x) in enumerate(grid.origins):
        _, _, h, w = grid.region(b)
        for nb, a_edge, b_edge in ((index.get((y, x + w)), "right", "left"),
                                   (index.get((y + h, x)), "bottom", "top")):
            if nb is None:
                continue
            la, lb = getattr(edges[b], a_edge), getattr(edges[nb], b_edge)
            both = (la > 0) & (lb > 0)
            rows.append(la[both].astype(np.int64) + offsets[b])
            cols.append(lb[both].astype(np.int64) + offsets[nb])
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(n_total + 1, n_total + 1))
    _, comp = connected_components(graph, directed=False)
    # renumber components 1..k in order of first appearance; id 0 (background) stays 0
    _, first, inverse = np.unique(comp[1:], return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    lut = np.zeros(n_total + 1, np.int64)
    lut[1:] = order[inverse] + 1
    per_block = [np.concatenate([[0], lut[offsets[b] + 1 : offsets[b + 1] + 1]]) for b in range(len(counts))]
    return lut, per_block


def _task_relabel(region: tuple, plane: tuple, src_path: str, dst_path: str, lut: np.ndarray,
                  src2_path: str | None = None, dst2_path: str | None = None,
                  lut2: np.ndarray | None = None, dtype: str = "uint32") -> None:
    """Pass 2: provisional block labels -> global labels through a lookup table."""
    y0, x0, h, w = region
    win = plane + (slice(y0, y0 + h), slice(x0, x0 + w))
    _zopen(dst_path)[win] = lut.astype(dtype)[np.asarray(_zopen(src_path)[win])]
    if src2_path is not None:
        _zopen(dst2_path)[win] = lut2.astype(dtype)[np.asarray(_zopen(src2_path)[win])]


def _task_grow(region: tuple, plane: tuple, shape: tuple[int, int], halo: int, sem_path: str,
               obj_path: str, reach_path: str, grown_path: str, grow_classes: tuple,
               region_has_object: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Pass 3: grow objects into the grow classes, nearest object wins (as core postprocess),
    inside the block's window widened by ``halo``. Exact wherever the nearest object lies within
    ``halo`` pixels (then it lies inside the window); returns None when some pixel needs a wider
    window, else (ids, pixel counts) of the grown block."""
    from scipy import ndimage as ndi

    y0, x0, h, w = region
    H, W = shape
    wy0, wx0 = max(y0 - halo, 0), max(x0 - halo, 0)
    wy1, wx1 = min(y0 + h + halo, H), min(x0 + w + halo, W)
    whole = (wy0, wx0, wy1, wx1) == (0, 0, H, W)
    win = plane + (slice(wy0, wy1), slice(wx0, wx1))
    obj = np.asarray(_zopen(obj_path)[win]).astype(np.int64)
    reach = np.asarray(_zopen(reach_path)[win]).astype(np.int64)
    sem = np.asarray(_zopen(sem_path)[win])
    core = (slice(y0 - wy0, y0 - wy0 + h), slice(x0 - wx0, x0 - wx0 + w))
    out = obj[core].copy()
    grow = np.isin(sem[core], grow_classes) & (out == 0)
    # a grow pixel whose connected region holds no object keeps 0 wherever its nearest object is
    grow &= region_has_object[reach[core]]
    if grow.any():
        if not (obj > 0).any():
            if not whole:
                return None
        else:
            dist, (iy, ix) = ndi.distance_transform_edt(obj == 0, return_indices=True)
            dist, iy, ix = dist[core], iy[core], ix[core]
            if not whole and (dist[grow] > halo).any():
                return None
            same = reach[core] == reach[iy, ix]
            out = np.where(grow & same, obj[iy, ix], out)
    _zopen(grown_path)[plane + (slice(y0, y0 + h), slice(x0, x0 + w))] = out.astype(np.uint32)
    ids, counts = np.unique(out, return_counts=True)
    return ids, counts


def _run(fn: Callable, calls: list[tuple], client: Any, weights: Sequence[int] | None = None
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
) -> Generator[TileDone, None, Path]:
    """Segment ``image`` block by block into the zarr array ``output`` (written atomically).

    image: numpy, dask or zarr array, or the path of a TIFF/zarr file (required with ``client``:
        the workers open it themselves). Shapes and options as in
        :func:`~napari_unet.core.segment.segment`, whose result this equals (instances: up to a
        renumbering; ids restart at 1 in each plane; uint32).
    block_size: pixels per block side, rounded to a multiple of the tile step; also the zarr chunks.
    client: a ``dask.distributed.Client``: blocks run on its workers. The image, the output folder
        and its scratch space must be reachable from every worker (a shared file system).
    grow_halo: first window margin for growing objects into grow classes; widened where needed.
    tta: average over the 8 flips/rotations of each tile (8x the compute).

    Peak memory: a few blocks and their halos, plus label tables (8 bytes per object).
    Yields TileDone (tiles predicted, then blocks post-processed); returns the output path.
    """
    import zarr

    from .core.blocks import block_grid, plane_stats
    from .core.device import resolve_device
    from .core.io import Postprocessing, UNetModel
    from .core.segment import OUTPUT_TYPES
    from .core.tiling import PADDING_MODES, _validate_dtype, auto_tile_size, infer_layout

    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
    post = model.postprocessing if isinstance(model, UNetModel) else Postprocessing()
    from .core.postprocess import NEEDS_PROBABILITIES

    if output_type == "instances" and post.split in NEEDS_PROBABILITIES:
        raise ValueError("this model separates instances by a watershed over the whole plane, which "
                         "cannot be done block by block: write 'semantic' or 'probabilities' to zarr, "
                         "or segment to a TIFF output (in memory)")
    dest = Path(output)
    if isinstance(image, (str, os.PathLike)):
        arr = read_image(image)
        # workers open the file themselves; in this process the opened array is used
        src: Any = str(Path(image).resolve()) if client is not None else arr
    else:
        if client is not None:
            raise ValueError("a distributed job reads its image from a file every worker can reach: "
                             "pass the image's path, not an array")
        src = arr = image
    _validate_dtype(arr)
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
        from .core.normalize import Normalization

        norm = Normalization()
    stats = {pl: plane_stats(arr, layout, pl, norm, padding) for pl in planes}
    job = _Job(uuid.uuid4().hex, src, axes, rgb, padding, str(dev or device), batch_size, grid, layout,
               stats, planes, bool(tta))

    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial_path(dest)
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
        for k, tiles in _run(_task_predict, calls, client):
            done += tiles
            yield TileDone(done, total, calls[k][2], len(planes), dev_name)
        if output_type == "instances":
            for ev_done in _instances(job.grid, job.planes, post, pred_path, partial, scratch, create, client, grow, grow_halo):
                done += ev_done
                yield TileDone(done, total, 0, len(planes), dev_name)
        _commit(partial, dest)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
        if client is not None:
            client.cancel(model_ref)
    return dest


@dataclass(frozen=True)
class _PlainGrid:
    """Blocks of a plane without a tile plan (for labelling an existing semantic map)."""

    shape: tuple[int, int]
    block: tuple[int, int]

    @property
    def origins(self) -> tuple[tuple[int, int], ...]:
        return tuple((y, x) for y in range(0, self.shape[0], self.block[0])
                     for x in range(0, self.shape[1], self.block[1]))

    def region(self, i: int) -> tuple[int, int, int, int]:
        y0, x0 = self.origins[i]
        return y0, x0, min(self.block[0], self.shape[0] - y0), min(self.block[1], self.shape[1] - x0)

    def __len__(self) -> int:
        return len(self.origins)


def instances_to_zarr(
    semantic: Any,
    output: str | os.PathLike,
    postprocessing: Any = None,
    *,
    block_size: int | tuple[int, int] = 1024,
    client: Any = None,
    grow_halo: int = 64,
) -> Generator[TileDone, None, Path]:
    """Instance labels of a semantic map (..., Y, X) of class ids, block by block, into the zarr
    array ``output`` (uint32, ids restart at 1 per plane), written atomically.

    Equals :func:`~napari_unet.core.postprocess.instances_from_semantic` on each whole plane up to
    a renumbering of the ids (``split="components"`` only). ``semantic`` is a zarr array path, or
    any array (copied to a scratch zarr first). Yields TileDone per block and pass.
    """
    import zarr

    from .core.io import Postprocessing

    post = postprocessing or Postprocessing()
    if post.split != "components":
        raise ValueError("only split='components' can be done block by block")
    dest = Path(output)
    partial, scratch = _partial_path(dest), dest.with_name(f".{dest.name}.scratch")
    for d in (partial, scratch):
        if d.exists():
            shutil.rmtree(d)
    sem = zarr.open_array(store=str(semantic), mode="r") if isinstance(semantic, (str, os.PathLike)) \
        else semantic
    shape = tuple(sem.shape)
    bs = (block_size, block_size) if np.isscalar(block_size) else tuple(block_size)
    grid = _PlainGrid(shape[-2:], (int(bs[0]), int(bs[1])))
    planes = list(np.ndindex(*shape[:-2])) if len(shape) > 2 else [()]
    chunks = (1,) * (len(shape) - 2) + grid.block

    def create(path: Path, dtype: Any) -> str:
        zarr.open_array(store=str(path), mode="w", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
        return str(path)

    try:
        if isinstance(semantic, (str, os.PathLike)):
            sem_path = str(Path(semantic).resolve())
        else:
            sem_path = create(scratch / "semantic.zarr", np.uint8)
            z = zarr.open_array(store=sem_path, mode="r+")
            for pl in planes:
                z[pl] = np.asarray(sem[pl])
        grow = bool(post.grow_classes)
        total = (4 if grow else 2) * len(grid) * len(planes)
        done = 0
        for d in _instances(grid, planes, post, sem_path, partial, scratch, create, client, grow, grow_halo):
            done += d
            yield TileDone(done, total, 0, len(planes), "dask" if client is not None else "cpu")
        _commit(partial, dest)
    finally:
        for d in (scratch, partial):
            if d.exists():
                shutil.rmtree(d, ignore_errors=True)
    return dest


def _instances(grid: Any, planes: list[tuple[int, ...]], post: Any, sem_path: str, partial: Path,
               scratch: Path, create: Callable, client: Any, grow: bool, grow_halo: int
               ) -> Generator[int, None, None]:
    """Blockwise instance labelling of the semantic map at ``sem_path`` into ``partial``; yields
    the number of blocks finished. Equals core ``instances_from_semantic`` per plane up to ids."""
    nb = len(grid)
    regions = [grid.region(i) for i in range(nb)]
    local = create(scratch / "local.zarr", np.int32)
    reach_local = create(scratch / "reach_local.zarr", np.int32) if grow else None
    calls = [(regions[i], planes[pi], sem_path, local, reach_local, post.instance_classes, post.grow_classes)
             for pi in range(len(planes)) for i in range(nb)]
    infos: list[Any] = [None] * len(calls)
    for k, info in _run(_task_label, calls, client):
        infos[k] = info
        yield 1
    final = create(partial, np.uint32)
    if not grow:
        calls = []
        for pi in range(len(planes)):
            part = infos[pi * nb : (pi + 1) * nb]
            lut, per_block = _merge_labels(grid, [f["n"] for f in part], [f["edges"] for f in part])
            sizes = np.zeros(int(lut.max()) + 1, np.int64)
            for f, blut in zip(part, per_block, strict=True):
                np.add.at(sizes, blut, f["sizes"])
            keep = _compact(sizes, post.min_size)
            calls += [(regions[i], planes[pi], local, final, keep[per_block[i]]) for i in range(nb)]
        for _ in _run(_task_relabel, calls, client):
            yield 1
        return
    objects = create(scratch / "objects.zarr", np.uint32)
    reach = create(scratch / "reach.zarr", np.uint32)
    grown = create(scratch / "grown.zarr", np.uint32)
    calls, has_object = [], []
    for pi in range(len(planes)):
        part = infos[pi * nb : (pi + 1) * nb]
        _, per_block = _merge_labels(grid, [f["n"] for f in part], [f["edges"] for f in part])
        rlut, rper_block = _merge_labels(grid, [f["nr"] for f in part], [f["redges"] for f in part])
        has = np.zeros(int(rlut.max()) + 1, bool)
        for f, rb in zip(part, rper_block, strict=True):
            has[rb[f["region_of"][1:]]] = True
        has[0] = False
        has_object.append(has)
        calls += [(regions[i], planes[pi], local, objects, per_block[i], reach_local, reach, rper_block[i])
                  for i in range(nb)]
    for _ in _run(_task_relabel, calls, client):
        yield 1
    h, w = grid.shape
    todo = [(pi, i) for pi in range(len(planes)) for i in range(nb)]
    counted: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {pi: [] for pi in range(len(planes))}
    halo = max(int(grow_halo), 1)
    first = True
    while todo:
        calls = [(regions[i], planes[pi], (h, w), halo, sem_path, objects, reach, grown, post.grow_classes,
                  has_object[pi]) for pi, i in todo]
        retry = []
        for k, res in _run(_task_grow, calls, client):
            if res is None:
                retry.append(todo[k])
                continue
            counted[todo[k][0]].append(res)
            if first:
                yield 1
        todo, first = retry, False
        halo *= 2
        if todo and halo > 2 * max(h, w):
            halo = max(h, w)  # windows now cover the whole plane: every block finishes
    calls = []
    for pi in range(len(planes)):
        n = max((int(ids.max()) for ids, _ in counted[pi]), default=0)
        sizes = np.zeros(n + 1, np.int64)
        for ids, cnt in counted[pi]:
            np.add.at(sizes, ids, cnt)
        keep = _compact(sizes, post.min_size)
        calls += [(regions[i], planes[pi], grown, final, keep) for i in range(nb)]
    for _ in _run(_task_relabel, calls, client):
        yield 1


def _compact(sizes: np.ndarray, min_size: int) -> np.ndarray:
    """Lookup table dropping ids smaller than ``min_size`` pixels and renumbering the rest 1..k."""
    keep = sizes >= max(int(min_size), 1)
    keep[0] = False
    lut = np.zeros(len(sizes), np.int64)
    lut[keep] = np.arange(1, int(keep.sum()) + 1)
    return lut


# ---------------------------------------------------------------------------- files
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
    """Segment each file into ``output`` (a file for one input, else a folder).

    paths: files, glob patterns or folders (see :func:`expand_inputs`).
    Each result goes to ``output/<name>_<output_type>.tif`` (``.zarr`` for zarr inputs, for a
    ``.zarr`` output and for distributed jobs), written under a temporary name and renamed when
    complete. An existing result is not recomputed (ItemDone status "skipped") unless ``overwrite``.
    zarr outputs are computed block by block with :func:`segment_to_zarr` (memory grows with the
    block, not the image; ``client`` runs the blocks on a dask cluster). Unreadable or unsuitable
    inputs are reported (status "failed") and the run goes on; a result that would replace an input
    is refused. Returns {input: output path, or "error: ..."}.
    """
    from .core.segment import segment

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
            client is not None or _is_zarr_path(p) or (single and out.suffix.lower() == ".zarr"))
        dest = output_path_for(p, out, 1 if single else n, output_type, ".zarr" if as_zarr else ".tif")
        if as_zarr and not dest.name.lower().endswith(".zarr"):
            msg = f"this job writes zarr, so the output must end in .zarr, not {dest.name!r}"
            results[str(p)] = f"error: {msg}"
            yield ItemDone(k, n, str(p), "failed", msg)
            continue
        if dest.resolve() in inputs:
            msg = f"refusing to overwrite the input file {str(dest)!r}"
            results[str(p)] = f"error: {msg}"
            yield ItemDone(k, n, str(p), "failed", msg)
            continue
        if dest.exists() and not overwrite:
            results[str(p)] = str(dest)
            yield ItemDone(k, n, str(p), "skipped", str(dest))
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

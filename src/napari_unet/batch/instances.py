"""Instance labels block by block: components per block, merged across block borders (a union of
the labels that touch, solved as graph components), grown into grow classes and size-filtered."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.batch.images import commit_output, output_lock, partial_path
from napari_unet.batch.workers import open_zarr, run_blocks
from napari_unet.core.events import TileDone


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
    sem = np.asarray(open_zarr(sem_path)[win])
    fg = np.isin(sem, instance_classes)
    lab, n = ndi.label(fg)
    open_zarr(obj_path)[win] = lab
    info = {"n": int(n), "edges": _Edges.of(lab), "sizes": np.bincount(lab.ravel(), minlength=n + 1)}
    if reach_path is not None:
        reach, nr = ndi.label(fg | np.isin(sem, grow_classes))
        open_zarr(reach_path)[win] = reach
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
    open_zarr(dst_path)[win] = lut.astype(dtype)[np.asarray(open_zarr(src_path)[win])]
    if src2_path is not None:
        open_zarr(dst2_path)[win] = lut2.astype(dtype)[np.asarray(open_zarr(src2_path)[win])]


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
    obj = np.asarray(open_zarr(obj_path)[win]).astype(np.int64)
    reach = np.asarray(open_zarr(reach_path)[win]).astype(np.int64)
    sem = np.asarray(open_zarr(sem_path)[win])
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
    open_zarr(grown_path)[plane + (slice(y0, y0 + h), slice(x0, x0 + w))] = out.astype(np.uint32)
    ids, counts = np.unique(out, return_counts=True)
    return ids, counts


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

    Equals :func:`~napari_unet.core.postprocess.instances.instances_from_semantic` on each whole plane up to
    a renumbering of the ids (``split="components"`` only). ``semantic`` is a zarr array path, or
    any array (copied to a scratch zarr first). Yields TileDone per block and pass.
    """
    import zarr

    from napari_unet.core.modelfile.files import Postprocessing, make_parent

    post = postprocessing or Postprocessing()
    if post.split != "components":
        raise ValueError("only split='components' can be done block by block")
    dest = Path(output)
    make_parent(dest)
    with output_lock(dest):
        partial, scratch = partial_path(dest), dest.with_name(f".{dest.name}.scratch")
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
            for d in block_instances(grid, planes, post, sem_path, partial, scratch, create, client, grow, grow_halo):
                done += d
                yield TileDone(done, total, 0, len(planes), "dask" if client is not None else "cpu")
            commit_output(partial, dest)
        finally:
            for d in (scratch, partial):
                if d.exists():
                    shutil.rmtree(d, ignore_errors=True)
    return dest


def block_instances(grid: Any, planes: list[tuple[int, ...]], post: Any, sem_path: str, partial: Path,
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
    for k, info in run_blocks(_task_label, calls, client):
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
        for _ in run_blocks(_task_relabel, calls, client):
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
    for _ in run_blocks(_task_relabel, calls, client):
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
        for k, res in run_blocks(_task_grow, calls, client):
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
    for _ in run_blocks(_task_relabel, calls, client):
        yield 1


def _compact(sizes: np.ndarray, min_size: int) -> np.ndarray:
    """Lookup table dropping ids smaller than ``min_size`` pixels and renumbering the rest 1..k."""
    keep = sizes >= max(int(min_size), 1)
    keep[0] = False
    lut = np.zeros(len(sizes), np.int64)
    lut[keep] = np.arange(1, int(keep.sum()) + 1)
    return lut



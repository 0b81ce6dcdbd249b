"""Many images: files on disk (TIFF, zarr) driven through the core generators.

Reading is lazy where the format allows (zarr, memory-mapped TIFF); outputs are written to a temporary
name and renamed when complete, so an interrupted run never leaves a half-written result under the
final name, and inputs are never overwritten.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .core.events import ItemDone, TileDone

IMAGE_SUFFIXES = (".tif", ".tiff", ".zarr")


class ImageReadError(ValueError):
    """An input file that cannot be read as an image."""


def read_image(path: str | os.PathLike, lazy: bool = True) -> Any:
    """Open a TIFF (memory-mapped when possible) or a zarr array; raises ImageReadError."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{str(p)!r} does not exist")
    name = p.name.lower()
    try:
        if name.endswith(".zarr") or (p.is_dir() and (p / ".zarray").exists() or (p / "zarr.json").exists()):
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

        if lazy:
            try:
                return tifffile.memmap(str(p), mode="r")
            except Exception:
                pass
        return tifffile.imread(str(p))
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(f"cannot read {str(p)!r} as an image (TIFF or zarr expected): {exc}") from None


def write_image(path: str | os.PathLike, data: np.ndarray) -> Path:
    """Write ``data`` as TIFF (or zarr for a ``.zarr`` path) atomically: temporary name, then rename."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.name.lower().endswith(".zarr"):
        import shutil

        import zarr

        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        z = zarr.open(str(tmp), mode="w", shape=data.shape, dtype=data.dtype,
                      chunks=tuple(min(s, 1024) if i >= data.ndim - 2 else 1 for i, s in enumerate(data.shape)))
        z[...] = data
        if p.exists():
            shutil.rmtree(p)
        os.replace(tmp, p)
        return p
    import tifffile

    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        tifffile.imwrite(tmp, data, compression="zlib" if data.dtype != np.float32 else None)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


def output_path_for(image_path: Path, output: Path, n_inputs: int, output_type: str) -> Path:
    """Where the result of ``image_path`` goes: ``output`` itself for a single input with a file
    suffix, else ``output/<stem>_<output_type>.tif``."""
    if n_inputs == 1 and output.suffix.lower() in (".tif", ".tiff", ".zarr"):
        return output
    stem = image_path.name
    for suf in IMAGE_SUFFIXES:
        if stem.lower().endswith(suf):
            stem = stem[: -len(suf)]
            break
    return output / f"{stem}_{output_type}.tif"


def segment_files(
    paths: Sequence[str | os.PathLike],
    model: Any,
    output: str | os.PathLike,
    *,
    output_type: str = "instances",
    **segment_kwargs: Any,
) -> Generator[TileDone | ItemDone, None, dict[str, str]]:
    """Segment each file into ``output`` (a file for one input, else a folder).

    Unreadable files are reported (ItemDone status "failed") and skipped; the run goes on. An output
    that would overwrite an input is refused. Returns {input: output or error message}.
    """
    from .core.segment import segment

    paths = [Path(p) for p in paths]
    out = Path(output)
    results: dict[str, str] = {}
    inputs = {p.resolve() for p in paths}
    for i, p in enumerate(paths):
        dest = output_path_for(p, out, len(paths), output_type)
        if dest.resolve() in inputs:
            msg = f"refusing to overwrite the input file {str(dest)!r}"
            results[str(p)] = msg
            yield ItemDone(i + 1, len(paths), str(p), "failed", msg)
            continue
        try:
            image = read_image(p)
            result = yield from segment(image, model, output=output_type, **segment_kwargs)
        except (ImageReadError, ValueError) as exc:
            results[str(p)] = f"error: {exc}"
            yield ItemDone(i + 1, len(paths), str(p), "failed", str(exc))
            continue
        write_image(dest, np.asarray(result))
        results[str(p)] = str(dest)
        yield ItemDone(i + 1, len(paths), str(p), "done", str(dest))
    return results

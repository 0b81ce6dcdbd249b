"""Reading and writing image files (TIFF, zarr), atomically; input patterns and output paths."""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

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

    from ..core.io import atomic_write

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



"""Reading and writing image files (TIFF, zarr), atomically; input patterns and output paths."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".zarr")


class ImageReadError(ValueError):
    """An input file that cannot be read as an image."""


# ---------------------------------------------------------------------------- reading / writing
def is_zarr_path(p: Path) -> bool:
    return p.name.lower().endswith(".zarr") or (
        p.is_dir() and ((p / ".zarray").exists() or (p / "zarr.json").exists()))


def read_image(path: str | os.PathLike, lazy: bool = True) -> Any:
    """Open an image file: a TIFF (memory-mapped when possible) or a zarr array.

    Parameters
    ----------
    path : str or os.PathLike
        A TIFF file, a zarr array or a zarr group (its first array is taken).
    lazy : bool, default True
        Memory-map a TIFF where its layout allows (else it is read into memory); zarr is always
        lazy.

    Returns
    -------
    numpy.ndarray or numpy.memmap or zarr.Array
        The image, in the file's dtype and shape.

    Raises
    ------
    ImageReadError
        A path that does not exist, a zarr group without arrays, or a file that is not a readable
        TIFF or zarr image (corrupt, truncated, no image data); the message names the file.
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{str(p)!r} does not exist")
    try:
        if is_zarr_path(p):
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
                data = tifffile.memmap(str(p), mode="r")
                if data.size:
                    return data
            except Exception:
                pass
        return read_tiff(p)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(f"cannot read {str(p)!r} as an image (TIFF or zarr expected): {exc}") from None


def read_tiff(path: str | os.PathLike) -> np.ndarray:
    """A TIFF file as a numpy array, or ImageReadError saying it cannot be read: tifffile reads some
    corrupt or truncated files as an empty array with a warning, which then met a shape check."""
    import logging
    import warnings

    import tifffile

    p = Path(path)
    caught: list[str] = []  # what tifffile says about a broken file (it logs it), for the message
    handler = logging.Handler()
    handler.emit = lambda record: caught.append(record.getMessage())  # type: ignore[method-assign]
    log = logging.getLogger("tifffile")
    propagate, log.propagate = log.propagate, False
    log.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            data = tifffile.imread(str(p))
        caught += [str(w.message) for w in warned]
    except Exception as exc:
        raise _unreadable(p, str(exc)) from None
    finally:
        log.removeHandler(handler)
        log.propagate = propagate
    if data.size == 0:
        why = f" ({caught[0].split(chr(10))[-1].strip()})" if caught else ""
        raise _unreadable(p, f"it holds no image data, it is corrupt or truncated{why}")
    return data


def _unreadable(p: Path, reason: str) -> ImageReadError:
    err = ImageReadError(f"cannot read {str(p)!r} as a TIFF image: {reason}")
    err.reason = reason  # type: ignore[attr-defined]
    return err


def write_image(path: str | os.PathLike, data: np.ndarray) -> Path:
    """Write an array as a TIFF (or zarr for a ``.zarr`` path) atomically: temporary name, then rename.

    A zarr output is locked while it is written (:func:`output_lock`).

    Parameters
    ----------
    path : str or os.PathLike
        The file to write; its folder is created if needed.
    data : numpy.ndarray
        The array, written in its own dtype and shape.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    OutputBusyError
        A zarr output that another run is writing.
    """
    from napari_unet.core.modelfile.files import atomic_write, make_parent

    p = Path(path)
    make_parent(p)
    if p.name.lower().endswith(".zarr"):
        import zarr

        with output_lock(p):
            tmp = partial_path(p)
            if tmp.exists():
                shutil.rmtree(tmp)
            z = zarr.open_array(store=str(tmp), mode="w", shape=data.shape, dtype=data.dtype, fill_value=0,
                                chunks=tuple(min(s, 1024) if i >= data.ndim - 2 else 1
                                             for i, s in enumerate(data.shape)))
            z[...] = data
            commit_output(tmp, p)
        return p
    import tifffile

    return atomic_write(p, lambda tmp: tifffile.imwrite(
        tmp, data, compression="zlib" if data.dtype != np.float32 else None))


def partial_path(dest: Path) -> Path:
    """Where a zarr output is built before it is renamed to ``dest`` (hidden, same folder)."""
    return dest.with_name(f".{dest.name}.partial")


class OutputBusyError(ValueError):
    """Another run is writing the same zarr output."""


def _lock_path(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.lock")


def _lock_is_stale(lock: Path) -> bool:
    """True when the lock was left by a process of this machine that no longer runs (killed)."""
    try:
        host, pid = lock.read_text().split()[:2]
        pid_i = int(pid)
    except (OSError, ValueError):
        return False  # being written, or foreign: not ours to judge
    if host != socket.gethostname() or pid_i == os.getpid():
        return False
    try:
        os.kill(pid_i, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


@contextlib.contextmanager
def output_lock(dest: Path) -> Iterator[None]:
    """Hold ``.<name>.lock`` next to a zarr output while it is built.

    A zarr result is built in ``.<name>.partial`` and renamed when complete; two runs on the same
    output shared that folder, so one deleted the other's blocks, and one reported success with
    8 % of the pixels missing. The lock file is created exclusively (``O_EXCL``): a second run is
    refused with :class:`OutputBusyError` before it touches anything. A lock left by a killed run
    of this machine (its process id no longer exists) is taken over.
    """
    lock = _lock_path(dest)
    for attempt in (0, 1):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            if attempt == 0 and _lock_is_stale(lock):
                lock.unlink(missing_ok=True)
                continue
            try:
                holder = " ".join(lock.read_text().split()[:2]) or "unknown"
            except OSError:
                holder = "unknown"
            raise OutputBusyError(
                f"another napari-unet run is writing {str(dest)!r} (host and process id: {holder}): "
                f"wait for it to finish, or write to another output; if no run is writing it (the "
                f"computer restarted), delete {str(lock)!r}") from None
    with os.fdopen(fd, "w") as f:
        f.write(f"{socket.gethostname()} {os.getpid()}\n")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def is_complete(dest: Path) -> bool:
    """Whether ``dest`` holds a finished result: a non-empty file for TIFF, an array's metadata
    for zarr (results are renamed into place only when complete, so these are)."""
    if dest.name.lower().endswith(".zarr"):
        return dest.is_dir() and ((dest / ".zarray").is_file() or (dest / "zarr.json").is_file())
    return dest.is_file() and dest.stat().st_size > 0


def commit_output(tmp: Path, dest: Path) -> None:
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
            if p.is_dir() and not is_zarr_path(p):
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
                      and (is_zarr_path(m) or (m.is_file() and m.name.lower().endswith(IMAGE_SUFFIXES)))]
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



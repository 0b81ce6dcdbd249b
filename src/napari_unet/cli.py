"""``napari-unet segment|train|evaluate``: argument parsing and a progress bar, nothing else.

The work itself is done by the core generators (and ``batch`` for many files); this module only turns
arguments into calls and progress events into a tqdm bar.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def drive(gen: Generator[Any, None, Any], desc: str, quiet: bool = False) -> Any:
    """Run a progress generator to its end with a tqdm bar; return the generator's return value."""
    from tqdm import tqdm

    bar = None
    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                return stop.value
            if hasattr(ev, "name"):  # ItemDone: reported by the caller, not a bar
                continue
            total = getattr(ev, "total", None)
            done = getattr(ev, "done", getattr(ev, "step", None))
            if quiet or total is None or done is None:
                continue
            if bar is None or bar.total != total:
                if bar is not None:
                    bar.close()
                bar = tqdm(total=total, desc=desc, unit="it", file=sys.stderr, leave=True)
            bar.n = done
            postfix = {}
            for key in ("loss", "val_score"):
                v = getattr(ev, key, None)
                if v is not None:
                    postfix[key] = f"{v:.4f}"
            if postfix:
                bar.set_postfix(postfix, refresh=False)
            bar.refresh()
    finally:
        if bar is not None:
            bar.close()


# ---------------------------------------------------------------------------- segment
def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="segment images (TIFF or zarr; 2D, stacks, channels)",
        description="Segment images with a U-Net by seam-free overlap tiles. Inputs are files, glob "
        "patterns (quoted or not) or folders (their .tif/.tiff/.zarr images). One input: OUTPUT may be "
        "a .tif/.zarr file; else OUTPUT is a folder and each result is <name>_<type>.tif (.zarr for "
        "zarr inputs and distributed runs). Results are written under a temporary name and renamed "
        "when complete; a rerun skips results that exist (resume) unless --overwrite. Unreadable "
        "inputs are reported and skipped; the exit code is 1 if any input failed.",
    )
    p.add_argument("images", nargs="+", help="input images, glob patterns or folders (TIFF or zarr)")
    p.add_argument("--model", "-m", default="nuclei",
                   help="shipped model name or model file (default: nuclei)")
    p.add_argument("--output", "-o", required=True, help="output file (one input) or folder")
    p.add_argument("--output-type", choices=["instances", "semantic", "probabilities"],
                   default="instances", help="what to write (default: instances)")
    p.add_argument("--tile-size", type=int, default=None,
                   help="network input tile size in pixels (default: from free memory)")
    p.add_argument("--padding", choices=["mirror", "zero"], default="mirror",
                   help="context beyond the image border (default: mirror, as in the paper)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--batch-size", type=int, default=None, help="tiles per forward pass")
    p.add_argument("--axes", default=None,
                   help="axes of the input, e.g. YX, ZYX, TYX, CYX, YXC (default: guessed)")
    p.add_argument("--overwrite", action="store_true",
                   help="recompute results that already exist (default: skip them)")
    p.add_argument("--zarr", action="store_true",
                   help="write zarr, block by block (memory grows with the block, not the image); "
                   "automatic for zarr inputs, a .zarr OUTPUT and distributed runs")
    p.add_argument("--chunk", type=int, default=1024,
                   help="block (and zarr chunk) side in pixels for zarr outputs, rounded to the tile "
                   "step (default: 1024)")
    cluster = p.add_mutually_exclusive_group()
    cluster.add_argument("--workers", type=int, default=None,
                         help="run the blocks on a local dask cluster of N worker processes")
    cluster.add_argument("--scheduler", default=None,
                         help="run the blocks on the dask.distributed scheduler at this address "
                         "(e.g. tcp://10.0.0.1:8786); inputs and outputs must be on a shared file system")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_segment)


def _run_segment(args: argparse.Namespace) -> int:
    from .batch import expand_inputs, segment_files
    from .core.device import resolve_device
    from .core.events import ItemDone
    from .core.io import ModelFileError, load_model

    try:
        device = resolve_device(args.device)
        model = load_model(args.model)
    except (ValueError, ModelFileError) as exc:
        raise CLIError(str(exc)) from None
    if args.workers is not None and args.workers < 1:
        raise CLIError(f"--workers must be at least 1, got {args.workers}")
    if args.chunk < 1:
        raise CLIError(f"--chunk must be positive, got {args.chunk}")
    out = Path(args.output)
    files, problems = expand_inputs(args.images)
    n_items = len(files) + len(problems)
    if n_items > 1 and out.suffix.lower() in (".tif", ".tiff", ".zarr"):
        raise CLIError(f"{n_items} inputs need an output folder, not the file {args.output!r}")
    distributed = args.workers is not None or args.scheduler is not None
    if distributed and n_items == 1 and out.suffix.lower() in (".tif", ".tiff"):
        raise CLIError("distributed runs write zarr: give an output ending in .zarr or a folder")
    counts = {"done": 0, "skipped": 0, "failed": 0}

    def report(ev: Any) -> None:
        if isinstance(ev, ItemDone):
            counts[ev.status] = counts.get(ev.status, 0) + 1
            if ev.status == "failed":
                print(f"napari-unet segment: {ev.name}: {ev.message}", file=sys.stderr)
            elif not args.quiet:
                what = "skipped, exists:" if ev.status == "skipped" else "->"
                print(f"{ev.name} {what} {ev.message}", file=sys.stderr)

    with _dask_client(args) as client:
        gen = segment_files(args.images, model, out, output_type=args.output_type,
                            overwrite=args.overwrite, zarr_output=True if args.zarr else None,
                            client=client, block_size=args.chunk, tile_size=args.tile_size,
                            padding=args.padding, device=device if client is None else args.device,
                            batch_size=args.batch_size, axes=args.axes)
        where = f"{args.workers} workers" if args.workers else args.scheduler or device.type
        drive(_tap(gen, report), desc=f"segment ({model.name}, {where})", quiet=args.quiet)
    if not args.quiet or counts["failed"]:
        print(f"napari-unet segment: {counts['done']} done, {counts['skipped']} skipped (already "
              f"complete), {counts['failed']} failed", file=sys.stderr)
    return 1 if counts["failed"] else 0


@contextlib.contextmanager
def _dask_client(args: argparse.Namespace) -> Iterator[Any]:
    """A dask.distributed Client for --workers / --scheduler, or None."""
    if args.workers is None and args.scheduler is None:
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise CLIError("--workers and --scheduler need dask.distributed: "
                       "pip install 'napari-unet[distributed]'") from None
    if args.scheduler is not None:
        try:
            client = Client(args.scheduler, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise CLIError(f"cannot reach the dask scheduler at {args.scheduler!r}: {exc}") from None
        with client:
            yield client
        return
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


def _tap(gen: Generator[Any, None, Any], fn: Any) -> Generator[Any, None, Any]:
    """Pass events through, calling ``fn`` on each; returns the generator's value."""
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            return stop.value
        fn(ev)
        yield ev


# ---------------------------------------------------------------------------- train
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune or train a model on painted labels")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    raise CLIError("train is not implemented yet")


# ---------------------------------------------------------------------------- evaluate
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a segmentation against ground truth (JSON)")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    raise CLIError("evaluate is not implemented yet")


# ---------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-unet",
        description="U-Net segmentation (Ronneberger et al. 2015): segment, fine-tune, evaluate.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_segment(sub)
    _add_train(sub)
    _add_evaluate(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"napari-unet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-unet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``napari-unet segment``: images, files, folders or zarr arrays into labels or probabilities,
through :mod:`napari_unet.batch` (and a dask.distributed cluster when asked)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from napari_unet.cli.driver import CLIError, drive


def add_segment(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average over the 8 flips and 90-degree rotations of "
                   "each tile (8x slower, slightly more accurate outlines)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--batch-size", type=int, default=None, help="tiles per forward pass")
    p.add_argument("--axes", default=None,
                   help="axes of the input, e.g. YX, ZYX, TYX, CYX, YXC (default: guessed)")
    p.add_argument("--volume", action="store_true",
                   help="the input is one (Z, Y, X) volume: write 3D instances, one id per object "
                   "across z (planes segmented one by one, objects linked across z by overlap)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), default=None,
                   help="voxel size of a volume, for a 3D model's 3D instances (the distances of "
                   "growing objects and splitting them, e.g. 2.0 0.4 0.4; default: isotropic)")
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
    from napari_unet.cli.export import add_backend_option

    add_backend_option(p)
    p.set_defaults(func=run_segment)


def run_segment(args: argparse.Namespace) -> int:
    from napari_unet.batch import expand_inputs, segment_files
    from napari_unet.core.device import resolve_device
    from napari_unet.core.events import ItemDone, relay
    from napari_unet.core.exchange.opening import load_model
    from napari_unet.core.modelfile.files import ModelFileError

    try:
        device = resolve_device(args.device)
        model = load_model(args.model)
    except (ValueError, ModelFileError) as exc:
        raise CLIError(str(exc)) from None
    if args.workers is not None and args.workers < 1:
        raise CLIError(f"--workers must be at least 1, got {args.workers}")
    if args.chunk < 1:
        raise CLIError(f"--chunk must be positive, got {args.chunk}")
    from napari_unet.cli.export import apply_backend

    model = apply_backend(args, model, device)
    out = Path(args.output)
    files, problems = expand_inputs(args.images)
    n_items = len(files) + len(problems)
    if n_items > 1 and out.suffix.lower() in (".tif", ".tiff", ".zarr"):
        raise CLIError(f"{n_items} inputs need an output folder, not the file {args.output!r}")
    distributed = args.workers is not None or args.scheduler is not None
    if args.volume and args.output_type != "instances":
        raise CLIError("--volume makes 3D instances: use it with --output-type instances")
    if args.spacing is not None:
        if model.config.dims != 3:
            raise CLIError(f"--spacing is for a 3D model's 3D instances; '{model.name}' is a 2D "
                           "model (planes linked across z by --volume need no spacing): drop it")
        if not all(v > 0 for v in args.spacing):
            raise CLIError(f"--spacing takes three positive voxel sizes (Z Y X), got {args.spacing}")
    if distributed and n_items == 1 and out.suffix.lower() in (".tif", ".tiff"):
        raise CLIError("distributed runs write zarr: give an output ending in .zarr or a folder")
    counts = {"done": 0, "skipped": 0, "failed": 0}

    def report(ev: Any) -> Any:
        """Print what happened to each file; pass every event on to the progress bar."""
        if isinstance(ev, ItemDone):
            counts[ev.status] = counts.get(ev.status, 0) + 1
            if ev.status == "failed":
                print(f"napari-unet segment: {ev.name}: {ev.message}", file=sys.stderr)
            elif not args.quiet:
                what = "skipped, exists:" if ev.status == "skipped" else "->"
                print(f"{ev.name} {what} {ev.message}", file=sys.stderr)
        return ev

    if args.padding == "zero":
        from napari_unet.core.predict.padding import zero_padding_note

        note = zero_padding_note(model)
        if note:
            print(f"napari-unet segment: warning: {note}", file=sys.stderr)
    with dask_client(args) as client:
        gen = segment_files(args.images, model, out, output_type=args.output_type,
                            overwrite=args.overwrite, zarr_output=True if args.zarr else None,
                            client=client, block_size=args.chunk, tile_size=args.tile_size,
                            padding=args.padding, device=device if client is None else args.device,
                            batch_size=args.batch_size, axes=args.axes, tta=args.tta,
                            **({"volume": True} if args.volume else {}),
                            **({"spacing": tuple(args.spacing)} if args.spacing else {}))
        where = f"{args.workers} workers" if args.workers else args.scheduler or device.type
        drive(relay(gen, report), desc=f"segment ({model.name}, {where})", quiet=args.quiet)
    if not args.quiet or counts["failed"]:
        print(f"napari-unet segment: {counts['done']} done, {counts['skipped']} skipped (already "
              f"complete), {counts['failed']} failed", file=sys.stderr)
    return 1 if counts["failed"] else 0


@contextlib.contextmanager
def dask_client(args: argparse.Namespace) -> Iterator[Any]:
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

"""``napari-unet segment|train|evaluate``: argument parsing and a progress bar, nothing else.

The work itself is done by the core generators (and ``batch`` for many files); this module only turns
arguments into calls and progress events into a tqdm bar.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Generator, Sequence
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
        description="Segment images with a U-Net by seam-free overlap tiles. One input: OUTPUT may be "
        "a .tif/.zarr file; several: OUTPUT is a folder and each result is <name>_<type>.tif.",
    )
    p.add_argument("images", nargs="+", help="input images (TIFF or zarr)")
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
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_segment)


def _run_segment(args: argparse.Namespace) -> int:
    from .batch import segment_files
    from .core.device import resolve_device
    from .core.events import ItemDone
    from .core.io import ModelFileError, load_model

    try:
        device = resolve_device(args.device)
        model = load_model(args.model)
    except (ValueError, ModelFileError) as exc:
        raise CLIError(str(exc)) from None
    out = Path(args.output)
    if len(args.images) > 1 and out.suffix.lower() in (".tif", ".tiff", ".zarr"):
        raise CLIError(f"{len(args.images)} inputs need an output folder, not the file {args.output!r}")
    gen = segment_files(args.images, model, out, output_type=args.output_type,
                        tile_size=args.tile_size, padding=args.padding, device=device,
                        batch_size=args.batch_size, axes=args.axes)
    failed = 0

    def report(ev: Any) -> None:
        nonlocal failed
        if isinstance(ev, ItemDone):
            if ev.status == "failed":
                failed += 1
                print(f"napari-unet segment: {ev.name}: {ev.message}", file=sys.stderr)
            elif not args.quiet:
                print(f"{ev.name} -> {ev.message}", file=sys.stderr)

    drive(_tap(gen, report), desc=f"segment ({model.name}, {device.type})", quiet=args.quiet)
    if failed:
        print(f"napari-unet segment: {failed} of {len(args.images)} input(s) failed", file=sys.stderr)
        return 1
    return 0


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
    p = sub.add_parser(
        "evaluate",
        help="score a segmentation against ground truth (JSON)",
        description=(
            "Score a label image against ground truth: foreground IoU, instance precision/recall/F1 "
            "(one-to-one matching at IoU > threshold), ISBI 2012 pixel error and Rand error. "
            "Files are TIFF or zarr (a zarr array, or a group holding exactly one array); 2D images or "
            "stacks of 2D planes. Prints one JSON object to stdout."
        ),
    )
    p.add_argument("pred", help="predicted label image (TIFF or zarr), 0 = background")
    p.add_argument("gt", help="ground-truth label image (TIFF or zarr), same shape")
    p.add_argument(
        "--mask", help="score only pixels where this image is nonzero (annotated region)"
    )
    p.add_argument(
        "--iou-threshold",
        type=float,
        default=0.5,
        help="objects match when their IoU is greater than this (default 0.5)",
    )
    p.set_defaults(func=_run_evaluate)


def _read_array(path: str, what: str) -> Any:
    """A TIFF file or a zarr array (or a zarr group holding exactly one array) as a numpy array."""
    import os

    import numpy as np

    if not os.path.exists(path):
        raise CLIError(f"{what} not found: {path}")
    is_zarr = os.path.isdir(path) or path.rstrip("/\\").lower().endswith(".zarr")
    try:
        if is_zarr:
            import zarr

            node = zarr.open(path, mode="r")
            if isinstance(node, zarr.Group):
                arrays = [name for name, _ in node.arrays()]
                if len(arrays) != 1:
                    raise CLIError(
                        f"{what} {path} is a zarr group with {len(arrays)} arrays {arrays}: "
                        "name one, e.g. PATH/NAME"
                    )
                node = node[arrays[0]]
            return np.asarray(node[...])
        import tifffile

        return tifffile.imread(path)
    except CLIError:
        raise
    except Exception as exc:  # any reader failure is the file's fault here
        kind = "zarr" if is_zarr else "TIFF"
        raise CLIError(f"could not read {what} {path} as {kind}: {exc}") from exc


def _run_evaluate(args: argparse.Namespace) -> int:
    import json

    from napari_unet.core.metrics import evaluate

    pred = _read_array(args.pred, "PRED")
    gt = _read_array(args.gt, "GT")
    mask = None if args.mask is None else _read_array(args.mask, "mask")
    try:
        scores = evaluate(pred, gt, mask, iou_threshold=args.iou_threshold)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    print(json.dumps(scores, indent=2, allow_nan=False))
    return 0


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

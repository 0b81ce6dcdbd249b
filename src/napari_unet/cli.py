"""``napari-unet segment|train|evaluate``: argument parsing and a progress bar, nothing else.

The work itself is done by the core generators (and ``batch`` for many files); this module only turns
arguments into calls and progress events into a tqdm bar.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Generator, Sequence
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
    p = sub.add_parser("segment", help="segment images (TIFF or zarr; 2D, stacks, channels)")
    p.set_defaults(func=_run_segment)


def _run_segment(args: argparse.Namespace) -> int:
    raise CLIError("segment is not implemented yet")


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

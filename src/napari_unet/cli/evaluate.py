"""``napari-unet evaluate``: a segmentation scored against its ground truth (instance F1 at IoU
thresholds, foreground IoU), printed as JSON."""

from __future__ import annotations

import argparse
from typing import Any

from napari_unet.cli.driver import CLIError


def add_evaluate(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=run_evaluate)


def read_array(path: str, what: str) -> Any:
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
        from napari_unet.batch import read_tiff

        return read_tiff(path)
    except CLIError:
        raise
    except ValueError as exc:  # ImageReadError from read_tiff, with its reason
        reason = getattr(exc, "reason", exc)
        raise CLIError(f"could not read {what} {path} as TIFF: {reason}") from None
    except Exception as exc:  # any reader failure is the file's fault here
        kind = "zarr" if is_zarr else "TIFF"
        raise CLIError(f"could not read {what} {path} as {kind}: {exc}") from exc


def run_evaluate(args: argparse.Namespace) -> int:
    import json

    from napari_unet.core.metrics import evaluate

    pred = read_array(args.pred, "PRED")
    gt = read_array(args.gt, "GT")
    mask = None if args.mask is None else read_array(args.mask, "mask")
    try:
        scores = evaluate(pred, gt, mask, iou_threshold=args.iou_threshold)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    print(json.dumps(scores, indent=2, allow_nan=False))
    return 0

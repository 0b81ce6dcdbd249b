"""``napari-unet segment|train|evaluate|export``: argument parsing and a progress bar, nothing else.

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
            if bar is not None and bar.total != total and hasattr(ev, "step"):
                bar.total = total  # a time budget's step estimate settles: same bar
            elif bar is None or bar.total != total:
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
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average over the 8 flips and 90-degree rotations of "
                   "each tile (8x slower, slightly more accurate outlines)")
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
    from ._cli_export import add_backend_option

    add_backend_option(p)
    p.set_defaults(func=_run_segment)


def _run_segment(args: argparse.Namespace) -> int:
    from .batch import expand_inputs, segment_files
    from .core.device import resolve_device
    from .core.events import ItemDone, relay
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
    from ._cli_export import apply_backend

    model = apply_backend(args, model, device)
    out = Path(args.output)
    files, problems = expand_inputs(args.images)
    n_items = len(files) + len(problems)
    if n_items > 1 and out.suffix.lower() in (".tif", ".tiff", ".zarr"):
        raise CLIError(f"{n_items} inputs need an output folder, not the file {args.output!r}")
    distributed = args.workers is not None or args.scheduler is not None
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
        from .core.padding import zero_padding_note

        note = zero_padding_note(model)
        if note:
            print(f"napari-unet segment: warning: {note}", file=sys.stderr)
    with _dask_client(args) as client:
        gen = segment_files(args.images, model, out, output_type=args.output_type,
                            overwrite=args.overwrite, zarr_output=True if args.zarr else None,
                            client=client, block_size=args.chunk, tile_size=args.tile_size,
                            padding=args.padding, device=device if client is None else args.device,
                            batch_size=args.batch_size, axes=args.axes, tta=args.tta)
        where = f"{args.workers} workers" if args.workers else args.scheduler or device.type
        drive(relay(gen, report), desc=f"segment ({model.name}, {where})", quiet=args.quiet)
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


# ---------------------------------------------------------------------------- train
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="fine-tune or train a model on painted labels",
        description="Fine-tune a model (or train one from scratch) on images with painted labels "
                    "(TIFF: each object painted with its own id, 0 = not painted). Without masks and "
                    "without --background-label every unpainted pixel is background; with masks only "
                    "inside them; with --background-label (scribbles) only pixels painted with it.")
    p.add_argument("--images", nargs="+", required=True, metavar="IMAGE",
                   help="image files (2D, or stacks whose painted planes are used)")
    p.add_argument("--labels", nargs="+", required=True, metavar="LABELS",
                   help="one labels file per image, same shape (integer ids, 0 = not painted)")
    p.add_argument("--masks", nargs="+", metavar="MASK",
                   help="one mask file per image: nonzero where the annotation is complete")
    p.add_argument("--background-label", type=int, default=None, metavar="N",
                   help="label id painted on background (scribbles); other unpainted pixels are ignored")
    p.add_argument("--base-model", default=None, metavar="NAME_OR_PATH",
                   help="shipped model name or model file to fine-tune (default: train from scratch)")
    p.add_argument("--mode", choices=("auto", "binary", "boundary"), default="auto",
                   help="classes: auto (default: boundary when painted objects touch, else binary), "
                        "binary (background/object with separating lines, the paper) or boundary "
                        "(background/boundary/interior; a 2-class base model gets a boundary class)")
    p.add_argument("--minutes", type=float, default=None,
                   help="time budget in minutes (validation included); training ends at the budget "
                        "or at --steps, whichever comes first")
    p.add_argument("--steps", type=int, default=None,
                   help="optimisation steps (default 500, or no limit with --minutes)")
    p.add_argument("--patch-size", type=int, default=256, help="output patch size in pixels")
    p.add_argument("--batch-size", type=int, default=4, help="patches per step")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default 2e-3), warmed up, then a cosine decay")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the painted objects held back for validation, whole, from all over "
                        "each image (default 0.1; 0 = none). Nothing is held back when fewer than 40 "
                        "objects are painted. The final averaged weights are kept (the base model "
                        "only if validation scores it higher by more than 0.05); with validation, "
                        "training ends early once the validation loss stops improving")
    p.add_argument("--whole-budget", action="store_true",
                   help="train for all of --steps / --minutes even when validation says the "
                        "painting is learnt (default: end early then, and say so)")
    bal = p.add_mutually_exclusive_group()
    bal.add_argument("--class-balance", dest="class_balance", action="store_true", default=False,
                     help="add the paper's class-balancing w_c to the weight map (off by default: it "
                          "thickens objects until packed neighbours merge)")
    bal.add_argument("--no-class-balance", dest="class_balance", action="store_false",
                     help="w_c = 1: only the paper's border term (the default)")
    p.add_argument("--no-prior-adaptation", dest="prior_adaptation", action="store_false",
                   help="do not record the painting's background share: segmenting then uses the "
                        "probabilities as predicted instead of re-weighting each image to its own "
                        "share of background (needed for block-wise zarr output)")
    p.add_argument("--loss", choices=("ce", "ce+dice"), default="ce+dice",
                   help="ce+dice (default): the paper's weighted cross-entropy plus a soft Dice of "
                        "the object classes; ce: the weighted cross-entropy alone")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 where the device computes it natively (faster), else fp32")
    p.add_argument("--sampling", choices=("pixels", "images"), default="pixels",
                   help="where training patches come from: in proportion to each image's painted "
                        "pixels (default), or each image (plane) equally often")
    adj = p.add_mutually_exclusive_group()
    adj.add_argument("--logit-adjustment", dest="logit_adjustment", action="store_true", default=None,
                     help="shift the output bias by -log(mean class weight) so that the argmax is not "
                          "drawn toward the heavily weighted class (default: as the base model)")
    adj.add_argument("--no-logit-adjustment", dest="logit_adjustment", action="store_false")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--seed", type=int, default=None, help="random seed (reproducible on CPU)")
    p.add_argument("--name", default=None, help="name stored in the model file")
    p.add_argument("--output", "-o", required=True, metavar="MODEL",
                   help="model file to write (.safetensors)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train)


def _read_tiffs(paths: Sequence[str], what: str) -> list[Any]:
    import os

    from .batch import ImageReadError, read_tiff

    out = []
    for path in paths:
        if not os.path.isfile(path):
            raise CLIError(f"{what} file {path!r} does not exist")
        try:
            out.append(read_tiff(path))
        except ImageReadError as exc:
            raise CLIError(f"cannot read {what} file {path!r}: {getattr(exc, 'reason', exc)}") from None
    return out


def _run_train(args: argparse.Namespace) -> int:
    if len(args.labels) != len(args.images):
        raise CLIError(f"got {len(args.images)} --images but {len(args.labels)} --labels: give one "
                       f"labels file per image, in the same order")
    if args.masks is not None and len(args.masks) != len(args.images):
        raise CLIError(f"got {len(args.images)} --images but {len(args.masks)} --masks: give one mask "
                       f"per image, in the same order")
    images = _read_tiffs(args.images, "image")
    labels = _read_tiffs(args.labels, "labels")
    masks = _read_tiffs(args.masks, "mask") if args.masks else None

    from .core.annotations import AnnotationError
    from .core.augment import Augmentation
    from .core.device import resolve_device
    from .core.io import ModelFileError, load_model, save_model
    from .core.train import TrainConfig, train, training_summary

    try:
        device = resolve_device(args.device)
        steps = args.steps if args.steps is not None else (10**9 if args.minutes else 500)
        config = TrainConfig(steps=steps, minutes=args.minutes, batch_size=args.batch_size,
                             patch_size=args.patch_size, lr=args.lr, val_fraction=args.val_fraction,
                             augmentation=Augmentation(), class_balance=args.class_balance,
                             prior_adaptation=args.prior_adaptation,
                             logit_adjustment=args.logit_adjustment, sampling=args.sampling,
                             loss=args.loss, precision=args.precision,
                             plateau_patience=0 if args.whole_budget else TrainConfig.plateau_patience)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    base = None
    if args.base_model:
        try:
            base = load_model(args.base_model)
        except ModelFileError as exc:
            raise CLIError(str(exc)) from None
    gen = train(images, labels, masks, model=base, config=config, mode=args.mode,
                background_label=args.background_label, device=device, seed=args.seed,
                name=args.name)
    try:
        model = drive(gen, desc="train", quiet=args.quiet)
    except (AnnotationError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    path = save_model(model, args.output)
    print(training_summary(model.provenance) + f"; wrote {path}")
    if model.provenance["validation"]["kept"] == "start":
        print(model.provenance["validation"]["note"], file=sys.stderr)
    return 0



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
        from .batch import read_tiff

        return read_tiff(path)
    except CLIError:
        raise
    except ValueError as exc:  # ImageReadError from read_tiff, with its reason
        reason = getattr(exc, "reason", exc)
        raise CLIError(f"could not read {what} {path} as TIFF: {reason}") from None
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
        description="U-Net segmentation (Ronneberger et al. 2015): segment, fine-tune, evaluate, export.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_segment(sub)
    _add_train(sub)
    _add_evaluate(sub)
    from ._cli_export import add_export

    add_export(sub)
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
    # `python -m napari_unet.cli`: run the package's module, so that errors raised by helper
    # modules (napari_unet.cli.CLIError) are the class main() catches
    from napari_unet.cli import main as _main

    sys.exit(_main())

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
    p.add_argument("--mode", choices=("binary", "boundary"), default=None,
                   help="classes when training from scratch: binary (background/object, default) or "
                        "boundary (background/boundary/interior)")
    p.add_argument("--steps", type=int, default=500, help="optimisation steps (default 500)")
    p.add_argument("--patch-size", type=int, default=256, help="output patch size in pixels")
    p.add_argument("--batch-size", type=int, default=4, help="patches per step")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default 1e-3 from scratch, 3e-4 fine-tuning)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="fraction of the painted pixels held back for validation (0 = none)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--seed", type=int, default=None, help="random seed (reproducible on CPU)")
    p.add_argument("--name", default=None, help="name stored in the model file")
    p.add_argument("--output", "-o", required=True, metavar="MODEL",
                   help="model file to write (.safetensors)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train)


def _read_tiffs(paths: Sequence[str], what: str) -> list[Any]:
    import os

    import tifffile

    out = []
    for path in paths:
        if not os.path.isfile(path):
            raise CLIError(f"{what} file {path!r} does not exist")
        try:
            out.append(tifffile.imread(path))
        except Exception as exc:
            raise CLIError(f"cannot read {what} file {path!r}: {exc}") from None
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
    from .core.train import TrainConfig, train

    try:
        device = resolve_device(args.device)
        config = TrainConfig(steps=args.steps, batch_size=args.batch_size, patch_size=args.patch_size,
                             lr=args.lr, val_fraction=args.val_fraction, augmentation=Augmentation())
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
    prov = model.provenance
    score = prov.get("validation_iou")
    start = prov.get("validation_iou_start")
    if score is None:
        print(f"trained {prov['steps']} steps (no validation data held back); wrote {path}")
    else:
        print(f"validation foreground IoU {score:.4f} (start {start:.4f}, best at step "
              f"{prov['best_step']} of {prov['steps']}); wrote {path}")
    return 0


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

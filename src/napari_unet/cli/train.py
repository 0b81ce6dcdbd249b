"""``napari-unet train``: the parser and handler of the train subcommand (kept out of cli.py,
which only registers it)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from napari_unet.cli.driver import CLIError, drive

# ---------------------------------------------------------------------------- train
DEFAULT_BASE = "nuclei"  # the start of a 2D training without --base-model
NO_BASE = "none"  # --base-model none: a new network, trained from scratch


def base_model_name(value: str | None, volume: bool = False) -> str | None:
    """The model ``--base-model`` asks to start from, or None for a new network: a 2D training
    starts from :data:`DEFAULT_BASE` unless told ``none``; a --volume training from a new 3D U-Net
    unless a model is given."""
    if value is not None and value.strip().lower() == NO_BASE:
        return None
    if value is None:
        return None if volume else DEFAULT_BASE
    return value


def pair_names(images: Sequence[str], labels: Sequence[str]) -> list[str]:
    """How messages about the painting name each pair: by its files."""
    return [f"{lab} (labels of {img})" for img, lab in zip(images, labels, strict=True)]


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="fine-tune or train a model on painted labels",
        description="Fine-tune a model on images with painted labels (TIFF: each object painted "
                    "with its own id, 0 = not painted); by default the shipped 2D model 'nuclei', "
                    "--base-model none trains a new one from scratch. Without masks and "
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
                   help=f"shipped model name or model file to fine-tune (default: {DEFAULT_BASE}, "
                        f"the shipped 2D nuclei model: fine-tuning from it beat training from "
                        f"scratch at the same budget on the images measured, see docs/benchmarks.md); "
                        f"'{NO_BASE}': train a new network from scratch. With --volume the default is "
                        f"'{NO_BASE}': a new 3D U-Net pooled from --spacing")
    p.add_argument("--mode", choices=("auto", "binary", "boundary"), default="auto",
                   help="classes: auto (default: boundary when painted objects touch, else binary), "
                        "binary (background/object with separating lines, the paper) or boundary "
                        "(background/boundary/interior; a 2-class base model gets a boundary class)")
    p.add_argument("--minutes", type=float, default=None,
                   help="time budget in minutes (validation included); training ends at the budget "
                        "or at --steps, whichever comes first")
    p.add_argument("--steps", type=int, default=None,
                   help="optimisation steps (default 500, or no limit with --minutes)")
    p.add_argument("--members", type=int, default=None, metavar="N",
                   help="networks to fine-tune one after the other and average (an ensemble: "
                        "steadier results, Nx the compute to segment); default: with validation, one "
                        "per 250 steps that --minutes holds on this machine (2 CPU cores: about 3 "
                        "minutes for two), at most 3, else 1")
    p.add_argument("--patch-size", type=int, default=None,
                   help="output patch size in pixels (default 128; --volume: 96 in Y and X)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="patches per step (default 2; --volume: 2)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default 2e-3), warmed up, then a cosine decay")
    p.add_argument("--train-encoder", action="store_true",
                   help="when fine-tuning, train the contracting path too (by default it keeps the "
                        "base model's weights: steps take about half the time, and in a few minutes "
                        "that learns more; worth trying on long runs far from the base's images)")
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
    p.add_argument("--volume", action="store_true",
                   help="each image is a (Z, Y, X) volume whose labels paint a few z-slices completely "
                        "(0 there is background; unpainted slices are unknown): fine-tune a 3D U-Net "
                        "(a 2D --base-model is lifted to 3D first; without --base-model a new 3D "
                        "U-Net is trained from scratch, its pooling chosen from --spacing)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), default=None,
                   help="with --volume: the voxel size (any unit, e.g. 1.0 0.2 0.2 um). A new 3D "
                        "U-Net pools z only on levels where the voxel is no longer strongly "
                        "anisotropic; the weight map measures distances across consecutive painted "
                        "slices with it (default: cubic voxels)")
    p.add_argument("--slices", nargs="+", type=int, default=None, metavar="Z",
                   help="with --volume: the painted z-slices to train on (default: every slice "
                        "holding a painted pixel)")
    p.set_defaults(func=_run_train)


def _read_tiffs(paths: Sequence[str], what: str) -> list[Any]:
    import os

    from napari_unet.batch import ImageReadError, read_tiff

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
    if args.volume:
        return _run_train_volume(args)
    if args.slices is not None:
        raise CLIError("--slices names painted z-slices of a volume: use it with --volume")
    if args.spacing is not None:
        raise CLIError("--spacing is the voxel size of a volume: use it with --volume")
    images = _read_tiffs(args.images, "image")
    labels = _read_tiffs(args.labels, "labels")
    masks = _read_tiffs(args.masks, "mask") if args.masks else None

    from napari_unet.core.device import resolve_device
    from napari_unet.core.events import relay
    from napari_unet.core.exchange.opening import load_model
    from napari_unet.core.modelfile.files import ModelFileError, save_model
    from napari_unet.core.train import TrainConfig, train, training_summary
    from napari_unet.core.train.annotations import AnnotationError

    try:
        device = resolve_device(args.device)
        config = TrainConfig.from_choices(
            steps=args.steps, minutes=args.minutes, batch_size=args.batch_size,
            patch_size=args.patch_size, lr=args.lr, members=args.members,
            val_fraction=args.val_fraction, class_balance=args.class_balance,
            prior_adaptation=args.prior_adaptation, logit_adjustment=args.logit_adjustment,
            sampling=args.sampling, loss=args.loss, precision=args.precision,
            plateau_patience=0 if args.whole_budget else TrainConfig.plateau_patience,
            freeze_encoder=not args.train_encoder)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    base = None
    base_name = base_model_name(args.base_model)
    if base_name is not None:
        try:
            base = load_model(base_name)
        except ModelFileError as exc:
            raise CLIError(str(exc)) from None
    if args.base_model is None and not args.quiet:
        print(f"napari-unet train: fine-tuning the shipped model '{DEFAULT_BASE}' (the default; "
              f"--base-model {NO_BASE} trains a new network from scratch)", file=sys.stderr)
    gen = train(images, labels, masks, model=base, config=config, mode=args.mode,
                background_label=args.background_label, device=device, seed=args.seed,
                name=args.name)
    said: list[str] = []

    def say_budget(ev: Any) -> Any:  # what the time budget holds on this machine, said once
        if getattr(ev, "budget", "") and not said and (ev.budget_short or not args.quiet):
            said.append(ev.budget)
            level = "warning: " if ev.budget_short else ""
            print(f"napari-unet train: {level}{ev.budget}", file=sys.stderr)
        return ev

    gen = relay(gen, say_budget)
    try:
        model = drive(gen, desc="train", quiet=args.quiet)
    except AnnotationError as exc:
        raise CLIError(str(exc.named(pair_names(args.images, args.labels)))) from None
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    path = save_model(model, args.output)
    print(training_summary(model.provenance) + f"; wrote {path}")
    if model.provenance["validation"]["kept"] == "start":
        print(model.provenance["validation"]["note"], file=sys.stderr)
    return 0


def _run_train_volume(args: argparse.Namespace) -> int:
    """``train --volume``: a 3D U-Net fine-tuned from painted z-slices (core/train/volume.py)."""
    if len(args.images) > 1 and args.slices is not None:
        raise CLIError("--slices names the painted planes of one volume: with several --images "
                       "every painted slice of each is used; drop --slices")
    if args.masks or args.background_label is not None:
        raise CLIError("--volume trains on whole painted slices: drop --masks and --background-label")
    base_name = base_model_name(args.base_model, volume=True)
    if base_name is None and args.spacing is None:
        raise CLIError("--volume without --base-model trains a new 3D U-Net, whose pooling follows "
                       "the voxel size: give --spacing Z Y X (e.g. 1.0 0.2 0.2), or fine-tune a "
                       "model with --base-model (e.g. nuclei3d, or nuclei lifted to 3D)")
    images, labels = _read_tiffs(args.images, "image"), _read_tiffs(args.labels, "labels")
    several = len(images) > 1

    from napari_unet.core.device import resolve_device
    from napari_unet.core.exchange.opening import load_model
    from napari_unet.core.modelfile.files import ModelFileError, save_model
    from napari_unet.core.network.geometry import pooled_levels
    from napari_unet.core.train import TrainConfig
    from napari_unet.core.train.annotations import AnnotationError
    from napari_unet.core.train.loop3d import fine_tune_volume

    try:
        device = resolve_device(args.device)
        base = load_model(base_name) if base_name is not None else None
        config = TrainConfig.from_choices(
            volume=True, steps=args.steps, minutes=args.minutes, batch_size=args.batch_size,
            patch_size=args.patch_size, lr=args.lr, loss=args.loss)
        gen = fine_tune_volume(images if several else images[0], labels if several else labels[0],
                               base, slices=args.slices, config=config,
                               seed=args.seed or 0, device=device,
                               spacing=None if args.spacing is None else tuple(args.spacing))
        model = drive(gen, desc="train 3D", quiet=args.quiet)
    except (ModelFileError, AnnotationError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    if args.name:
        model.name = args.name
    path = save_model(model, args.output)
    info = model.provenance["fine_tuned_3d"]
    pooled = pooled_levels(model.config.z_pooling) or "none"
    how = (f"trained from scratch (z pooled on level(s) {pooled} of {model.config.depth})"
           if base is None else "fine-tuned")
    print(f"3D U-Net {how} on slices {info['painted_slices']} for {info['steps']} steps "
          f"({info['seconds']} s, not validated: nothing to hold back); wrote {path}")
    return 0

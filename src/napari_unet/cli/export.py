"""``napari-unet export MODEL --format bioimageio|torchscript|onnx --output OUT``: the parser and handler
of the export subcommand (kept out of cli.py, which only registers it)."""

from __future__ import annotations

import argparse
from typing import Any

FORMATS = ("bioimageio", "torchscript", "onnx")
SUFFIXES = {"bioimageio": ".zip", "torchscript": ".pt", "onnx": ".onnx"}


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a model as a bioimage.io package, a TorchScript or an ONNX file",
        description="Write MODEL (a shipped model's name, a .safetensors model file or a bioimage.io "
                    "package) for other programs: a bioimage.io model package (zip, spec 0.5: ilastik, "
                    "deepImageJ, QuPath, bioimageio.core), or the network alone as TorchScript or ONNX "
                    "(input: normalised (N, C, H, W) float32 of valid sizes; output: class logits). "
                    "Needs the export extra: pip install \"napari-unet[export]\".")
    p.add_argument("model", help="shipped model name (nuclei, em) or model file")
    p.add_argument("--format", choices=FORMATS, default="bioimageio", help="what to write (default: bioimageio)")
    p.add_argument("--output", "-o", required=True,
                   help="file to write (.zip for bioimageio, .pt for torchscript, .onnx for onnx; added if missing)")
    p.add_argument("--sample", default=None,
                   help="bioimageio: a 2D image (TIFF) for the test tensors and cover (default: the shipped "
                        "sample image that matches the model)")
    p.add_argument("--author", action="append", default=None,
                   help="bioimageio: an author's name (repeat for several; default: napari-unet developers)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from napari_unet.cli.driver import CLIError, drive
    from napari_unet.core.exchange import ExchangeError
    from napari_unet.core.exchange.opening import load_model
    from napari_unet.core.modelfile.files import ModelFileError

    try:
        model = load_model(args.model)
    except ModelFileError as exc:
        raise CLIError(str(exc)) from None
    out = Path(args.output)
    if out.suffix.lower() != SUFFIXES[args.format]:
        out = out.with_name(out.name + SUFFIXES[args.format])
    try:
        if args.format == "bioimageio":
            from napari_unet.core.exchange.bioimageio import export_bioimageio

            sample = _read_sample(args.sample) if args.sample else None
            gen = export_bioimageio(model, out, sample=sample,
                                    authors=tuple(args.author or ("napari-unet developers",)))
            path = drive(gen, "export", args.quiet)
        elif args.format == "torchscript":
            from napari_unet.core.exchange.portable import export_torchscript

            path = export_torchscript(model, out)
        else:
            from napari_unet.core.exchange.portable import export_onnx

            path = export_onnx(model, out)
    except ExchangeError as exc:
        raise CLIError(str(exc)) from None
    if not args.quiet:
        print(f"wrote {path}")
    return 0


def _read_sample(path: str) -> Any:
    import tifffile

    from napari_unet.cli.driver import CLIError

    try:
        return tifffile.imread(path)
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot read the sample image {path!r}: {exc}") from None


# ---------------------------------------------------------------------------- segment --backend
BACKENDS = ("torch", "onnxruntime")


def add_backend_option(p: argparse.ArgumentParser) -> None:
    """``segment --backend``: the network under onnxruntime (CPU), driven by the same exact tiler."""
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="what runs the network: torch (default) or onnxruntime on the CPU (faster on "
                        "the CPU for the shipped models, see docs/benchmarks.md; same tiles, same "
                        "output within 1e-4; needs the export extra)")


def apply_backend(args: argparse.Namespace, model: Any, device: Any) -> Any:
    """The model to segment with: ``model`` itself, or run by onnxruntime for ``--backend onnxruntime``."""
    from napari_unet.cli.driver import CLIError

    if getattr(args, "backend", "torch") == "torch":
        return model
    if device.type != "cpu":
        raise CLIError(f"--backend onnxruntime runs on the CPU; the device is {device.type} (use --device cpu)")
    if args.workers is not None or args.scheduler is not None:
        raise CLIError("--backend onnxruntime runs in this process; it cannot be combined with "
                       "--workers or --scheduler")
    from napari_unet.core.exchange import ExchangeError
    from napari_unet.core.exchange.runtime import onnxruntime_model

    try:
        return onnxruntime_model(model)
    except ExchangeError as exc:
        raise CLIError(str(exc)) from None

"""Write a bioimage.io model package (spec 0.5, a zip) of a napari-unet model, built and validated with
``bioimageio.spec``.

The package holds: ``rdf.yaml``; weights as ``pytorch_state_dict`` (the architecture as a Python file:
our ``model.py`` plus the same-size wrapper :class:`~.portable.PackagedUNet` describes), ``torchscript``
and ``onnx``; test input and output tensors (``.npy``) computed by our own overlap-tile inference on a
crop of a real image; a cover image; the model card (``README.md``); and our own model file
(``.safetensors``, an attachment) so that napari-unet reads the package back exactly.

Geometry: input sizes ``min + n * step`` (208 + n * 16 for the shipped valid depth-4 models), output of
the input's size with a halo of 96 pixels per side to crop (see :func:`~.portable.package_geometry`),
inputs padded by reflection (our mirror padding). Pre-processing: ``scale_range`` per sample and channel
with our percentiles; where it differs from ours, see docs/export.md.
"""

from __future__ import annotations

import inspect
import json
import os
import tempfile
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import napari_unet.core.network.geometry as geometry_module
import napari_unet.core.network.unet as model_module
from napari_unet.core.exchange import ExchangeError, ExportStep, require
from napari_unet.core.exchange.portable import (
    ONNX_OPSET,
    export_onnx,
    export_torchscript,
    package_geometry,
)
from napari_unet.core.modelfile.files import SUFFIX, UNetModel, save_model
from napari_unet.core.modelfile.normalization import CLIP, Normalization

PAPER_DOI = "10.1007/978-3-319-24574-4_28"
PAPER = ("Ronneberger O., Fischer P., Brox T. (2015) U-Net: Convolutional Networks for Biomedical Image "
         "Segmentation. MICCAI 2015, LNCS 9351, pp. 234-241")
LICENSE = "BSD-3-Clause"
ARCH_CALLABLE = "PackagedUNet"
ARCH_FILE = "unet_architecture.py"
TEST_INTERIOR = 256  # test tensors: this many pixels per axis with a prediction, plus the halo
CONFIG_KEY = "napari_unet"
INPUT_ID, OUTPUT_ID = "raw", "probabilities"

_ARCH_TAIL = '''

# ---------------------------------------------------------------------------- bioimage.io form
# Appended by napari-unet's bioimage.io export: the network the package describes. Same-size class
# probabilities; the outer `pad_before` pixels per side carry no prediction (the halo to crop).
class PackagedUNet(UNet):
    def __init__(self, crop: int = 0, pad_before: int = 0, pad_after: int = 0, **config: Any) -> None:
        super().__init__(UNetConfig.from_dict(config))
        self.crop, self.pad_before, self.pad_after = int(crop), int(pad_before), int(pad_after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.crop
        p = torch.softmax(super().forward(x[:, :, c:, c:]), dim=1)
        if self.pad_before or self.pad_after:
            p = F.pad(p, [self.pad_before, self.pad_after, self.pad_before, self.pad_after])
        return p
'''


_GEOMETRY_IMPORT = "from napari_unet.core.network.geometry import Axis\n"
_FUTURE_IMPORT = "from __future__ import annotations\n"


def architecture_source() -> str:
    """The package's architecture file, which must load where napari-unet is not installed:
    ``core/network/geometry.py`` (the U-Net's geometry, which ``forward`` checks sizes with), then
    ``core/network/unet.py`` without its import of that geometry (and without a second
    ``from __future__`` line, allowed only at a file's top), plus ``PackagedUNet``."""
    unet = inspect.getsource(model_module)
    for line in (_GEOMETRY_IMPORT, _FUTURE_IMPORT):
        if unet.count(line) != 1:
            raise RuntimeError(f"core/network/unet.py changed: expected the line {line.strip()!r} once")
        unet = unet.replace(line, "")
    if "from napari_unet" in unet or "import napari_unet" in unet:
        raise RuntimeError("core/network/unet.py imports napari_unet beyond its geometry: the "
                           "architecture file of a package must stand alone")
    geometry = inspect.getsource(geometry_module)
    return (geometry + "\n\n# ---------------------------------------------------------------------------- the U-Net\n"
            + unet + _ARCH_TAIL)


def architecture_kwargs(model: UNetModel) -> dict[str, Any]:
    geo = package_geometry(model.config)
    return {**model.config.to_dict(), "crop": geo.crop, "pad_before": geo.pad_before,
            "pad_after": geo.pad_after}


def default_sample(model: UNetModel) -> np.ndarray:
    """A real image for the test tensors and cover: the shipped sample matching the model."""
    import tifffile

    from napari_unet._sample_data import sample_path

    key = "em" if model.name == "em" or "electron" in model.description.lower() else "nuclei"
    return tifffile.imread(sample_path(key))


def _test_crop(sample: np.ndarray, in_channels: int, size: int) -> np.ndarray:
    """A central ``size`` x ``size`` crop as (C, Y, X) float32 raw intensities (a smaller image is
    extended by mirroring, as the overlap-tile strategy extends it)."""
    a = np.asarray(sample)
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3 and a.shape[-1] in (3, 4) and a.shape[0] not in (1, in_channels):
        a = np.moveaxis(a, -1, 0)
    if a.ndim != 3 or a.shape[0] != in_channels:
        raise ExchangeError(f"the sample image (shape {np.asarray(sample).shape}) must be 2D (Y, X) or "
                            f"(C, Y, X) with the model's {in_channels} channel(s)")
    from napari_unet.core.predict.padding import mirror_index

    h, w = a.shape[-2:]
    y0, x0 = (h - size) // 2, (w - size) // 2
    iy, ix = mirror_index(np.arange(y0, y0 + size), h), mirror_index(np.arange(x0, x0 + size), w)
    return np.ascontiguousarray(a[:, iy[:, None], ix[None, :]], dtype=np.float32)


def _preprocessing(norm: Normalization, v: Any) -> list[Any]:
    yx = [v.AxisId("y"), v.AxisId("x")]
    ops: list[Any] = [v.EnsureDtypeDescr(kwargs=v.EnsureDtypeKwargs(dtype="float32"))]
    if norm.mode in ("percentile", "minmax"):
        lo, hi = (norm.low, norm.high) if norm.mode == "percentile" else (0.0, 100.0)
        ops.append(v.ScaleRangeDescr(kwargs=v.ScaleRangeKwargs(axes=yx, min_percentile=lo,
                                                               max_percentile=hi)))
    elif norm.mode == "fixed":
        ops.append(v.ScaleLinearDescr(kwargs=v.ScaleLinearKwargs(
            gain=1.0 / norm.scale, offset=-norm.offset / norm.scale)))
    if norm.mode != "none" and norm.clip:  # as core.normalize clips (hot pixels)
        ops.append(v.ClipDescr(kwargs=v.ClipKwargs(min=CLIP[0], max=CLIP[1])))
    return ops


def _cover(crop: np.ndarray, probs: np.ndarray, classes: Sequence[int], path: Path) -> None:
    """Image | foreground probability side by side (2:1), as a PNG."""
    import imageio.v3 as iio

    g = crop[0]
    lo, hi = np.percentile(g, [1, 99.8])
    grey = np.clip((g - lo) / max(hi - lo, 1e-6), 0, 1)
    fg = np.clip(probs[list(classes)].sum(0), 0, 1)
    left = np.stack([grey] * 3, -1)
    right = np.stack([0.15 * grey + 0.85 * fg * c for c in (1.0, 0.75, 0.1)], -1)
    iio.imwrite(path, (np.concatenate([left, right], 1) * 255).round().astype(np.uint8))


def _model_card(model: UNetModel, geo: Any, classes: Sequence[str]) -> str:
    prov = model.provenance
    cfg = model.config
    norm = model.normalization
    lines = [
        f"# napari-unet {model.name}", "", model.description or "A U-Net trained with napari-unet.", "",
        "## Network",
        f"U-Net (Ronneberger et al. 2015), {cfg.padding} convolutions, depth {cfg.depth}, "
        f"{cfg.base_channels} channels in the first level, {cfg.in_channels} input channel(s), "
        f"classes: {', '.join(classes)}.", "",
        "## Input and output",
        f"- input `{INPUT_ID}`: (batch, channel, y, x), y and x of {geo.min_size} + n * {geo.step} pixels;",
        f"- output `{OUTPUT_ID}`: class probabilities (softmax) of the input's size; crop a halo of "
        f"{geo.halo} pixels per side (the overlap-tile strategy: pad the input by reflection, as the "
        "paper mirrors it, and blocks that step by multiples of "
        f"{geo.step} pixels give the whole image's output exactly).", "",
        "## Pre-processing",
        f"napari-unet normalises each image with its {norm.mode} statistics "
        + (f"(percentiles {norm.low} and {norm.high}) " if norm.mode == "percentile" else "")
        + "computed once for the whole image, never per tile. The package says `scale_range` per sample "
        "and channel; it differs from napari-unet by the spec's epsilon (1e-6) in the denominator, for "
        "constant images, and for images over 4 Mpx (napari-unet takes the percentiles of a regular "
        "subsample). See napari-unet's docs/export.md for the measured difference.", "",
        "## Post-processing in napari-unet",
        f"Instances: {model.postprocessing.split} of classes {list(model.postprocessing.instance_classes)}, "
        f"objects under {model.postprocessing.min_size} pixels removed (not expressible in the spec; kept "
        f"under `config.{CONFIG_KEY}`).", "",
    ]
    if model.postprocessing.background_prior is not None:
        lines += [f"Before that, napari-unet re-weights each plane's probabilities to that plane's own "
                  f"background share, estimated by EM (Saerens et al. 2002) against the "
                  f"{model.postprocessing.background_prior:.3f} background share of the painting it "
                  f"was trained on; the package's weights output the probabilities as predicted.", ""]
    if prov.get("training_data"):
        lines += ["## Training data", *[f"- {t}" for t in prov["training_data"]], ""]
        for k, v in (prov.get("training_data_licenses") or {}).items():
            lines.append(f"- {k}: {v}")
        lines.append("")
    lines += ["## Validation", "The test tensors are napari-unet's own overlap-tile prediction of a crop of a real "
              "image; the package reproduces them with each of its weight formats (bioimageio.core)."]
    if prov.get("held_back_evaluation"):
        lines += ["Held-back evaluation at training time:", "```",
                  json.dumps(prov["held_back_evaluation"], indent=1), "```"]
    lines.append("")
    lines += ["## Use", "In napari-unet: `napari-unet segment IMAGE --model this_package.zip`, or Open model "
              "file in the Segment widget.", "", "## Citation", PAPER + f". doi:{PAPER_DOI}", "",
              "## License", LICENSE, ""]
    return "\n".join(lines)


def _channel_names(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for i, n in enumerate(names):
        s = "".join(ch if ch.isalnum() else "_" for ch in str(n)).strip("_").lower() or f"class_{i}"
        out.append(s if s not in out else f"{s}_{i}")
    return out


def export_bioimageio(
    model: UNetModel,
    output: str | os.PathLike,
    *,
    sample: np.ndarray | None = None,
    authors: Sequence[str] = ("napari-unet developers",),
    validate: bool = True,
) -> Generator[ExportStep, None, Path]:
    """Write ``model`` as a bioimage.io model package (a zip that ilastik, deepImageJ, QuPath and
    bioimageio.core open).

    Parameters
    ----------
    model : UNetModel
        A single 2D napari-unet U-Net (an ensemble is refused: export it as ONNX or TorchScript).
    output : str or os.PathLike
        The zip to write; ``.zip`` is appended if missing.
    sample : numpy.ndarray, optional
        A real 2D image, (Y, X) or (C, Y, X), at least 256 x 256 pixels, for the package's test
        tensors and cover; default: the shipped sample that matches the model.
    authors : sequence of str
        The package's authors.
    validate : bool, default True
        Load the written zip with bioimageio.spec (file checks on, offline) and raise
        ``ExchangeError`` if it is not valid.

    Yields
    ------
    ExportStep
        What is being done (weights, test tensors, validation), for a progress display.

    Returns
    -------
    pathlib.Path
        The zip written; it appears complete or not at all.

    Raises
    ------
    ExchangeError
        The export extra is not installed, the model cannot be described as a package, or the
        package does not validate.
    """
    spec = require("bioimageio.spec", "bioimage.io export")
    require("onnx", "bioimage.io export (ONNX weights)")
    from bioimageio.spec.model import v0_5 as v

    from napari_unet.core.predict.predict2d import predict_image

    if isinstance(model, UNetModel) and model.members > 1:
        raise ExchangeError(f"this model averages {model.members} networks (an ensemble) and a "
                            f"bioimage.io package describes one: export it as ONNX or TorchScript "
                            f"(they hold the ensemble), or fine-tune with Networks = 1 "
                            f"(--members 1) for a package")
    if not isinstance(model, UNetModel) or not isinstance(model.net, model_module.UNet):
        raise ExchangeError("only a napari-unet U-Net can be exported as a bioimage.io package")
    out = Path(output)
    if out.suffix != ".zip":
        out = out.with_name(out.name + ".zip")
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    geo = package_geometry(cfg)
    total = 7 if validate else 6
    size = 2 * geo.halo + TEST_INTERIOR  # a valid input size (min_size + n * step)
    crop = _test_crop(default_sample(model) if sample is None else sample, cfg.in_channels, size)
    with tempfile.TemporaryDirectory(prefix="napari-unet-export-") as tmp:
        d = Path(tmp)
        probs = predict_image(crop, model, axes="CYX", output="probabilities", device="cpu")
        # the package's network gives the input's size with no prediction (zeros) where the output
        # lacks context; inside, our overlap-tile prediction of the crop
        expected = np.zeros_like(probs)
        inner = slice(geo.pad_before, size - geo.pad_after)
        expected[:, inner, inner] = probs[:, inner, inner]
        np.save(d / "test_input.npy", crop[None])
        np.save(d / "test_output.npy", expected[None].astype(np.float32))
        yield ExportStep(1, total, "test tensors")
        torch.save({k: t.detach().cpu().contiguous() for k, t in model.net.state_dict().items()},
                   d / "weights.pt")
        (d / ARCH_FILE).write_text(architecture_source(), encoding="utf-8")
        save_model(model, d / f"{_safe_name(model.name)}{SUFFIX}")
        yield ExportStep(2, total, "state dict")
        export_torchscript(model, d / "weights_torchscript.pt", packaged=True)
        yield ExportStep(3, total, "TorchScript")
        export_onnx(model, d / "weights.onnx", packaged=True)
        yield ExportStep(4, total, "ONNX")
        post = model.postprocessing
        _cover(crop, probs, post.instance_classes, d / "cover.png")  # the whole crop, halo included
        (d / "README.md").write_text(_model_card(model, geo, cfg.class_names), encoding="utf-8")
        yield ExportStep(5, total, "cover and model card")
        descr = _describe(model, d, geo, v, authors)
        tmp_zip = out.with_name(f".{out.name}.tmp.zip")
        try:
            spec.save_bioimageio_package(descr, output_path=tmp_zip)
            yield ExportStep(6, total, "package")
            if validate:
                check_package(tmp_zip)
                yield ExportStep(7, total, "validated")
            os.replace(tmp_zip, out)
        finally:
            if tmp_zip.exists():
                tmp_zip.unlink()
    return out


def _safe_name(name: str) -> str:
    s = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name).strip("_")
    return s or "model"


def _describe(model: UNetModel, d: Path, geo: Any, v: Any, authors: Sequence[str]) -> Any:
    cfg = model.config
    yx = [v.AxisId("y"), v.AxisId("x")]
    in_axes = [v.BatchAxis(), v.ChannelAxis(channel_names=[f"channel{i}" for i in range(cfg.in_channels)])]
    in_axes += [v.SpaceInputAxis(id=a, size=v.ParameterizedSize(min=geo.min_size, step=geo.step)) for a in yx]
    out_axes = [v.BatchAxis(), v.ChannelAxis(channel_names=_channel_names(cfg.class_names))]
    out_axes += [v.SpaceOutputAxisWithHalo(id=a, halo=geo.halo, size=v.SizeReference(
        tensor_id=v.TensorId(INPUT_ID), axis_id=a)) for a in yx]
    inp = v.InputTensorDescr(
        id=v.TensorId(INPUT_ID), axes=in_axes, description="raw intensities",
        test_tensor=v.FileDescr(source=d / "test_input.npy"),
        data=v.IntervalOrRatioDataDescr(type="float32"), pad=v.ReflectPadding(mode="reflect"),
        preprocessing=_preprocessing(model.normalization, v))
    outp = v.OutputTensorDescr(
        id=v.TensorId(OUTPUT_ID), axes=out_axes,
        description=f"class probabilities: {', '.join(cfg.class_names)}",
        test_tensor=v.FileDescr(source=d / "test_output.npy"),
        data=v.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))
    version = v.Version(torch.__version__.split("+")[0])
    weights = v.WeightsDescr(
        pytorch_state_dict=v.PytorchStateDictWeightsDescr(
            source=d / "weights.pt", pytorch_version=version,
            architecture=v.ArchitectureFromFileDescr(source=d / ARCH_FILE, callable=v.Identifier(ARCH_CALLABLE),
                                                     kwargs=architecture_kwargs(model))),
        torchscript=v.TorchscriptWeightsDescr(source=d / "weights_torchscript.pt", pytorch_version=version,
                                              parent="pytorch_state_dict"),
        onnx=v.OnnxWeightsDescr(source=d / "weights.onnx", opset_version=ONNX_OPSET, parent="pytorch_state_dict"))
    header = json.loads(json.dumps(model.header()))
    header["package_geometry"] = {"halo": geo.halo, "crop": geo.crop, "min_size": geo.min_size, "step": geo.step}
    header["model_file"] = f"{_safe_name(model.name)}{SUFFIX}"
    return v.ModelDescr(
        name=f"napari-unet {_safe_name(model.name).replace('_', ' ')}",
        description=(model.description or "U-Net segmentation model trained with napari-unet")[:1024],
        authors=[v.Author(name=a) for a in authors],
        cite=[v.CiteEntry(text=PAPER, doi=v.Doi(PAPER_DOI))],
        license=v.LicenseId(LICENSE),
        documentation=v.FileDescr(source=d / "README.md"),
        covers=[v.FileDescr(source=d / "cover.png")],
        attachments=[v.FileDescr(source=d / header["model_file"])],
        tags=["unet", "segmentation", "2d", "pytorch", "napari-unet", "instance-segmentation"],
        inputs=[inp], outputs=[outp], weights=weights,
        config=v.Config(**{CONFIG_KEY: header}),
    )


def check_package(path: str | os.PathLike) -> Any:
    """Validate a bioimage.io package with bioimageio.spec (files checked, nothing downloaded).

    Returns the model description; raises ExchangeError naming the first problems otherwise.
    """
    spec = require("bioimageio.spec", "bioimage.io validation")
    descr = spec.load_description(str(path), perform_io_checks=True)
    summary = getattr(descr, "validation_summary", None)
    if summary is None or summary.status == "failed" or type(descr).__name__ == "InvalidDescr":
        raise ExchangeError(f"{str(path)!r} is not a valid bioimage.io package: {_errors(summary)}")
    return descr


def _errors(summary: Any, limit: int = 3) -> str:
    if summary is None:
        return "no validation summary"
    msgs = []
    for det in summary.details:
        for err in det.errors:
            loc = ".".join(str(p) for p in err.loc)
            msgs.append(f"{loc}: {err.msg}" if loc else err.msg)
    return "; ".join(msgs[:limit]) or summary.status

"""Read a bioimage.io model package (a zip) into a :class:`~napari_unet.core.modelfile.files.UNetModel` our tiler runs.

- Our own packages come back exactly: the napari-unet model file inside (an attachment, its sha256
  checked) gives the same weights, normalisation, post-processing and classes. No extra package is
  needed for this.
- A package whose ``pytorch_state_dict`` is our architecture (``PackagedUNet`` with our configuration)
  is read into our own ``UNet`` with ``torch.load(weights_only=True)``: tensors only, no code.
- Any other 2D package with TorchScript or ONNX weights, an output of the input's size with a declared
  halo, and pre-processing we have (scale_range, scale_linear, fixed_zero_mean_unit_variance) runs
  through our tiler as an :class:`~.runtime.ExternalNet`. Its Python architecture file is never
  imported and its ``pytorch_state_dict`` never unpickled.

Everything else is refused with a sentence naming what napari-unet cannot run.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from napari_unet.core.exchange import require
from napari_unet.core.exchange.bioimageio import ARCH_CALLABLE, CONFIG_KEY
from napari_unet.core.exchange.portable import package_geometry
from napari_unet.core.exchange.runtime import ExternalGeometry, ExternalNet, onnx_session
from napari_unet.core.modelfile.files import ModelFileError, Postprocessing, UNetModel, read_model
from napari_unet.core.modelfile.normalization import CLIP, Normalization
from napari_unet.core.network.unet import UNet, UNetConfig

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")


class PackageError(ModelFileError):
    """A bioimage.io package napari-unet cannot read or run; the message says what is wrong."""


def is_package(path: str | os.PathLike) -> bool:
    """True for a file that is a zip (a bioimage.io package, or something pretending to be one)."""
    p = Path(path)
    return p.suffix.lower() == ".zip" or (p.is_file() and zipfile.is_zipfile(p))


def _rdf_text(path: Path) -> tuple[str, dict[str, Any]]:
    import yaml

    if not path.is_file():
        raise PackageError(f"model package {str(path)!r} does not exist")
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            rdf = next((n for n in RDF_NAMES if n in names), None)
            if rdf is None:
                raise PackageError(f"{str(path)!r} is a zip file but not a bioimage.io package (no rdf.yaml)")
            text = z.read(rdf).decode("utf-8")
    except zipfile.BadZipFile as exc:
        raise PackageError(f"{str(path)!r} is not a readable zip file (corrupt or truncated?): {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PackageError(f"{str(path)!r}: its rdf.yaml is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or data.get("type") != "model":
        raise PackageError(f"{str(path)!r}: its rdf.yaml does not describe a model (type: "
                           f"{data.get('type') if isinstance(data, dict) else None!r})")
    return rdf, data


def _own_file(path: Path, rdf: dict[str, Any]) -> tuple[str, str | None] | None:
    """(member name, sha256) of our model file in the package, or None if it is not ours."""
    header = (rdf.get("config") or {}).get(CONFIG_KEY)
    if not isinstance(header, dict) or not header.get("model_file"):
        return None
    name = header["model_file"]
    sha = next((a.get("sha256") for a in rdf.get("attachments") or [] if isinstance(a, dict)
                and str(a.get("source")) == name), None)
    return name, sha


@dataclass(frozen=True)
class PackagePlan:
    """What :func:`load_package` will do: ``kind`` "napari-unet" (our model file inside), "state_dict"
    (our architecture), "torchscript" or "onnx" (a network from elsewhere); ``name`` of the model."""

    kind: str
    name: str
    descr: Any = None
    member: str | None = None
    sha256: str | None = None


def inspect_package(path: str | os.PathLike) -> PackagePlan:
    """Check that napari-unet can run the package (without loading weights); PackageError if not."""
    path = Path(path)
    _, rdf = _rdf_text(path)
    own = _own_file(path, rdf)
    name = str(rdf.get("name") or path.stem)
    if own is not None:
        return PackagePlan("napari-unet", path.stem, None, own[0], own[1])
    descr = _description(path)
    _check_2d(descr)
    w = descr.weights
    if w.pytorch_state_dict is not None and _our_architecture(w.pytorch_state_dict) is not None:
        return PackagePlan("state_dict", name, descr)
    if w.torchscript is not None:
        return PackagePlan("torchscript", name, descr)
    if w.onnx is not None:
        require("onnxruntime", f"the ONNX weights of {str(path)!r}")
        return PackagePlan("onnx", name, descr)
    formats = [f for f in ("pytorch_state_dict", "tensorflow_saved_model_bundle", "keras_hdf5",
                           "tensorflow_js") if getattr(w, f, None) is not None]
    raise PackageError(f"{str(path)!r} has weights only as {', '.join(formats) or 'nothing'}; napari-unet runs "
                       "TorchScript or ONNX weights (a foreign pytorch_state_dict needs its Python code, "
                       "which napari-unet does not run)")


def _description(path: Path) -> Any:
    spec = require("bioimageio.spec", f"reading the bioimage.io package {str(path)!r}")
    from bioimageio.spec.model import v0_5

    descr = spec.load_description(str(path), perform_io_checks=True, format_version="latest")
    if not isinstance(descr, v0_5.ModelDescr):
        summary = getattr(descr, "validation_summary", None)
        errs = []
        for det in getattr(summary, "details", []):
            errs += [f"{'.'.join(str(p) for p in e.loc)}: {e.msg}" for e in det.errors]
        raise PackageError(f"{str(path)!r} is not a valid bioimage.io model package: "
                           f"{'; '.join(errs[:3]) or type(descr).__name__}")
    return descr


def _axes(tensor: Any) -> str:
    out = ""
    for a in tensor.axes:
        if a.type == "batch":
            out += "b"
        elif a.type == "channel":
            out += "c"
        elif a.type == "space" and str(a.id) in ("y", "x"):
            out += str(a.id)
        else:
            kind = "3D" if a.type == "space" else f"a {a.type} axis"
            raise PackageError(f"the model's tensor {str(tensor.id)!r} has {kind} ({a.type} axis "
                               f"{str(a.id)!r}): napari-unet runs 2D models with axes batch, channel, y, x")
    if "y" not in out or "x" not in out:
        raise PackageError(f"the model's tensor {str(tensor.id)!r} lacks a y or x axis: not a 2D image model")
    return out


def _check_2d(descr: Any) -> None:
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise PackageError(f"the model has {len(descr.inputs)} inputs and {len(descr.outputs)} outputs; "
                           "napari-unet runs models with one input image and one output")
    _axes(descr.inputs[0])
    _axes(descr.outputs[0])


def _our_architecture(w: Any) -> UNetConfig | None:
    arch = w.architecture
    if str(getattr(arch, "callable", "")) != ARCH_CALLABLE:
        return None
    kw = dict(arch.kwargs)
    geo = {k: kw.pop(k, None) for k in ("crop", "pad_before", "pad_after")}
    try:
        cfg = UNetConfig.from_dict(kw)
    except (TypeError, ValueError):
        return None
    g = package_geometry(cfg)
    return cfg if (geo["crop"], geo["pad_before"], geo["pad_after"]) == (g.crop, g.pad_before, g.pad_after) \
        else None


def _normalization(descr: Any) -> Normalization:
    ipt = descr.inputs[0]
    norm: Normalization | None = None
    clipped = False
    for op in ipt.preprocessing:
        pid = op.id
        if pid == "ensure_dtype":
            continue
        if pid == "clip" and norm is not None and not clipped:
            if (float(op.kwargs.min), float(op.kwargs.max)) != CLIP:
                raise PackageError(f"the model's pre-processing clips to [{op.kwargs.min}, {op.kwargs.max}]; "
                                   f"napari-unet clips normalised values to {list(CLIP)} only")
            clipped = True
            continue
        if norm is not None:
            raise PackageError(f"the model's pre-processing has more than one normalisation step ({pid!r} "
                               "after another): napari-unet applies one")
        k = op.kwargs
        if pid == "scale_range":
            axes = [str(a) for a in (k.axes or [a.id for a in ipt.axes])]
            if "channel" in axes and _n_channels(ipt) > 1:
                raise PackageError("the model's scale_range normalises all channels jointly; napari-unet "
                                   "normalises each channel")
            if "y" not in axes or "x" not in axes or (k.reference_tensor not in (None, ipt.id)):
                raise PackageError("the model's scale_range is not computed over the image (y and x); "
                                   "napari-unet cannot reproduce it")
            lo, hi = float(k.min_percentile), float(k.max_percentile)
            norm = Normalization("minmax") if (lo, hi) == (0.0, 100.0) else Normalization("percentile", lo, hi)
        elif pid == "scale_linear" and not hasattr(k, "axis"):
            norm = Normalization("fixed", offset=-float(k.offset) / float(k.gain), scale=1.0 / float(k.gain))
        elif pid == "fixed_zero_mean_unit_variance" and not hasattr(k, "axis"):
            norm = Normalization("fixed", offset=float(k.mean), scale=float(k.std))
        else:
            raise PackageError(f"the model's pre-processing {pid!r} is not one napari-unet can reproduce "
                               "(it has scale_range, scale_linear and fixed_zero_mean_unit_variance)")
    if norm is None:
        return Normalization("none")
    # a package without the clip step was trained (and is tested) without it
    return replace(norm, clip=clipped)


def _n_channels(t: Any) -> int:
    return next((len(a.channel_names) for a in t.axes if a.type == "channel"), 1)


def _geometry(descr: Any, n_classes: int, class_names: list[str]) -> ExternalGeometry:
    from bioimageio.spec.model import v0_5

    ipt, out = descr.inputs[0], descr.outputs[0]
    sizes = {str(a.id): a.size for a in ipt.axes if a.type == "space"}
    if not all(isinstance(s, v0_5.ParameterizedSize) for s in sizes.values()):
        raise PackageError(f"the model's input sizes are fixed ({sizes}); napari-unet's tiler needs "
                           "parametrized sizes (min + n * step)")
    if sizes["y"].min != sizes["x"].min or sizes["y"].step != sizes["x"].step:
        raise PackageError("the model's y and x input sizes differ in min or step; napari-unet needs them equal")
    halos = {}
    for a in out.axes:
        if a.type != "space":
            continue
        size = a.size
        if not isinstance(size, v0_5.SizeReference) or str(size.axis_id) != str(a.id) or size.offset:
            raise PackageError(f"the model's output axis {str(a.id)!r} is not of the input's size; "
                               "napari-unet runs same-size outputs with a halo")
        halos[str(a.id)] = getattr(a, "halo", 0)
    missing = [k for k, h in halos.items() if not h]
    if missing:
        raise PackageError(f"the model declares no halo for its output axes {missing}: napari-unet cannot "
                           "tell how much context each tile needs, so it cannot tile it exactly")
    return ExternalGeometry(in_channels=_n_channels(ipt), num_classes=n_classes,
                            class_names=tuple(class_names), declared_halo=max(halos.values()),
                            step=sizes["y"].step, min_size=sizes["y"].min)


def _output_kind(descr: Any) -> tuple[str, int, list[str]]:
    out = descr.outputs[0]
    k = _n_channels(out)
    names = next((list(a.channel_names) for a in out.axes if a.type == "channel"), ["foreground"])
    ops = [op.id for op in out.postprocessing if op.id != "ensure_dtype"]
    rng = getattr(out.data, "range", (None, None)) if not isinstance(out.data, list | tuple) else (None, None)
    bounded = rng is not None and rng[0] is not None and rng[1] is not None and 0 <= rng[0] and rng[1] <= 1
    if ops == ["softmax"] and k > 1:
        kind = "logits"
    elif ops == ["sigmoid"] and k == 1:
        kind = "sigmoid"
    elif not ops and bounded:
        kind = "probabilities" if k > 1 else "probability"
    elif not ops and k > 1:
        kind = "logits"
    else:
        raise PackageError(f"the model's output ({k} channel(s), post-processing {ops or 'none'}) is not "
                           "class scores napari-unet can read (softmax over classes, one sigmoid channel, "
                           "or probabilities)")
    if k == 1:
        names = ["background", names[0]]
    return kind, max(k, 2), names


def load_package(path: str | os.PathLike, device: str | torch.device = "cpu") -> UNetModel:
    """Load a bioimage.io model package (see the module docstring) as a model our tiler runs.

    Parameters
    ----------
    path : str or os.PathLike
        The package (``.zip``).
    device : str or torch.device, default "cpu"
        Where the network goes once read (weights are read on the CPU first).

    Returns
    -------
    UNetModel
        The network in eval mode, with the package's normalisation, post-processing and classes.

    Raises
    ------
    napari_unet.core.exchange.ExchangeError
        A package napari-unet cannot run (not 2D, no TorchScript/ONNX/own weights, pre-processing
        it does not have, a checksum that does not match, a missing optional package), with a
        sentence naming what.
    """
    path = Path(path)
    plan = inspect_package(path)
    if plan.kind == "napari-unet":
        model = _load_own(path, plan)
    elif plan.kind == "state_dict":
        model = _load_state_dict(path, plan)
    else:
        model = _load_external(path, plan)
    if str(device) != "cpu":
        from napari_unet.core.device import resolve_device

        model.net.to(resolve_device(device))
    model.source = str(path)
    return model


def _load_own(path: Path, plan: PackagePlan) -> UNetModel:
    with zipfile.ZipFile(path) as z:
        try:
            data = z.read(plan.member)
        except KeyError:
            raise PackageError(f"{str(path)!r}: its napari-unet model file {plan.member!r} is missing") from None
    if plan.sha256 and hashlib.sha256(data).hexdigest() != plan.sha256:
        raise PackageError(f"{str(path)!r}: its model file {plan.member!r} is corrupt (sha256 differs from rdf.yaml)")
    with tempfile.TemporaryDirectory(prefix="napari-unet-package-") as tmp:
        f = Path(tmp) / Path(plan.member).name
        f.write_bytes(data)
        model = read_model(f)
    return model


def _member_bytes(entry: Any) -> bytes:
    """The bytes of a file of the package (its sha256 checked against rdf.yaml)."""
    return entry.get_reader().read()


def _load_state_dict(path: Path, plan: PackagePlan) -> UNetModel:
    import io

    descr = plan.descr
    w = descr.weights.pytorch_state_dict
    cfg = _our_architecture(w)
    try:  # tensors only: weights_only refuses anything that would run code
        state = torch.load(io.BytesIO(_member_bytes(w)), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PackageError(f"{str(path)!r}: its pytorch_state_dict cannot be read as plain tensors: {exc}") from None
    net = UNet(cfg)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PackageError(f"{str(path)!r}: its weights do not match its architecture: {exc}") from None
    return UNetModel(net.eval(), _normalization(descr), Postprocessing(), plan.name,
                     str(descr.description), {"imported_from": str(path)})


def _load_external(path: Path, plan: PackagePlan) -> UNetModel:
    import io

    descr = plan.descr
    kind, k, names = _output_kind(descr)
    geo = _geometry(descr, k, names)
    norm = _normalization(descr)
    if plan.kind == "torchscript":
        try:
            runner = torch.jit.load(io.BytesIO(_member_bytes(descr.weights.torchscript)), map_location="cpu")
        except Exception as exc:
            raise PackageError(f"{str(path)!r}: its TorchScript weights cannot be loaded: {exc}") from None
    else:
        try:
            runner = onnx_session(_member_bytes(descr.weights.onnx))
        except Exception as exc:
            raise PackageError(f"{str(path)!r}: its ONNX weights cannot be loaded: {exc}") from None
    net = ExternalNet(geo, runner, axes=_axes(descr.inputs[0]), out_axes=_axes(descr.outputs[0]), kind=kind,
                      description=f"{plan.kind} weights of a bioimage.io package")
    instance = tuple(range(1, k))
    return UNetModel(net.eval(), norm, Postprocessing(instance_classes=instance), plan.name,
                     str(descr.description), {"imported_from": str(path), "weights": plan.kind})

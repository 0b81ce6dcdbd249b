"""Model files: one ``.safetensors`` file holding the weights, with the configuration as JSON in the
file's header (next to the weights, never inside the ``state_dict``).

Saving is atomic (write to a temporary file in the same folder, then rename). Loading never unpickles
anything: safetensors only stores tensors and strings. A corrupt or foreign file raises
:class:`ModelFileError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from napari_unet.core.modelfile.normalization import Normalization
from napari_unet.core.network.ensemble import UNetEnsemble, n_members
from napari_unet.core.network.lift import lift_network
from napari_unet.core.network.unet import UNet, UNetConfig

FORMAT = "napari-unet"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"
_HEADER_KEY = "napari_unet"


class ModelFileError(ValueError):
    """A model file that cannot be read: missing, corrupt, foreign, or of an unknown version."""


@dataclass(frozen=True)
class Postprocessing:
    """How probabilities become instances.

    ``instance_classes``: classes whose connected regions are objects (e.g. (1,) for
    background/foreground, the interior class of a background/boundary/interior model).
    ``grow_classes``: classes into which the objects are grown afterwards (e.g. the boundary class).
    ``min_size``: objects smaller than this (pixels) are removed. ``split``: "components" (connected
    components, as the paper's separating background lines allow), "watershed" (additionally
    split touching objects at the saddles of their distance transform) or "seeded" (seeds: the
    connected regions where the probability of ``instance_classes`` exceeds ``seed_threshold``,
    at least ``min_seed_size`` pixels; a watershed of that probability floods from them over the
    pixels where background has probability < 0.5: what the network knows about borders
    separates packed objects). ``background_prior``: the share of background among the pixels
    the model was trained on; when set, each plane's probabilities are re-weighted to that plane's
    own background share, estimated by EM (:mod:`napari_unet.core.postprocess.prior`) before anything else
    (None: used as predicted; the shipped models).
    """

    instance_classes: tuple[int, ...] = (1,)
    grow_classes: tuple[int, ...] = ()
    min_size: int = 10
    split: str = "components"
    seed_threshold: float = 0.5
    min_seed_size: int = 1
    background_prior: float | None = None

    def __post_init__(self) -> None:
        bp = self.background_prior
        if bp is not None and not (isinstance(bp, int | float) and 0.0 < float(bp) < 1.0):
            raise ValueError(f"Postprocessing.background_prior must be in (0, 1) or None, got {bp!r}")

    def to_dict(self) -> dict[str, Any]:
        d = {"instance_classes": list(self.instance_classes), "grow_classes": list(self.grow_classes),
             "min_size": self.min_size, "split": self.split,
             "seed_threshold": self.seed_threshold, "min_seed_size": self.min_seed_size}
        if self.background_prior is not None:
            d["background_prior"] = float(self.background_prior)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Postprocessing:
        d = dict(d)
        d["instance_classes"] = tuple(int(c) for c in d.get("instance_classes", (1,)))
        d["grow_classes"] = tuple(int(c) for c in d.get("grow_classes", ()))
        return cls(**d)


@dataclass
class UNetModel:
    """A network with everything needed to use it: normalisation, post-processing, provenance.

    Attributes
    ----------
    net : UNet or UNetEnsemble
        The network (or several networks of one architecture, whose probabilities are averaged);
        its ``config`` (:class:`~napari_unet.core.network.unet.UNetConfig`) is the architecture.
    normalization : Normalization
        How an image is scaled before the network (statistics of the whole image or plane).
    postprocessing : Postprocessing
        How class probabilities become instance labels.
    name, description : str
        Shown in the widgets and written into the model file.
    provenance : dict
        What the model was trained from and how (JSON-serialisable).
    source : str or None
        The file or package it was loaded from (None for a model made in this session).
    """

    net: UNet  # or a UNetEnsemble (several networks of one architecture, averaged)
    normalization: Normalization = field(default_factory=Normalization)
    postprocessing: Postprocessing = field(default_factory=Postprocessing)
    name: str = "unnamed"
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # where it was loaded from

    @property
    def config(self) -> UNetConfig:
        return self.net.config

    @property
    def members(self) -> int:
        """How many networks the model averages (1: a single U-Net)."""
        return n_members(self.net)

    def header(self) -> dict[str, Any]:
        h = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "architecture": self.net.config.to_dict(),
            "normalization": self.normalization.to_dict(),
            "postprocessing": self.postprocessing.to_dict(),
            "provenance": self.provenance,
        }
        if self.members > 1:
            h["ensemble"] = self.members  # weights under members.<i>. (core/ensemble.py)
        return h

    def copy(self) -> UNetModel:
        """A deep copy (weights included), e.g. as the start of fine-tuning."""
        net = _empty_net(self.net.config, self.members)
        net.load_state_dict(self.net.state_dict())
        return UNetModel(net, self.normalization, self.postprocessing, self.name, self.description,
                         json.loads(json.dumps(self.provenance)), self.source)


def save_model(model: UNetModel, path: str | os.PathLike) -> Path:
    """Write ``model`` to a model file, atomically.

    Parameters
    ----------
    model : UNetModel
        The model; its configuration (architecture, normalisation, post-processing, provenance)
        goes into the file's JSON header, beside the weights (never inside the ``state_dict``).
    path : str or os.PathLike
        The file to write; ``.safetensors`` is appended if missing. Missing folders are made.

    Returns
    -------
    pathlib.Path
        The path written. A temporary file in the same folder is renamed onto it when complete,
        so a reader never sees half a file.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != SUFFIX:
        path = path.with_name(path.name + SUFFIX)
    make_parent(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.net.state_dict().items()}
    meta = {_HEADER_KEY: json.dumps(model.header())}
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))


def make_parent(path: str | os.PathLike) -> None:
    """Create the folder that ``path`` goes into; a ValueError that says so where a file stands
    where a folder must be (the bare ``FileExistsError`` said only "File exists")."""
    p = Path(path).absolute()
    for anc in p.parents:  # the nearest existing ancestor decides
        if anc.exists():
            if not anc.is_dir():
                raise ValueError(f"cannot write {str(path)!r}: {str(anc)!r} is a file, not a folder; "
                                 f"choose an output inside a folder")
            break
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the folder {str(p.parent)!r} for {str(path)!r}: "
                         f"{exc.strerror or exc}") from None


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Write a file atomically: ``write(tmp)`` fills a temporary file in the same folder, which
    then replaces ``path`` in one rename. A crash or an error leaves the old file (or none), never a
    half-written one; the temporary file is removed on failure. Returns ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files: give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON configuration of a model file, without loading the weights.

    Parameters
    ----------
    path : str or os.PathLike
        A napari-unet ``.safetensors`` model file.

    Returns
    -------
    dict
        The header: ``format``, ``format_version``, ``name``, ``description``, ``architecture``,
        ``normalization``, ``postprocessing``, ``provenance`` (and ``ensemble`` for several
        networks).

    Raises
    ------
    ModelFileError
        No such file, not a safetensors file, no napari-unet header, a corrupt header, or a
        format version newer than this napari-unet reads.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise ModelFileError(
            f"{str(path)!r} is not a readable model file (expected a napari-unet .safetensors file): {exc}"
        ) from None
    if _HEADER_KEY not in meta:
        raise ModelFileError(
            f"{str(path)!r} is a safetensors file but not a napari-unet model (no '{_HEADER_KEY}' header)"
        )
    try:
        header = json.loads(meta[_HEADER_KEY])
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{str(path)!r} has a corrupt napari-unet header: {exc}") from None
    if header.get("format") != FORMAT:
        raise ModelFileError(f"{str(path)!r} is not a napari-unet model file")
    version = header.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{str(path)!r} has format version {version!r}; this napari-unet reads up to "
            f"{FORMAT_VERSION}: update napari-unet"
        )
    return header


def read_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu") -> UNetModel:
    """Read a napari-unet model file, or a shipped model by name (see :func:`shipped_models`).

    Parameters
    ----------
    name_or_path : str or os.PathLike
        A shipped model's name (``"nuclei"``) or the path of a ``.safetensors`` model file (the
        suffix may be left out).
    device : str or torch.device, default "cpu"
        Where the network goes once read.

    Returns
    -------
    UNetModel
        The network in eval mode with its normalisation, post-processing and provenance.

    Raises
    ------
    ModelFileError
        No such file or name, a foreign or corrupt file, weights that do not match the
        architecture or that hold NaN / infinite values.

    Weights are read on the CPU (safetensors: no code is unpickled), then moved to ``device``.
    bioimage.io packages are opened by :func:`napari_unet.core.exchange.opening.load_model`
    (``napari_unet.load_model``), which opens any model.
    """
    from safetensors.torch import load_file

    path = resolve_model_path(name_or_path)
    if path.suffix.lower() == ".zip":
        raise ModelFileError(f"{str(path)!r} is a bioimage.io package, not a napari-unet model file: "
                             "open it with napari_unet.load_model")
    header = read_header(path)
    try:
        config = UNetConfig.from_dict(header["architecture"])
        normalization = Normalization.from_dict(header.get("normalization", {}))
        post = Postprocessing.from_dict(header.get("postprocessing", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{str(path)!r} has an invalid model configuration: {exc}") from None
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        raise ModelFileError(f"{str(path)!r}: the weights cannot be read (corrupt file?): {exc}") from None
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise ModelFileError(
            f"{str(path)!r}: the weights contain NaN or infinite values ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}), so it would segment nothing: the training that "
            f"made it diverged or the file is damaged; use another model file") from None
    k = header.get("ensemble", 1)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ModelFileError(f"{str(path)!r} has an invalid model configuration: ensemble size {k!r}")
    net = _empty_net(config, k)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{str(path)!r}: the weights do not match its architecture: {exc}") from None
    net.eval()
    if str(device) != "cpu":
        from napari_unet.core.device import resolve_device

        net.to(resolve_device(device))
    return UNetModel(
        net=net,
        normalization=normalization,
        postprocessing=post,
        name=str(header.get("name", path.stem)),
        description=str(header.get("description", "")),
        provenance=dict(header.get("provenance", {})),
        source=str(path),
    )


def _empty_net(config: UNetConfig, members: int) -> UNet | UNetEnsemble:
    return UNet(config) if members == 1 else UNetEnsemble.empty(config, members)


# ---------------------------------------------------------------------------- shipped models
def _models_dir() -> Path:
    return Path(str(resources.files("napari_unet") / "models"))


def shipped_models() -> dict[str, Path]:
    """Name -> file of the models that ship inside the package (``napari_unet/models``)."""
    d = _models_dir()
    if not d.is_dir():
        return {}
    return {p.name[: -len(SUFFIX)]: p for p in sorted(d.glob(f"*{SUFFIX}"))}


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A shipped model's name or a path -> the model file's path (ModelFileError if neither)."""
    s = str(name_or_path)
    shipped = shipped_models()
    if s in shipped:
        return shipped[s]
    path = Path(s).expanduser()
    if path.is_file():
        return path
    if path.with_name(path.name + SUFFIX).is_file():
        return path.with_name(path.name + SUFFIX)
    names = ", ".join(sorted(shipped)) or "none"
    raise ModelFileError(f"no model file {s!r} and no shipped model of that name (shipped: {names})")


# ---------------------------------------------------------------------------- 3D
def lift_model(model: UNetModel, z_blocks: int = 1) -> UNetModel:
    """``model`` (2D) as a 3D model that equals it plane by plane until it is fine-tuned; the
    normalisation, post-processing and provenance (with ``lifted_from``) are kept."""
    if model.members > 1:
        raise ValueError("an ensemble cannot be lifted to 3D: lift one of its networks")
    prov = dict(model.provenance or {})
    prov["lifted_from"] = {"name": model.name, "z_blocks": int(z_blocks)}
    return UNetModel(lift_network(model.net, z_blocks), model.normalization, model.postprocessing,
                     name=f"{model.name} 3D", description=model.description, provenance=prov)

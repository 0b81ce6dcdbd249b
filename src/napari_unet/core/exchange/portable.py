"""Our U-Net in forms other programs run: TorchScript (``torch.jit.load``) and ONNX (onnxruntime).

:class:`PortableUNet` runs the very modules (the same weight tensors) of a :class:`~napari_unet.core.network.unet.UNet`
with a forward pass TorchScript can compile and ONNX can trace with dynamic sizes; it maps
(N, C, H, W) to class logits (N, classes, h, w) exactly like ``UNet.forward`` (no size checks: feed
valid sizes, see ``UNetConfig.is_valid_input_size``).

:class:`PackagedUNet` is what a bioimage.io package describes: an output of the input's size, class
probabilities, and a halo of ``geometry.halo`` pixels per side to crop (the overlap-tile strategy).
For a valid U-Net the network reads a window starting ``geometry.crop`` pixels into the input so
that, with tile steps that are multiples of the pooling grid, tiles put together equal the whole
image (see :func:`package_geometry`).
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from napari_unet.core.exchange import ExchangeError, require
from napari_unet.core.modelfile.files import UNetModel, atomic_write
from napari_unet.core.network.ensemble import UNetEnsemble
from napari_unet.core.network.unet import UNet, UNetConfig

ONNX_OPSET = 17


@dataclass(frozen=True)
class PackageGeometry:
    """Sizes of the same-size, halo-cropping form of a U-Net (per spatial axis, in pixels).

    Input sizes are ``min_size + n * step``; ``halo`` output pixels per side are to be cropped (their
    context is incomplete); the network reads the input from pixel ``crop`` on and its output lands at
    ``pad_before`` (the rest is filled with zeros: ``pad_after`` pixels at the far end).
    """

    halo: int
    crop: int
    pad_before: int
    pad_after: int
    min_size: int
    step: int


def package_geometry(config: UNetConfig) -> PackageGeometry:
    """The halo and input sizes that make blockwise prediction exact.

    Exactness needs every network input to start on the whole image's pooling grid (a multiple of
    2**depth, minus the valid net's own halo) and blocks that step by multiples of 2**depth. A
    same-padded net already has a halo on the grid. A valid net (halo 92 for depth 4) is given a halo
    ``h`` a few pixels larger (96) such that ``h + 92 + k * 16`` are valid input sizes; it then reads
    the input from pixel ``h - 92`` and its output (k * 16 + 4 pixels) starts at pixel ``h``.
    """
    g = config.grid
    if config.padding == "same":
        h = config.halo
        return PackageGeometry(h, 0, 0, 0, 2 * h + g, g)
    hv = config.halo
    for extra in range(g):
        h = hv + extra
        if all(config.is_valid_input_size(h + hv + k * g) for k in (1, 2, 3)):
            return PackageGeometry(h, extra, h, hv, 2 * h + g, g)
    raise ExchangeError(f"no overlap-tile geometry found for {config}")  # pragma: no cover


class PortableUNet(nn.Module):
    """A TorchScript-compilable forward pass over the modules of ``net`` (weights shared)."""

    def __init__(self, net: UNet) -> None:
        super().__init__()
        self.down = net.down
        self.bottom = net.bottom
        self.upconv = net.upconv
        self.up = net.up
        self.head = net.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)  # drop-out is the identity at inference
        i = len(skips) - 1
        for upconv, block in zip(self.upconv, self.up):  # noqa: B905 (TorchScript has no strict=)
            x = upconv(x)
            skip = skips[i]
            i -= 1
            h, w = x.shape[-2], x.shape[-1]
            dy = (skip.shape[-2] - h) // 2
            dx = (skip.shape[-1] - w) // 2
            x = block(torch.cat([skip[:, :, dy : dy + h, dx : dx + w], x], dim=1))
        return self.head(x)


class PortableEnsemble(nn.Module):
    """:class:`~..ensemble.UNetEnsemble` in portable form: ``log`` of the members' mean softmax
    (so that a softmax of the output gives the ensemble's probabilities, as ours does)."""

    def __init__(self, net: UNetEnsemble) -> None:
        super().__init__()
        self.members = nn.ModuleList([PortableUNet(m) for m in net.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ps: list[torch.Tensor] = []
        for m in self.members:
            ps.append(torch.softmax(m(x), dim=1))
        p = torch.stack(ps, 0).mean(0)
        return torch.log(p.clamp_min(1e-30))


def portable(net: UNet | UNetEnsemble) -> nn.Module:
    return PortableEnsemble(net) if isinstance(net, UNetEnsemble) else PortableUNet(net)


class PackagedUNet(nn.Module):
    """Same-size class probabilities with a halo to crop: the network of a bioimage.io package."""

    def __init__(self, net: UNet) -> None:
        super().__init__()
        geo = package_geometry(net.config)
        self.core = portable(net)
        self.crop = geo.crop
        self.pad_before = geo.pad_before
        self.pad_after = geo.pad_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.crop
        p = torch.softmax(self.core(x[:, :, c:, c:]), dim=1)
        if self.pad_before > 0 or self.pad_after > 0:
            p = F.pad(p, [self.pad_before, self.pad_after, self.pad_before, self.pad_after])
        return p


def _net(model: UNetModel | UNet) -> UNet:
    """The network on the CPU in eval mode (a copy when it lives elsewhere or trains: the caller's
    model is left as it is)."""
    net = model.net if isinstance(model, UNetModel) else model
    if not isinstance(net, UNet | UNetEnsemble):
        raise ExchangeError("only napari-unet's own U-Net can be exported (this model was imported "
                            "from another program's package; export the original instead)")
    if net.config.dims == 3:
        raise ExchangeError("exporting a 3D U-Net is not available yet: keep its .safetensors "
                            "file (napari-unet segments volumes with it)")
    if net.training or any(p.device.type != "cpu" for p in net.parameters()):
        net = copy.deepcopy(net).to("cpu").eval()
    return net


def _example_input(config: UNetConfig) -> torch.Tensor:
    n = config.input_size(3 * config.grid)
    return torch.zeros(1, config.in_channels, n, n)


def scripted(model: UNetModel | UNet, packaged: bool = False) -> torch.jit.ScriptModule:
    """The network (logits; or with ``packaged`` the bioimage.io form) compiled by TorchScript."""
    net = _net(model)
    module = PackagedUNet(net) if packaged else portable(net)
    return torch.jit.script(module.eval())


def export_torchscript(model: UNetModel | UNet, path: str | os.PathLike, packaged: bool = False) -> Path:
    """Write the network as a TorchScript file, atomically.

    ``torch.jit.load(path)(x)`` gives our logits for any batch and any valid size (shapes are not
    fixed).

    Parameters
    ----------
    model : UNetModel or UNet
        napari-unet's own 2D U-Net (an imported foreign network or a 3D U-Net is refused).
    path : str or os.PathLike
        The file to write.
    packaged : bool, default False
        False: (N, C, H, W) float32 input of valid sizes H, W (pixels) -> logits (N, classes, h, w);
        True: the bioimage.io form (:class:`PackagedUNet`): class probabilities of the input's size
        with a halo to crop.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    napari_unet.core.exchange.ExchangeError
        A model that cannot be exported, with a sentence saying why.
    """
    module = scripted(model, packaged)
    return atomic_write(Path(path), lambda tmp: torch.jit.save(module, tmp))


def export_onnx(model: UNetModel | UNet, path: str | os.PathLike, packaged: bool = False) -> Path:
    """Write the network as an ONNX file (opset 17), atomically.

    Input ``input``, output ``output``; batch, height and width are dynamic: onnxruntime gives our
    logits (or the packaged probabilities).

    Parameters
    ----------
    model : UNetModel or UNet
        napari-unet's own 2D U-Net (an imported foreign network or a 3D U-Net is refused).
    path : str or os.PathLike
        The file to write.
    packaged : bool, default False
        False: (N, C, H, W) float32 input of valid sizes -> logits (N, classes, h, w); True: the
        bioimage.io form (:class:`PackagedUNet`): class probabilities of the input's size.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    napari_unet.core.exchange.ExchangeError
        A model that cannot be exported, or the ``onnx`` package missing (the message names the
        ``export`` extra).
    """
    require("onnx", "ONNX export")
    net = _net(model)
    module = (PackagedUNet(net) if packaged else portable(net)).eval()
    cfg = net.config
    x = _example_input(cfg) if not packaged else torch.zeros(
        1, cfg.in_channels, package_geometry(cfg).min_size + cfg.grid,
        package_geometry(cfg).min_size + cfg.grid)
    axes = {0: "batch", 2: "height", 3: "width"}
    out_axes = dict(axes) if packaged else {0: "batch", 2: "out_height", 3: "out_width"}

    def write(tmp: str) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            # the TorchScript-based exporter: no onnxscript needed, sizes stay symbolic
            torch.onnx.export(module, (x,), tmp, dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": axes, "output": out_axes})

    return atomic_write(Path(path), write)

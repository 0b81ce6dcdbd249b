"""Networks that are not our ``UNet`` module, run by our overlap-tile engine: a TorchScript module or an
ONNX session (a foreign bioimage.io package, or our own network under onnxruntime).

:class:`ExternalNet` is an ``nn.Module`` whose ``forward`` maps a (N, C, h, w) float32 tile to class
logits (N, classes, h', w'), whatever order of axes and kind of output (probabilities, one sigmoid
channel) the wrapped program uses. Its ``config`` describes the geometry to the tiler: our
:class:`~..model.UNetConfig` for our own network, or :class:`ExternalGeometry` for a foreign one (an
output of the input's size, a halo to crop, input sizes ``min_size + n * step``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_unet.core.exchange import ExchangeError, require
from napari_unet.core.network.geometry import Axis
from napari_unet.core.network.unet import UNetConfig

OUTPUT_KINDS = ("logits", "probabilities", "sigmoid", "probability")


@dataclass(frozen=True)
class SteppedAxis(Axis):
    """Y or X of a same-size network from elsewhere: input sizes ``min_size + n * step`` pixels,
    ``context`` pixels of halo per side, tile offsets on multiples of ``step``."""

    min_size: int = 16
    step: int = 16
    context: int = 0

    @property
    def grid(self) -> int:
        return self.step

    @property
    def halo(self) -> int:
        return self.context

    def output_size(self, n: int) -> int | None:
        n = int(n)
        return n if n >= self.min_size and (n - self.min_size) % self.step == 0 else None


@dataclass(frozen=True)
class ExternalGeometry(UNetConfig):
    """Geometry of a same-size network from elsewhere: valid input sizes ``min_size + n * step``
    (``min_size`` a multiple of ``step``), ``declared_halo`` output pixels per side to crop.

    The tiler sees a "same" network whose pooling grid is ``step`` and whose halo is the declared one
    rounded up to the grid (and large enough for the smallest tile): more context than needed never
    changes a pixel that had enough."""

    padding: str = "same"
    base_channels: int = 32  # only for the tile-size memory estimate
    dropout: float = 0.0
    declared_halo: int = 0
    step: int = 16
    min_size: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.step < 1 or self.min_size < 1 or self.min_size % self.step:
            raise ExchangeError(f"input sizes {self.min_size} + n * {self.step}: napari-unet's tiler needs "
                                "a minimum size that is a multiple of the step")

    @property
    def grid(self) -> int:
        return self.step

    @property
    def halo(self) -> int:
        need = max(self.declared_halo, math.ceil((self.min_size - self.step) / 2))
        return int(math.ceil(need / self.step) * self.step)

    @property
    def yx_axis(self) -> Axis:
        return SteppedAxis((), (False,), False, self.min_size, self.step, self.halo)

    def input_size(self, output_size: int) -> int:
        n = max(int(output_size), self.min_size)
        return self.min_size + math.ceil((n - self.min_size) / self.step) * self.step

    def _invalid_message(self, input_size: int) -> str:
        return (f"input size {int(input_size)} is not valid for this network: sizes are "
                f"{self.min_size} + n * {self.step}")

    def tile_flops(self, input_size: int) -> float:
        raise NotImplementedError("the operation count of a network from elsewhere is not known")


class ExternalNet(nn.Module):
    """A TorchScript module or an ONNX session as a network our tiler can drive.

    ``axes``: the program's input axes, a string of "b" (batch), "c" (channel), "y", "x" in its order
    (e.g. "bcyx", "byxc", "yx"); ``out_axes`` the same for its output. ``kind``: what the output is:
    "logits" (softmax over classes gives probabilities: our convention), "probabilities" (already
    softmax), "sigmoid" (one channel of logits of the foreground), "probability" (one channel of
    foreground probability). The returned logits are such that our softmax gives the program's
    probabilities.
    """

    def __init__(self, config: UNetConfig, runner: Any, *, axes: str = "bcyx", out_axes: str = "bcyx",
                 kind: str = "logits", description: str = "") -> None:
        super().__init__()
        if kind not in OUTPUT_KINDS:
            raise ValueError(f"kind must be one of {OUTPUT_KINDS}, got {kind!r}")
        self.config = config
        self.axes, self.out_axes, self.kind = axes, out_axes, kind
        self.description = description
        if isinstance(runner, torch.jit.ScriptModule):
            self.script = runner.eval()
            self.session = None
        else:
            self.script = None
            self.session = runner
            self._input_name = runner.get_inputs()[0].name

    def __deepcopy__(self, memo: dict) -> ExternalNet:
        # the tiler takes a private copy of a network; this one keeps no state that inference changes
        return self

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.script is not None:
            return self.script(x.contiguous())
        arr = np.ascontiguousarray(x.detach().to("cpu").numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self._input_name: arr})[0]).to(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected a (N, C, H, W) tile, got shape {tuple(x.shape)}")
        if "b" not in self.axes:  # one sample at a time
            return torch.cat([self.forward(x[i : i + 1]) for i in range(x.shape[0])]) if x.shape[0] > 1 \
                else self._forward_one(x)
        return self._forward_one(x)

    def _forward_one(self, x: torch.Tensor) -> torch.Tensor:
        t = x
        if "c" not in self.axes:
            t = t[:, 0]
        src = "bcyx" if "c" in self.axes else "byx"
        if "b" not in self.axes:
            t, src = t[0], src.replace("b", "")
        t = t.permute([src.index(a) for a in self.axes])
        y = self._run(t)
        # back to (b, c, y, x)
        order = [a for a in "bcyx" if a in self.out_axes]
        y = y.permute([self.out_axes.index(a) for a in order])
        if "b" not in self.out_axes:
            y = y[None]
        if "c" not in self.out_axes:
            y = y[:, None]
        return self._to_logits(y.float())

    def _to_logits(self, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "logits":
            return y
        if self.kind == "probabilities":
            return torch.log(y.clamp_min(1e-30))
        if self.kind == "probability":  # foreground probability p: logits (0, logit p)
            p = y.clamp(1e-30, 1.0 - 1e-7)
            y = torch.log(p) - torch.log1p(-p)
        return torch.cat([torch.zeros_like(y), y], dim=1)  # sigmoid(z) = softmax((0, z))[1]


def onnx_session(model_bytes_or_path: bytes | str, threads: int | None = None) -> Any:
    """An onnxruntime CPU session (``threads``: intra-op threads, default: onnxruntime's choice)."""
    ort = require("onnxruntime", "ONNX inference")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes_or_path, sess_options=opts, providers=["CPUExecutionProvider"])


def onnxruntime_model(model: Any, threads: int | None = None) -> Any:
    """``model`` (a UNetModel of our U-Net) with its network run by onnxruntime: same normalisation,
    post-processing and geometry, so our tiler stays exact (logits within float rounding of torch)."""
    import os
    import tempfile

    from napari_unet.core.exchange.portable import export_onnx
    from napari_unet.core.modelfile.files import UNetModel

    for module in ("onnx", "onnxruntime"):
        require(module, "the onnxruntime backend")
    with tempfile.TemporaryDirectory(prefix="napari-unet-onnx-") as tmp:
        path = export_onnx(model, os.path.join(tmp, "net.onnx"))
        data = path.read_bytes()
    net = ExternalNet(model.config, onnx_session(data, threads), kind="logits",
                      description="onnxruntime (CPU)")
    return UNetModel(net, model.normalization, model.postprocessing, model.name, model.description,
                     dict(model.provenance), model.source)

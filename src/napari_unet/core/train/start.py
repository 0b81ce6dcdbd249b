"""The network being trained: which classes it learns (:func:`resolve_mode`), a copy of the base
model (one network of a base ensemble, :func:`member_view`; its head widened to a border class when
packed objects need one), a private seeded RNG, the averaged weights, the arithmetic precision;
and the loops' small helpers (whether Stop was pressed, a 3D model refused for 2D training)."""

from __future__ import annotations

import functools
import math
from collections.abc import Generator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import Any

import torch

from napari_unet.core.modelfile.files import UNetModel
from napari_unet.core.network.ensemble import members_of
from napari_unet.core.network.unet import UNet, UNetConfig
from napari_unet.core.train.annotations import check_mode
from napari_unet.core.train.data import choose_mode


def widened_config(cfg: UNetConfig) -> UNetConfig:
    """The architecture of :func:`widen_head`'s result: 3 classes, "boundary" in the middle."""
    names = cfg.class_names
    return replace(cfg, num_classes=3, class_names=(names[0], "boundary", names[1]))


def widen_head(net: UNet) -> UNet:
    """A 2-class (background / object) network as a 3-class background / boundary / interior one:
    same weights, the object class becomes the interior, and the new boundary class starts halfway
    between background and object (so it starts rare and is learnt, not guessed)."""
    cfg = net.config
    if cfg.num_classes != 2:
        raise ValueError(f"only a 2-class head can be widened, this one has {cfg.num_classes}")
    wide = UNet(widened_config(cfg))
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("head.")}
    w, b = net.head.weight.detach(), net.head.bias.detach()
    state["head.weight"] = torch.stack([w[0], 0.5 * (w[0] + w[1]), w[1]])
    state["head.bias"] = torch.stack([b[0], 0.5 * (b[0] + b[1]) - math.log(2.0), b[1]])
    wide.load_state_dict(state)
    return wide


@functools.lru_cache(maxsize=1)
def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" where the device computes bfloat16 natively (CUDA with bf16, a CPU with
    AVX512-BF16 or AMX), else "fp32". Measured here: bf16 autocast makes a training step of the
    shipped architecture 1.9x faster on an AVX512-BF16 CPU; on CPUs without it 10-500x slower."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if _cpu_has_bf16() else "fp32"
    return "fp32"


def autocast_for(precision: str, device: torch.device) -> Any:
    """A context-manager factory for the forward pass at ``precision``."""
    if precision == "bf16":
        return functools.partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)
    return nullcontext


class AveragedWeights:
    """Exponential moving average of a network's parameters (``decay`` per step, warmed up as
    (1 + n) / (10 + n) so that early steps are not averaged with the starting weights for long).
    ``net`` is a separate copy holding the averaged weights (the one validated and returned)."""

    def __init__(self, net: UNet, decay: float) -> None:
        self.decay = float(decay)
        if self.decay <= 0:
            self.net = net
            return
        self.net = UNet(net.config)
        self.net.load_state_dict(net.state_dict())
        self.net.to(next(net.parameters()).device, memory_format=torch.channels_last)
        self.net.eval()
        self.n = 0
        # frozen parameters (TrainConfig.freeze_encoder) never change: nothing to average
        pairs = [(e, c) for e, c in zip(self.net.parameters(), net.parameters(), strict=True)
                 if c.requires_grad]
        self._ema, self._cur = [e for e, _ in pairs], [c for _, c in pairs]

    @torch.no_grad()
    def update(self) -> None:
        if self.decay <= 0:
            return
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        torch._foreach_lerp_(self._ema, self._cur, 1.0 - d)


class TorchRng:
    """A private torch global-RNG state (weight init, dropout), swapped in only while we compute, so
    that training is reproducible with a seed and the caller's RNG is left alone."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=self.devices):
            torch.manual_seed(seed)
            self.cpu = torch.get_rng_state()
            self.cuda = torch.cuda.get_rng_state(device) if self.devices else None

    @contextmanager
    def active(self) -> Generator[None, None, None]:
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.devices[0])
            try:
                yield
            finally:
                self.cpu = torch.get_rng_state()
                if self.cuda is not None:
                    self.cuda = torch.cuda.get_rng_state(self.devices[0])


def schedule(progress: float, warmup: float, cosine: bool) -> float:
    """Learning-rate factor at ``progress`` in [0, 1] of the run: linear warm-up over the first
    ``warmup`` of it, then a cosine decay to 5 % (or constant without ``cosine``)."""
    p = min(max(progress, 0.0), 1.0)
    if warmup > 0 and p < warmup:
        return 0.1 + 0.9 * p / warmup
    if not cosine:
        return 1.0
    q = (p - warmup) / max(1.0 - warmup, 1e-9)
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * q))


def resolve_mode(model: UNetModel | None, mode: str | None, labels: Any,
                  background_label: int | None) -> tuple[str, bool]:
    """(mode, widen): the target classes, and whether a 2-class base gets a boundary class."""
    k = None if model is None else model.config.num_classes
    if k is not None and k not in (2, 3):
        raise ValueError(f"cannot fine-tune a {k}-class model from painted instance labels: "
                         f"only 2-class (binary) and 3-class (boundary) models")
    if mode in (None, "auto"):
        if k == 3:
            return "boundary", False
        mode = choose_mode(labels, background_label)
    check_mode(mode)
    if k == 3 and mode == "binary":
        raise ValueError("mode 'binary' needs 2 classes but the model has 3 (background / boundary "
                         "/ interior): fine-tune it in mode 'boundary'")
    return mode, k == 2 and mode == "boundary"


def member_view(model: UNetModel, member: int) -> UNetModel:
    """One network of a base ensemble (network ``member`` modulo its size) as a model to fine-tune."""
    nets = members_of(model.net)
    if len(nets) == 1:
        return model
    return replace(model, net=nets[member % len(nets)])


def _should_stop(stop: Any) -> bool:
    if stop is None:
        return False
    if hasattr(stop, "is_set"):
        return bool(stop.is_set())
    if callable(stop):
        return bool(stop())
    return bool(stop)


def _center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    dy = (x.shape[-2] - size) // 2
    dx = (x.shape[-1] - size) // 2
    return x[..., dy : dy + size, dx : dx + size]


def _clone_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def refuse_3d(model: Any) -> None:
    """A 3D model (3D U-Net) fine-tunes on painted z-slices of a volume, not on 2D paintings: say
    so instead of failing inside the network."""
    cfg = getattr(model, "config", model)
    if cfg is not None and getattr(cfg, "dims", 2) == 3:
        name = getattr(model, "name", None) or "this model"
        raise ValueError(f"'{name}' is a 3D model (3D U-Net): it fine-tunes on painted z-slices of "
                         f"a volume (Fine-tune widget: tick '3D U-Net'; command line: train "
                         f"--volume). For 2D painting choose a 2D base model, e.g. nuclei")

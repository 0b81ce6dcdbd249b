"""The parts of an optimisation run shared by the 2D and 3D loops: averaged weights, a private
seeded RNG, the learning-rate schedule, the Stop check, the centre crop of a patch, a weights
snapshot."""

from __future__ import annotations

import math
from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

import torch

from napari_unet.core.network.unet import UNet


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


def should_stop(stop: Any) -> bool:
    """Whether ``stop`` (None, a threading.Event, a callable or a flag) says to stop now."""
    if stop is None:
        return False
    if hasattr(stop, "is_set"):
        return bool(stop.is_set())
    if callable(stop):
        return bool(stop())
    return bool(stop)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size`` x ``size`` pixels of the last two axes of ``x``."""
    dy = (x.shape[-2] - size) // 2
    dx = (x.shape[-1] - size) // 2
    return x[..., dy : dy + size, dx : dx + size]


def clone_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``net``'s weights (a snapshot the training may return to)."""
    return {k: v.detach().clone() for k, v in net.state_dict().items()}

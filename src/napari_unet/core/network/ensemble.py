"""An ensemble of U-Nets of one architecture: the mean of their softmax probabilities.

Fine-tuned on a few painted frames, one network is a draw: the same recipe with another seed
scores far better or far worse on frames not trained on. The mean of a few networks'
probabilities (Lakshminarayanan et al., NeurIPS 2017, "deep ensembles"; nnU-Net predicts with the
ensemble of its five cross-validation models) removes the draw: a pair scores above the worse of
its two networks. Averaging the *weights* instead (a "model soup") does not work here:
fine-tuning at Adam's 2e-3 takes the members into different basins, and the soup scores below
its members. The measured figures: docs/benchmarks.md, "An ensemble instead of one network".

:class:`UNetEnsemble` is a drop-in network for the tiler: ``forward`` returns ``log(mean softmax)``,
so that the softmax every consumer applies gives the members' mean probabilities exactly, and the
argmax is the ensemble's. Its ``config`` is the members' (one geometry, so overlap-tile inference
is exact as for one network). A model file stores the members' weights under ``members.<i>.``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from napari_unet.core.network.unet import UNet, UNetConfig


class UNetEnsemble(nn.Module):
    """``members``: two or more :class:`UNet` of the same :class:`UNetConfig`."""

    def __init__(self, members: Sequence[UNet]) -> None:
        super().__init__()
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 networks, got {len(members)}")
        cfg = members[0].config
        for m in members:
            if not isinstance(m, UNet):
                raise TypeError(f"ensemble members must be napari-unet U-Nets, got {type(m).__name__}")
            if m.config != cfg:
                raise ValueError("ensemble members must share one architecture; got "
                                 f"{cfg.to_dict()} and {m.config.to_dict()}")
        self.config: UNetConfig = cfg
        self.members = nn.ModuleList(members)

    @classmethod
    def empty(cls, config: UNetConfig, n: int) -> UNetEnsemble:
        """``n`` freshly initialised members (to load a state dict into)."""
        return cls([UNet(config) for _ in range(int(n))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = None
        for m in self.members:
            q = torch.softmax(m(x).float(), dim=1)
            p = q if p is None else p + q
        assert p is not None
        p = p / len(self.members)
        return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


def members_of(net: nn.Module) -> list[UNet]:
    """The U-Nets of ``net``: its members for an ensemble, else ``[net]``."""
    return list(net.members) if isinstance(net, UNetEnsemble) else [net]  # type: ignore[list-item]


def n_members(net: nn.Module) -> int:
    return len(members_of(net))

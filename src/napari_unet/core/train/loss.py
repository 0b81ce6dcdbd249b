"""Training losses: the paper's weighted softmax cross-entropy (eq. 1 with eq. 2's weight map), and a
soft Dice term on top of it (nnU-Net's loss). Unknown pixels (target -1) contribute nothing."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from napari_unet.core.train.annotations import IGNORE


def weighted_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Pixel-wise softmax cross-entropy weighted by ``weights`` (paper eq. 1 with eq. 2's w(x)),
    averaged over the known pixels; ``target == -1`` pixels contribute nothing.

    ``logits`` (N, K, h, w); ``target`` (N, h, w) integer, -1 unknown; ``weights`` (N, h, w).
    """
    t = target.long()
    ce = F.cross_entropy(logits, t, ignore_index=IGNORE, reduction="none")
    known = (t != IGNORE).sum().clamp(min=1)
    return (ce * weights.to(ce.dtype) * (t != IGNORE)).sum() / known


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice of the object classes (1..K-1) over the known pixels of the batch."""
    t = target.long()
    known = (t != IGNORE).to(logits.dtype)
    p = torch.softmax(logits, dim=1) * known[:, None]
    onehot = F.one_hot(t.clamp(min=0), logits.shape[1]).movedim(-1, 1).to(p.dtype)
    onehot = onehot * known[:, None]
    dims = (0, *range(2, logits.ndim))  # (N, K, h, w) or, in 3D, (N, K, z, h, w)
    inter = (p * onehot).sum(dims)[1:]
    denom = (p.sum(dims) + onehot.sum(dims))[1:]
    return 1.0 - ((2 * inter + eps) / (denom + eps)).mean()


def training_loss(kind: str, logits: torch.Tensor, target: torch.Tensor,
                  weights: torch.Tensor) -> torch.Tensor:
    """``kind`` "ce" (weighted cross-entropy) or "ce+dice" (plus :func:`dice_loss`)."""
    loss = weighted_loss(logits, target, weights)
    if kind == "ce+dice":
        loss = loss + dice_loss(logits, target)
    return loss

"""Validation that means something: held-back blocks of whole painted objects with background
around them, scored with object-aware figures (foreground IoU and instance F1@0.5).

A validation set with no object (an empty margin of a painting scores a perfect IoU for an empty
prediction) or with too few objects to rank models is *no validation*: :func:`choose_holdback`
then holds nothing back and says why, and training keeps its final averaged weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from ..io import Postprocessing
from ..metrics import match_instances
from ..model import UNet
from ..postprocess import instances_from_semantic, semantic_labels


@dataclass
class Holdback:
    """The held-back block of one plane. ``box`` = (y0, y1, x0, x1) in plane pixels; ``mask`` (box
    shape): the scored pixels (known, not on an object cut by the block's edge); ``instances``
    (box shape): the complete painted objects inside, 0 elsewhere; ``foreground``: the painted
    object pixels of the mask."""

    box: tuple[int, int, int, int]
    mask: np.ndarray
    instances: np.ndarray
    foreground: np.ndarray
    n_objects: int


@dataclass(frozen=True)
class ValScore:
    """Scores on the held-back blocks: foreground IoU, instance F1 at IoU > 0.5, their mean (the
    figure models are ranked by) and the number of objects they were measured on."""

    iou: float
    f1: float
    n_objects: int

    @property
    def score(self) -> float:
        return 0.5 * (self.iou + self.f1)


def _count_in(boxes: np.ndarray, y0: int, y1: int, x0: int, x1: int, shape: tuple[int, int]
              ) -> np.ndarray:
    """Which object bounding boxes (n, 4: y0, y1, x0, x1) lie inside the block without touching
    its edges (an edge on the image border may be touched)."""
    h, w = shape
    return ((boxes[:, 0] >= y0 + (y0 > 0)) & (boxes[:, 1] <= y1 - (y1 < h))
            & (boxes[:, 2] >= x0 + (x0 > 0)) & (boxes[:, 3] <= x1 - (x1 < w)))


def _block(known: np.ndarray, inst: np.ndarray, fraction: float) -> Holdback | None:
    """The block of about ``fraction`` of the known area holding about ``fraction`` of the plane's
    objects, whole, with background around them (None if no block holds two whole objects)."""
    h, w = known.shape
    objs = ndi.find_objects(inst.astype(np.int64)) if inst.max() > 0 else []
    ids = np.array([i + 1 for i, s in enumerate(objs) if s is not None], np.int64)
    if ids.size < 2:
        return None
    boxes = np.array([(s.start, s.stop, t.start, t.stop) for s, t in (objs[i - 1] for i in ids)])
    ys, xs = np.nonzero(known)
    ky0, ky1, kx0, kx1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    area = float(known.sum())
    bh = int(min(ky1 - ky0, max(8, round(np.sqrt(fraction * area)))))
    bw = int(min(kx1 - kx0, max(8, round(fraction * area / max(bh, 1)))))
    want = max(2.0, fraction * ids.size)
    bg = known & (inst == 0)
    ck = np.pad(np.cumsum(np.cumsum(known, 0), 1), ((1, 0), (1, 0)))
    cb = np.pad(np.cumsum(np.cumsum(bg, 0), 1), ((1, 0), (1, 0)))
    step = max(4, min(bh, bw) // 6)
    best, best_key = None, None
    plane_bg = float(bg.sum()) / area
    for y0 in list(range(ky0, ky1 - bh + 1, step)) + [ky1 - bh]:
        y1 = y0 + bh
        for x0 in list(range(kx0, kx1 - bw + 1, step)) + [kx1 - bw]:
            x1 = x0 + bw
            nk = ck[y1, x1] - ck[y0, x1] - ck[y1, x0] + ck[y0, x0]
            nb = cb[y1, x1] - cb[y0, x1] - cb[y1, x0] + cb[y0, x0]
            if nk < 0.5 * bh * bw or nb < 0.05 * nk or nb > 0.95 * nk:
                continue  # mostly unknown, or no background / no objects around
            n = int(_count_in(boxes, y0, y1, x0, x1, (h, w)).sum())
            if n < 2:
                continue
            key = (abs(n - want), abs(nb / nk - plane_bg))
            if best_key is None or key < best_key:
                best, best_key = (y0, y1, x0, x1), key
    if best is None:
        return None
    y0, y1, x0, x1 = best
    inside = ids[_count_in(boxes, y0, y1, x0, x1, (h, w))]
    sub = inst[y0:y1, x0:x1]
    complete = np.isin(sub, inside)
    mask = known[y0:y1, x0:x1] & ((sub == 0) | complete)
    return Holdback(box=best, mask=mask, instances=np.where(complete, sub, 0).astype(np.int32),
                    foreground=complete, n_objects=int(inside.size))


def choose_holdback(planes: list[tuple[np.ndarray, np.ndarray]], config: Any
                    ) -> tuple[list[Holdback | None], int, str]:
    """Held-back blocks for ``planes`` = [(known (H, W) bool, painted instances (H, W))]; returns
    (one Holdback or None per plane, the number of painted objects, a sentence for the user)."""
    n_total = sum(int(np.unique(inst[inst > 0]).size) for _, inst in planes)
    none = [None] * len(planes)
    after = "training uses all of the painting and keeps its final (averaged) weights"
    if config.val_fraction <= 0:
        return none, n_total, f"no validation (switched off): {after}"
    if n_total < config.val_min_total:
        return none, n_total, (f"no validation: {n_total} objects painted, fewer than the "
                               f"{config.val_min_total} needed to hold some back; {after}")
    blocks = [_block(known, inst, config.val_fraction) for known, inst in planes]
    n_val = sum(b.n_objects for b in blocks if b is not None)
    if n_val < config.val_min_objects:
        return none, n_total, (f"no validation: no part of the painting holds {config.val_min_objects} "
                               f"whole objects with background around them; {after}")
    k = sum(b is not None for b in blocks)
    return blocks, n_total, (f"validation on {n_val} whole painted objects held back in {k} "
                             f"block(s); the best validated weights are kept")


@torch.no_grad()
def predict_probabilities(net: UNet, image_padded: np.ndarray, pad: int,
                          box: tuple[int, int, int, int], out_size: int, halo: int,
                          device: torch.device, bias: torch.Tensor | None = None,
                          autocast: Any = None) -> np.ndarray:
    """(K, h, w) softmax on the output window ``box`` = (y0, y1, x0, x1) of a padded plane, in
    tiles of ``out_size`` with ``halo`` context (``bias``: (K,) added to the logits first)."""
    y0, y1, x0, x1 = box
    h, w = y1 - y0, x1 - x0
    out = np.zeros((net.config.num_classes, h, w), np.float32)

    def origins(a: int, n: int) -> list[int]:
        if n <= out_size:
            return [a]
        o = list(range(a, a + n - out_size, out_size))
        return o + [a + n - out_size]

    for ty in origins(y0, h):
        for tx in origins(x0, w):
            sy, sx = ty - halo + pad, tx - halo + pad
            tile = image_padded[:, sy : sy + out_size + 2 * halo, sx : sx + out_size + 2 * halo]
            x = torch.from_numpy(np.ascontiguousarray(tile))[None].to(device)
            x = x.contiguous(memory_format=torch.channels_last)
            if autocast is not None:
                with autocast():
                    logits = net(x).float()
            else:
                logits = net(x)
            if bias is not None:
                logits = logits + bias.to(logits.device)[None, :, None, None]
            prob = torch.softmax(logits.float(), dim=1)[0].cpu().numpy()
            cy0, cx0 = ty - y0, tx - x0
            hh, ww = min(out_size, h - cy0), min(out_size, w - cx0)
            out[:, cy0 : cy0 + hh, cx0 : cx0 + ww] = prob[:, :hh, :ww]
    return out


def score_holdback(probabilities: np.ndarray, hb: Holdback, post: Postprocessing
                   ) -> tuple[int, int, int, int, int]:
    """(intersection, union, tp, n_pred, n_gt) of the instances that ``post`` makes of
    ``probabilities`` (K, h, w) on one held-back block, as a user gets them. Predicted objects
    lying mostly outside the scored mask (on objects cut by the block's edge, or unknown pixels)
    are not counted."""
    classes = semantic_labels(probabilities)
    fgp = probabilities[list(post.instance_classes)].sum(0)
    pred = instances_from_semantic(classes, post, fgp, probabilities).astype(np.int64)
    fg = pred > 0
    m = hb.mask
    inter = int((fg & hb.foreground & m).sum())
    union = int(((fg | hb.foreground) & m).sum())
    if pred.max() > 0:
        size = np.bincount(pred.ravel())
        inside = np.bincount(pred.ravel(), weights=m.ravel().astype(np.float64), minlength=size.size)
        drop = inside < 0.5 * size
        drop[0] = False
        pred[drop[pred]] = 0
    mt = match_instances(pred, hb.instances)
    return inter, union, mt.tp, mt.n_pred, mt.n_gt


def validate(net: UNet, data: Any, device: torch.device, post: Postprocessing,
             bias: torch.Tensor | None = None, autocast: Any = None) -> ValScore | None:
    """Scores of ``net`` on the held-back blocks of ``data`` (None when nothing is held back)."""
    if not data.has_validation:
        return None
    inter = union = tp = n_pred = n_gt = 0
    was_training = net.training
    net.eval()
    try:
        for p in data.planes:
            if p.holdback is None:
                continue
            prob = predict_probabilities(net, p.image, p.pad, p.holdback.box, data.out_size,
                                         data.halo, device, bias, autocast)
            a, b, c, d, e = score_holdback(prob, p.holdback, post)
            inter, union, tp, n_pred, n_gt = inter + a, union + b, tp + c, n_pred + d, n_gt + e
    finally:
        net.train(was_training)
    iou = inter / union if union else 0.0  # blocks always hold objects: union > 0
    f1 = 2 * tp / (n_pred + n_gt) if (n_pred + n_gt) else 0.0
    return ValScore(iou=iou, f1=f1, n_objects=n_gt)

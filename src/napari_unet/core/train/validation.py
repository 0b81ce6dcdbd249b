"""Validation that means something: whole painted objects held back from all over the painting,
each with a ring of its surroundings, scored with object-aware figures (foreground IoU and
instance F1@0.5 of the instances a user would get).

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

from napari_unet.core.metrics import match_instances
from napari_unet.core.modelfile.files import Postprocessing
from napari_unet.core.network.unet import UNet
from napari_unet.core.postprocess.instances import instances_from_semantic, semantic_labels


@dataclass
class Holdback:
    """What is held back of one plane. ``box`` = (y0, y1, x0, x1) in plane pixels around it;
    ``region`` (box shape): the pixels training does not see the labels of (the held-back objects
    and a ring around each); ``mask`` (box shape): the scored pixels (the region without the parts
    of other objects it overlaps); ``instances`` (box shape): the held-back objects, 0 elsewhere;
    ``foreground``: their pixels; ``target`` (box shape): the training target (class ids) on the
    scored pixels, -1 elsewhere (set by :func:`~.data.prepare_data`; the validation loss
    reads it)."""

    box: tuple[int, int, int, int]
    region: np.ndarray
    mask: np.ndarray
    instances: np.ndarray
    foreground: np.ndarray
    n_objects: int
    target: np.ndarray | None = None


@dataclass(frozen=True)
class ValScore:
    """Scores on the held-back objects: foreground IoU, instance F1 at IoU > 0.5, their mean (the
    figure models are ranked by) and the number of objects they were measured on."""

    iou: float
    f1: float
    n_objects: int
    nll: float | None = None  # mean cross-entropy, background vs objects, on the scored pixels

    @property
    def score(self) -> float:
        return 0.5 * (self.iou + self.f1)


def _scattered(known: np.ndarray, inst: np.ndarray, fraction: float, seed: int = 0
               ) -> Holdback | None:
    """About ``fraction`` of the plane's painted objects, drawn from all over it, each held back
    whole with a ring of its surroundings (a fifth of its diameter, >= 2 px); None with fewer than
    two objects. Scattered, not one block: a block took a whole side of a scratch assay, whose
    cells looked different from the rest, and scored a model on what it never saw the like of."""
    ids = np.unique(inst[inst > 0])
    if ids.size < 2:
        return None
    n = int(min(ids.size - 1, max(1, round(fraction * ids.size))))
    pick = np.sort(np.random.default_rng(seed).choice(ids, size=n, replace=False))
    area = float(np.median(np.bincount(np.searchsorted(ids, inst[inst > 0]))))
    ring = max(2, int(round(0.2 * np.sqrt(area))))
    chosen = np.isin(inst, pick)
    region = ndi.binary_dilation(chosen, iterations=ring) & known
    ys, xs = np.nonzero(region)
    box = (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
    y0, y1, x0, x1 = box
    sub, c, r = inst[y0:y1, x0:x1], chosen[y0:y1, x0:x1], region[y0:y1, x0:x1]
    return Holdback(box=box, region=r, mask=r & ((sub == 0) | c),
                    instances=np.where(c, sub, 0).astype(np.int32), foreground=c, n_objects=n)


def choose_holdback(planes: list[tuple[np.ndarray, np.ndarray]], config: Any
                    ) -> tuple[list[Holdback | None], int, str]:
    """Held-back objects for ``planes`` = [(known (H, W) bool, painted instances (H, W))]; returns
    (one Holdback or None per plane, the number of painted objects, a sentence for the user)."""
    n_total = sum(int(np.unique(inst[inst > 0]).size) for _, inst in planes)
    none = [None] * len(planes)
    after = "training uses all of the painting and keeps its final (averaged) weights"
    if config.val_fraction <= 0:
        return none, n_total, f"no validation (switched off): {after}"
    if n_total < config.val_min_total:
        return none, n_total, (f"no validation: {n_total} objects painted, fewer than the "
                               f"{config.val_min_total} needed to hold some back; {after}")
    blocks = [_scattered(known, inst, config.val_fraction, seed=k + 1000 * config.holdback_seed)
              for k, (known, inst) in enumerate(planes)]
    n_val = sum(b.n_objects for b in blocks if b is not None)
    if n_val < config.val_min_objects:
        return none, n_total, (f"no validation: {config.val_min_objects} whole objects cannot be "
                               f"held back from this painting; {after}")
    return blocks, n_total, (f"validation on {n_val} whole painted objects held back from all "
                             f"over the painting")


@torch.no_grad()
def predict_probabilities(net: UNet, image_padded: np.ndarray, pad: int,
                          box: tuple[int, int, int, int], out_size: int, halo: int,
                          device: torch.device, bias: torch.Tensor | None = None,
                          autocast: Any = None) -> np.ndarray:
    """(K, h, w) softmax on the output window ``box`` = (y0, y1, x0, x1) of a padded plane, in
    tiles of ``out_size`` with ``halo`` context whose origins lie on the plane's pooling grid, so
    that a valid network's output equals whole-image inference (``bias``: (K,) added to the
    logits first)."""
    y0, y1, x0, x1 = box
    h, w = y1 - y0, x1 - x0
    out = np.zeros((net.config.num_classes, h, w), np.float32)
    g = net.config.grid
    step = max(g, out_size // g * g)

    def origins(a: int, b: int) -> list[int]:
        # on the image's pooling grid, as whole-image inference: a shifted grid changes the output
        return list(range(a // g * g, b, step))

    for ty in origins(y0, y1):
        for tx in origins(x0, x1):
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
            # the part of this tile's output inside the box
            ay, ax = max(ty, y0), max(tx, x0)
            by, bx = min(ty + out_size, y1), min(tx + out_size, x1)
            out[:, ay - y0 : by - y0, ax - x0 : bx - x0] = prob[:, ay - ty : by - ty, ax - tx : bx - tx]
    return out


def score_holdback(probabilities: np.ndarray, hb: Holdback, post: Postprocessing
                   ) -> tuple[int, int, int, int, int]:
    """(intersection, union, tp, n_pred, n_gt) of the instances that ``post`` makes of
    ``probabilities`` (K, h, w) on one held-back block, as a user gets them (as predicted: the
    background-prior adaptation of :mod:`~napari_unet.core.postprocess.prior` is a whole-plane figure, and a
    block drawn around held-back objects is not a plane the user segments). Predicted objects
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
    nll_sum, nll_n = 0.0, 0
    was_training = net.training
    net.eval()
    try:
        for p in data.planes:
            if p.holdback is None:
                continue
            prob = predict_probabilities(net, p.image, p.pad, p.holdback.box, data.out_size,
                                         data.halo, device, bias, autocast)
            a, b, c, d, e = score_holdback(prob, p.holdback, post)
            if p.holdback.target is not None:
                k = p.holdback.target >= 0
                pb = np.clip(prob[0][k].astype(np.float64), 1e-7, 1 - 1e-7)
                obj = p.holdback.target[k] > 0
                nll_sum += float(-np.log(np.where(obj, 1.0 - pb, pb)).sum())
                nll_n += int(k.sum())
            inter, union, tp, n_pred, n_gt = inter + a, union + b, tp + c, n_pred + d, n_gt + e
    finally:
        net.train(was_training)
    iou = inter / union if union else 0.0  # blocks always hold objects: union > 0
    f1 = 2 * tp / (n_pred + n_gt) if (n_pred + n_gt) else 0.0
    return ValScore(iou=iou, f1=f1, n_objects=n_gt, nll=nll_sum / nll_n if nll_n else None)

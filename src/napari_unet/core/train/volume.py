"""Fine-tune a 3D U-Net from a few painted z-slices of a volume.

The user paints some slices of a (Z, Y, X) Labels layer completely (each object its own id, 0 on a
painted slice is background); every other slice is unknown. Each painted slice becomes the paper's
binary target with its separating lines and its border weight map (eq. 2, in the slice: the
distances to the nearest objects are only known there), everything else is ignored by the loss.
Patches are 3D: their output covers painted slices, their input reads the planes above and below
(mirrored beyond the volume's faces, as in inference). Augmentation deforms every plane of a patch
with the same in-plane elastic field (plus flips, rotations by 90 degrees, intensity jitter): the
voxels are strongly anisotropic, so the deformation stays in the plane.

A 2D model is first lifted to 3D (:mod:`~napari_unet.core.lift`): the start equals it on every
plane, and fine-tuning adds what the neighbouring planes say. :func:`fine_tune_volume` is a
generator of :class:`~napari_unet.core.events.StepDone` returning the fine-tuned model.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

import numpy as np
import torch

from ..annotations import IGNORE, AnnotationError, labels_to_target
from ..augment import augment
from ..checks import as_image
from ..device import resolve_device
from ..events import StepDone
from ..io import UNetModel
from ..lift import lift_model
from ..padding import mirror_index
from ..tiling3d import VolumeReader
from ..weights import weight_map
from .config import TrainConfig
from .loss import training_loss
from .network import TorchRng, schedule

VOLUME_GRAD_CLIP = 1.0  # the step's gradient norm (live training diverged without a clip)


def painted_slices(labels: Any) -> list[int]:
    """The z indices of a (Z, Y, X) labels volume where anything is painted."""
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise AnnotationError(f"painted slices need a (Z, Y, X) labels volume, got shape {lab.shape}")
    return [int(z) for z in np.flatnonzero(lab.reshape(len(lab), -1).any(axis=1))]


def slice_targets(labels: np.ndarray, slices: list[int], w0: float, sigma: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(target, weights) volumes: on each painted slice the paper's binary target and weight map
    (class balance off, the border term on the separating lines), elsewhere -1 and 0."""
    target = np.full(labels.shape, IGNORE, np.int8)
    weights = np.zeros(labels.shape, np.float32)
    for z in slices:
        if not np.any(labels[z]):
            raise AnnotationError(f"slice {z} has nothing painted: paint its objects (each its own "
                                  f"id; 0 there is background) or leave it out of the slices")
        t = labels_to_target(labels[z], mode="binary")  # the whole slice is painted: 0 is background
        target[z] = t.target
        weights[z] = weight_map(t.target, t.objects, 2, w0=w0, sigma=sigma, balance=False)
    if not (target == 1).any():
        raise AnnotationError("the painted slices hold no object: paint the objects of at least "
                              "one slice (each its own id), then fine-tune")
    if not (target == 0).any():
        raise AnnotationError("the painted slices hold no background: paint whole slices (0 is "
                              "background there), not only the objects' insides")
    return target, weights


def _volume_targets(img: Any, lab: np.ndarray, slices: list[int] | None, tc: TrainConfig
                    ) -> tuple[list[int], np.ndarray, np.ndarray]:
    """The painted slices of one volume and their target and weight volumes (checked)."""
    if img.ndim != 3 or lab.shape != img.shape:
        raise AnnotationError(f"fine-tuning on a volume needs a (Z, Y, X) image and labels of the same "
                              f"shape, got {img.shape} and {lab.shape}")
    chosen = painted_slices(lab) if slices is None else sorted({int(z) for z in slices})
    if not chosen:
        raise AnnotationError("no slice of the labels is painted: paint the objects of one or two "
                              "whole z-slices (each object its own id), then fine-tune")
    if min(chosen) < 0 or max(chosen) >= len(lab):
        raise AnnotationError(f"slices {chosen} lie outside the volume's {len(lab)} planes")
    target, weights = slice_targets(lab, chosen, tc.w0, tc.sigma)
    return chosen, target, weights


def _take(volume: np.ndarray, origin: tuple[int, int, int], size: tuple[int, int, int]) -> np.ndarray:
    """The block of ``volume`` at ``origin`` (may lie outside: mirrored, as in inference)."""
    idx = [mirror_index(np.arange(o, o + s), n) for o, s, n in zip(origin, size, volume.shape, strict=True)]
    return volume[idx[0][:, None, None], idx[1][None, :, None], idx[2][None, None, :]]


def fine_tune_volume(
    image: Any,
    labels: Any,
    model: UNetModel,
    *,
    slices: list[int] | None = None,
    config: TrainConfig | None = None,
    z_blocks: int = 1,
    seed: int = 0,
    device: str | torch.device = "auto",
    stop: Any = None,
) -> Generator[StepDone, None, UNetModel]:
    """Fine-tune ``model`` (2D: lifted to 3D first; or 3D) on the painted ``slices`` (default:
    every slice with a painted pixel) of the (Z, Y, X) ``image`` and ``labels``, or of each volume
    of a list of them (then every painted slice of each; patches drawn over all of them).

    ``config``: steps or minutes, batch size, patch size (Y and X output), learning rate, w0, sigma
    and the augmentation of :class:`TrainConfig` (its validation is not used: a handful of slices
    leave nothing to hold back, and the run says so). ``stop``: a callable or threading.Event;
    when it is set the run ends after the current step and returns the model as it is."""
    tc = config or TrainConfig(steps=200, batch_size=2, patch_size=96, lr=1e-3)
    several = isinstance(image, (list, tuple))
    imgs = [as_image(i) for i in (image if several else [image])]
    labs = [np.asarray(lb) for lb in (labels if several else [labels])]
    if len(imgs) != len(labs):
        raise AnnotationError(f"{len(imgs)} volumes and {len(labs)} labels: give one labels volume "
                              f"per image volume")
    if several and slices is not None:
        raise AnnotationError("slices names the painted planes of one volume: with several volumes "
                              "every painted slice is used")
    m3 = lift_model(model, z_blocks) if model.config.dims == 2 else model.copy()
    vols, targets, weights_, chosens = [], [], [], []
    for img, lab in zip(imgs, labs, strict=True):
        chosen, target, wts = _volume_targets(img, lab, slices, tc)
        d, h, w = img.shape
        # normalised exactly as predict_volume reads it (whole-volume statistics, the same sample)
        vols.append(VolumeReader(img, (None,) * 3, (0, 1, 2), None, m3.normalization, "mirror").block(
            (0, 0, 0), (d, h, w))[0])
        targets.append(target)
        weights_.append(wts)
        chosens.append(chosen)
    cfg = m3.config
    dev = resolve_device(device)
    # patch geometry: the output covers one plane's worth on the z grid, ~patch_size in Y and X
    # (of the smallest volume)
    h, w = min(v.shape[1] for v in vols), min(v.shape[2] for v in vols)
    zax = cfg.z_axis
    z_out = zax.output_size(zax.input_size(zax.grid))
    z_in = zax.input_size(z_out)  # type: ignore[arg-type]
    want = max(1, min(int(tc.patch_size), h, w))
    yx_in = cfg.input_size(want) if cfg.padding == "valid" else max(cfg.grid, -(-want // cfg.grid) * cfg.grid)
    yx_out = cfg.output_size(yx_in) if cfg.padding == "valid" else yx_in
    zc = (z_in - z_out) // 2 if cfg.padding == "valid" else 0
    yc = (yx_in - yx_out) // 2
    net = m3.net.to(dev).train()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=tc.learning_rate(), weight_decay=tc.weight_decay)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    rng_t = TorchRng(seed, dev)  # dropout draws from a private state: the caller's RNG is left alone
    pairs = [(v, z) for v, chosen in enumerate(chosens) for z in chosen]  # (volume, painted slice)
    fg = [np.argwhere(targets[v][z] == 1) for v, z in pairs]
    budget = None if tc.minutes is None else 60.0 * float(tc.minutes)
    total = tc.steps if budget is None else 10**9
    t0 = time.perf_counter()
    step, ended = 0, "steps"
    while step < total:
        if stop is not None and (stop.is_set() if hasattr(stop, "is_set") else stop()):
            ended = "stopped"
            break
        if budget is not None and time.perf_counter() - t0 >= budget:
            ended = "time"
            break
        xs, ts, ws = [], [], []
        for _ in range(tc.batch_size):
            k = int(rng.integers(len(pairs)))
            v, z = pairs[k]
            vol, target, weights = vols[v], targets[v], weights_[v]
            vh, vw = vol.shape[1:]
            if rng.random() < tc.foreground_fraction and len(fg[k]):  # centred on an object pixel
                cy, cx = fg[k][rng.integers(len(fg[k]))]
                y0, x0 = int(cy) - yx_out // 2, int(cx) - yx_out // 2
            else:
                y0 = int(rng.integers(-yx_out // 4, max(vh - 3 * yx_out // 4, 1)))
                x0 = int(rng.integers(-yx_out // 4, max(vw - 3 * yx_out // 4, 1)))
            z0 = z - int(rng.integers(z_out)) - zc  # the painted plane somewhere in the output
            origin = (z0, y0 - yc, x0 - yc)
            size = (z_in, yx_in, yx_in)
            xs.append(_take(vol, origin, size))
            ts.append(_take(target, origin, size))
            ws.append(_take(weights, origin, size))
        x = torch.from_numpy(np.stack(xs)).to(dev)  # (N, Z, H, W): the planes as channels
        t = torch.from_numpy(np.stack(ts).astype(np.int64)).to(dev)
        wt = torch.from_numpy(np.stack(ws)).to(dev)
        x, (t, wt) = augment(x, [t, wt], tc.augmentation, gen)
        zs, ys = slice(zc, zc + z_out), slice(yc, yc + yx_out)
        t, wt = t[:, zs, ys, ys], wt[:, zs, ys, ys]
        factor = schedule(step / total if budget is None else (time.perf_counter() - t0) / budget,
                          tc.warmup, tc.cosine_decay)
        for g in opt.param_groups:
            g["lr"] = tc.learning_rate() * factor
        with rng_t.active():
            logits = net(x[:, None])
            loss = training_loss(tc.loss, logits.float(), t, wt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip or VOLUME_GRAD_CLIP)
            opt.step()
        step += 1
        elapsed = time.perf_counter() - t0
        rate = elapsed / step
        est_total = tc.steps if budget is None else max(step, int(budget / max(rate, 1e-9)))
        yield StepDone(step, est_total, float(loss.detach()), eta_s=max(rate * (est_total - step), 0.0),
                       validation=f"not validated: {len(pairs)} painted slice(s) leave nothing to "
                                  "hold back; the final weights are kept")
    net.eval()
    prov = dict(m3.provenance)
    prov["fine_tuned_3d"] = {"painted_slices": chosens if several else chosens[0], "steps": step, "seconds": round(time.perf_counter() - t0, 1),
                             "ended": ended, "config": tc.to_dict(), "seed": int(seed),
                             "validated": False,
                             "volume_shape": [list(i.shape) for i in imgs] if several else list(imgs[0].shape)}
    return UNetModel(net.cpu(), m3.normalization, m3.postprocessing, name=m3.name,
                     description=m3.description, provenance=prov)

"""Fine-tune a 3D U-Net from a few painted z-slices of a volume, or train one from scratch.

The user paints some slices of a (Z, Y, X) Labels layer completely (each object its own id, 0 on a
painted slice is background); every other slice is unknown. Each painted slice becomes the paper's
binary target with its separating lines; the border weight map (eq. 2) is computed in 3D over
each run of consecutive painted slices (objects linked across them by overlap, distances in the
voxel's proportions; an isolated slice has only its own objects, so its map is the 2D one).
Everything else is ignored by the loss. Patches are 3D: their output covers painted slices, their
input reads the planes above and below (mirrored beyond the volume's faces, as in inference).
Augmentation: flips, rotations by 90 degrees and intensity jitter in the plane; the elastic
deformation is the same in-plane field on every plane for strongly anisotropic voxels (z spacing
at least twice the Y/X one, or unknown) and a 3D field (:func:`~napari_unet.core.train.augment.elastic_3d`)
for near-isotropic ones.

The start: a 2D model lifted to 3D (:mod:`~napari_unet.core.network.lift`: it equals the 2D model on
every plane, and fine-tuning adds what the neighbouring planes say), a 3D model, or a new 3D U-Net
whose levels pool z only where the voxel size allows (:func:`volume_architecture`).
:func:`fine_tune_volume` is a generator of :class:`~napari_unet.core.events.StepDone` returning
the trained model.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator
from typing import Any

import numpy as np
import torch

from napari_unet.core.device import resolve_device
from napari_unet.core.events import StepDone
from napari_unet.core.modelfile.files import UNetModel, lift_model
from napari_unet.core.modelfile.normalization import Normalization
from napari_unet.core.network.geometry import anisotropic_z_pooling, pooled_levels, voxel_size
from napari_unet.core.network.unet import UNet, UNetConfig
from napari_unet.core.postprocess.linking import stitch_planes
from napari_unet.core.predict.checks import as_image
from napari_unet.core.predict.padding import mirror_index
from napari_unet.core.predict.predict3d import VolumeReader
from napari_unet.core.train.annotations import IGNORE, AnnotationError, labels_to_target
from napari_unet.core.train.augment import augment, elastic_3d
from napari_unet.core.train.config import TrainConfig, postprocessing_for
from napari_unet.core.train.loss import training_loss
from napari_unet.core.train.optimisation import TorchRng, schedule, should_stop
from napari_unet.core.train.weight_map import border_term

VOLUME_GRAD_CLIP = 1.0  # the step's gradient norm (live training diverged without a clip)


def volume_architecture(spacing: tuple[float, float, float], *, depth: int = 3,
                        base_channels: int = 16, padding: str = "valid") -> UNetConfig:
    """A 3D U-Net (Cicek et al. 2016) for voxels of size ``spacing`` (Z, Y, X, any unit, the
    layer's scale): a level pools z only once the voxel there is no longer strongly anisotropic
    (:func:`~napari_unet.core.network.geometry.anisotropic_z_pooling`, nnU-Net's rule), and convolves
    3x3x3 from there on (1x3x3 before: z neighbours 5 pixels away say little to a 3x3 filter).
    Confocal nuclei at 1.0 x 0.2 x 0.2 um and depth 3: pools z on level 3 only, 3x3x3 on level 3
    and the bottom. Depth 3, not the 2D models' 4: a valid 3D network needs its halo in z too."""
    sp = voxel_size(spacing)
    ratio = sp[0] / min(sp[1], sp[2])
    pools = anisotropic_z_pooling(depth, ratio)
    convs, r = [], ratio
    for pool_z in pools:  # the voxel's anisotropy on each level, then at the bottom
        convs.append(r < 2.0)
        r = r if pool_z else r / 2.0
    convs.append(r < 2.0)
    return UNetConfig(in_channels=1, num_classes=2, depth=int(depth), base_channels=int(base_channels),
                      padding=padding, class_names=("background", "object"), dims=3,
                      z_pooling=pools, z_convolution=tuple(convs))


def new_volume_model(spacing: tuple[float, float, float], *, depth: int = 3, base_channels: int = 16,
                     padding: str = "valid", seed: int = 0) -> UNetModel:
    """A 3D U-Net with random weights (``seed``) whose pooling follows the voxel size
    (:func:`volume_architecture`), to train from scratch on painted slices: percentile
    normalisation, instances as connected objects of the object class."""
    sp = voxel_size(spacing)
    cfg = volume_architecture(sp, depth=depth, base_channels=base_channels, padding=padding)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = UNet(cfg)
    pooled = pooled_levels(cfg.z_pooling)
    return UNetModel(net, Normalization(), postprocessing_for("binary"), name="3D U-Net",
                     description=f"3D U-Net trained from scratch for voxels of {sp[0]:g} x {sp[1]:g} x "
                                 f"{sp[2]:g} (Z, Y, X): z pooled on level(s) {pooled or 'none'} of "
                                 f"{cfg.depth}",
                     provenance={"from_scratch_3d": {"spacing": list(sp), "seed": int(seed)}})


def painted_slices(labels: Any) -> list[int]:
    """The z indices of a (Z, Y, X) labels volume where anything is painted."""
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise AnnotationError(f"painted slices need a (Z, Y, X) labels volume, got shape {lab.shape}")
    return [int(z) for z in np.flatnonzero(lab.reshape(len(lab), -1).any(axis=1))]


def painted_runs(slices: list[int]) -> list[list[int]]:
    """The painted slices grouped into runs of consecutive planes ([1, 2, 5] -> [[1, 2], [5]])."""
    runs: list[list[int]] = []
    for z in sorted(slices):
        if runs and z == runs[-1][-1] + 1:
            runs[-1].append(z)
        else:
            runs.append([z])
    return runs


def slice_targets(labels: np.ndarray, slices: list[int], w0: float, sigma: float,
                  spacing: tuple[float, float, float] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(target, weights) volumes: on each painted slice the paper's binary target (its objects and
    separating lines), elsewhere -1 and 0 (unknown).

    The weights are eq. 2 with w_c = 1 (class balance off) and the border term in 3D: on a run of
    consecutive painted slices each slice's objects are linked to the next slice's by overlap (the
    ids the user painted need not agree across slices) and the distances d1, d2 are measured in
    the volume in units of the (finer) in-plane pixel, by the voxel size ``spacing`` (Z, Y, X;
    None: the voxel is a cube). A background pixel between an object of its own slice and one of the slice above
    weighs what a gap in the plane weighs; an isolated painted slice has only its own objects, so
    its map is the paper's 2D one."""
    target = np.full(labels.shape, IGNORE, np.int8)
    weights = np.zeros(labels.shape, np.float32)
    objects = np.zeros(labels.shape, np.int32)
    for z in slices:
        if not np.any(labels[z]):
            raise AnnotationError(f"slice {z} has nothing painted: paint its objects (each its own "
                                  f"id; 0 there is background) or leave it out of the slices")
        t = labels_to_target(labels[z], mode="binary")  # the whole slice is painted: 0 is background
        target[z] = t.target
        objects[z] = t.objects
    if not (target == 1).any():
        raise AnnotationError("the painted slices hold no object: paint the objects of at least "
                              "one slice (each its own id), then fine-tune")
    if not (target == 0).any():
        raise AnnotationError("the painted slices hold no background: paint whole slices (0 is "
                              "background there), not only the objects' insides")
    # distances in units of the finer in-plane pixel (sigma and w0 are the paper's, in pixels)
    unit = 1.0 if spacing is None else min(spacing[1], spacing[2])
    sampling = (1.0, 1.0, 1.0) if spacing is None else tuple(v / unit for v in spacing)
    for run in painted_runs(slices):
        block = slice(run[0], run[-1] + 1)
        weights[block] = 1.0  # every pixel of a painted slice is known
        if w0 > 0:
            linked = stitch_planes(objects[block]) if len(run) > 1 else objects[block]
            border = border_term(linked, w0, sigma, sampling=sampling)
            bg = target[block] == 0
            w = weights[block]
            w[bg] = (w[bg] + border[bg]).astype(np.float32)
    return target, weights


def _volume_targets(img: Any, lab: np.ndarray, slices: list[int] | None, tc: TrainConfig,
                    spacing: tuple[float, float, float] | None = None
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
    target, weights = slice_targets(lab, chosen, tc.w0, tc.sigma, spacing)
    return chosen, target, weights


def _take(volume: np.ndarray, origin: tuple[int, int, int], size: tuple[int, int, int]) -> np.ndarray:
    """The block of ``volume`` at ``origin`` (may lie outside: mirrored, as in inference)."""
    idx = [mirror_index(np.arange(o, o + s), n) for o, s, n in zip(origin, size, volume.shape, strict=True)]
    return volume[idx[0][:, None, None], idx[1][None, :, None], idx[2][None, None, :]]


def fine_tune_volume(
    image: Any,
    labels: Any,
    model: UNetModel | None,
    *,
    slices: list[int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    config: TrainConfig | None = None,
    z_blocks: int = 1,
    seed: int = 0,
    device: str | torch.device = "auto",
    stop: Any = None,
) -> Generator[StepDone, None, UNetModel]:
    """Fine-tune a 3D U-Net on a few painted z-slices of a volume: a generator of progress events.

    Parameters
    ----------
    image : array-like or list of array-like
        A (Z, Y, X) volume (any integer or float dtype), or a list of them (then every painted
        slice of each is used; patches are drawn over all of them).
    labels : array-like or list of array-like
        Integer labels of the same shape(s): on a painted slice each object its own id and 0 is
        background; slices with nothing painted are unknown.
    model : UNetModel or None
        The start: a 2D model (lifted to 3D first, :mod:`~napari_unet.core.network.lift`) or a
        3D model, not modified; None trains a new 3D U-Net from scratch whose pooling follows
        ``spacing`` (:func:`new_volume_model`).
    slices : list of int, optional
        The painted z indices to train on (one volume only); None: every slice with a painted
        pixel.
    spacing : (float, float, float), optional
        The voxel size (Z, Y, X; the layer's scale), for a new network's architecture and the
        weight map's distances across consecutive painted slices. None: cubic voxels (a new
        network then needs it).
    config : TrainConfig, optional
        Steps or minutes, batch size, patch size (Y and X output, pixels), learning rate, w0,
        sigma and augmentation; its validation is not used (a handful of slices leave nothing to
        hold back, and the run says so). Default: 200 steps of batch 2, patches of 96, lr 1e-3.
    z_blocks : int, default 1
        How a lifted 2D model's kernels are spread over z (:func:`~napari_unet.core.modelfile.files.lift_model`).
    seed : int, default 0
        Patches, augmentation and a new network's initial weights.
    device : str or torch.device, default "auto"
        "auto", "cpu", "cuda" or "mps".
    stop : callable or threading.Event, optional
        When set, the run ends after the current step and returns the model as it is.

    Yields
    ------
    StepDone
        After every step (loss; the time or step budget's progress).

    Returns
    -------
    UNetModel
        The trained 3D model, with its training provenance.

    Raises
    ------
    napari_unet.core.train.annotations.AnnotationError
        Nothing usable painted (no slice, no object or no background on the painted slices),
        shapes that do not match, slices outside the volume, a new network without ``spacing``;
        the message says what to paint or give.
    """
    tc = config or TrainConfig.from_choices(volume=True)  # the 3D defaults (VOLUME_DEFAULTS)
    several = isinstance(image, (list, tuple))
    imgs = [as_image(i) for i in (image if several else [image])]
    labs = [np.asarray(lb) for lb in (labels if several else [labels])]
    if len(imgs) != len(labs):
        raise AnnotationError(f"{len(imgs)} volumes and {len(labs)} labels: give one labels volume "
                              f"per image volume")
    if several and slices is not None:
        raise AnnotationError("slices names the painted planes of one volume: with several volumes "
                              "every painted slice is used")
    spacing = None if spacing is None else voxel_size(spacing)
    if model is None:
        if spacing is None:
            raise AnnotationError("a new 3D U-Net pools z where the voxel allows it: give the "
                                  "voxel size (Z, Y, X; the layer's scale), or a base model")
        m3 = new_volume_model(spacing, seed=seed)
    else:
        m3 = lift_model(model, z_blocks) if model.config.dims == 2 else model.copy()
    vols, targets, weights_, chosens = [], [], [], []
    for k, (img, lab) in enumerate(zip(imgs, labs, strict=True)):
        try:
            chosen, target, wts = _volume_targets(img, lab, slices, tc, spacing)
        except AnnotationError as exc:
            if not several:
                raise
            raise AnnotationError(f"volume {k + 1} of {len(imgs)}: {exc}") from None
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
    # near-isotropic voxels deform in 3D (Cicek et al.); strongly anisotropic ones in the plane
    aug = tc.augmentation
    z_ratio = None if spacing is None else spacing[0] / min(spacing[1], spacing[2])
    deform_3d = z_ratio is not None and z_ratio < 2.0 and aug.elastic and aug.sigma > 0
    aug_planes = dataclasses.replace(aug, elastic=False) if deform_3d else aug
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
        if should_stop(stop):
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
        x, (t, wt) = augment(x, [t, wt], aug_planes, gen)
        if deform_3d:
            x, (t, wt) = elastic_3d(x, [t, wt], aug.grid_points, aug.sigma, gen, z_ratio)
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
                             "validated": False, "from_scratch": model is None,
                             "z_pooling": list(cfg.z_pooling),
                             "elastic": "3D" if deform_3d else ("in-plane" if aug.elastic else "off"),
                             "spacing": None if spacing is None else list(spacing),
                             "volume_shape": [list(i.shape) for i in imgs] if several else list(imgs[0].shape)}
    return UNetModel(net.cpu(), m3.normalization, m3.postprocessing, name=m3.name,
                     description=m3.description, provenance=prov)

"""The training jobs of the Fine-tune widget: Train (2D), Train with '3D U-Net', Live, and the
augmented sample of Preview; the one place where the widgets call the training core.

The jobs run in a worker (:class:`._runner.JobRunner`) on plain data: arrays copied from the layers
(:class:`TrainingPair`), a model or its file, a ``TrainConfig``, a ``threading.Event`` for Stop or a
``LiveInbox``. The checks of the volumes (on the Qt thread, before a job starts) are here too.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_unet._widgets._state import load_in_worker


@dataclass(frozen=True)
class TrainingPair:
    """One (image, labels[, region mask]) pair, as plain arrays.

    ``image``: (Y, X), a stack (Z, Y, X), or RGB (..., Y, X, 3) with ``rgb``; ``labels``: the painted
    ids, same spatial shape (a copy: painting during training does not affect it); ``mask``: nonzero
    where the annotation is complete, or None.
    """

    name: str
    image: Any
    labels: np.ndarray
    mask: np.ndarray | None = None
    rgb: bool = False


def start_training(
    pairs: list[TrainingPair],
    base_model: Any,
    *,
    config: Any,
    background_label: int | None = None,
    device: str = "auto",
    stop: threading.Event | None = None,
    name: str | None = None,
    seed: int | None = None,
) -> Generator[Any, None, Any]:
    """Fine-tune ``base_model`` (not modified) on ``pairs`` with ``config`` (a ``TrainConfig``);
    yields ``StepDone``, returns the best UNetModel. Setting ``stop`` ends training after the
    current step and returns the kept model.
    ``seed``: same pairs, settings and seed -> same model on the CPU (None: a fresh draw)."""
    from napari_unet.core.train import train

    rgb = {p.rgb for p in pairs}
    if len(rgb) > 1:
        raise ValueError("mix of RGB and grey-value images: fine-tune on one kind at a time")
    masks = [p.mask for p in pairs]
    return (yield from train(
        [p.image for p in pairs],
        [p.labels for p in pairs],
        masks if any(m is not None for m in masks) else None,
        model=base_model,
        config=config,
        background_label=background_label,
        channel_axis=-1 if rgb == {True} else None,
        device=device,
        stop=stop,
        name=name,
        seed=seed,
    ))


def preview_sample(
    pair: TrainingPair,
    plane: int | None = None,
    *,
    augmentation_strength: float = 1.0,
    background_label: int | None = None,
    seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One augmented training sample of ``pair`` (plane ``plane`` of a stack, else the first painted
    one): returns (image, target, weight map), all (Y, X), deformed by the same random field.

    ``target``: 0 background, 1.. classes, -1 unknown; the weight map is the paper's eq. 2 (0 where
    nothing is known), as the training loss sees it.
    """
    import torch

    from napari_unet.core.train.annotations import labels_to_target
    from napari_unet.core.train.augment import augment
    from napari_unet.core.train.config import augmentation_for
    from napari_unet.core.train.weight_map import weight_map

    image = np.asarray(pair.image)
    labels = pair.labels
    mask = pair.mask
    if labels.ndim == 3:
        if plane is None:
            painted = [z for z in range(labels.shape[0]) if np.any(labels[z])]
            plane = painted[0] if painted else 0
        image, labels = image[plane], labels[plane]
        mask = None if mask is None else mask[plane]
    img = image.astype(np.float32)
    if pair.rgb:
        img = img.mean(-1)
    lo, hi = np.percentile(img, (1, 99.8))
    img = (img - lo) / max(hi - lo, 1e-6)
    tg = labels_to_target(labels, mask, background_label, "binary")
    wm = weight_map(tg.target, tg.objects, 2)
    gen = torch.Generator()
    if seed is not None:
        gen.manual_seed(int(seed))
    else:
        gen.seed()
    x = torch.from_numpy(np.ascontiguousarray(img))[None, None]
    t = torch.from_numpy(tg.target.astype(np.int64))[None]
    w = torch.from_numpy(wm)[None]
    xo, (to, wo) = augment(x, [t, w], augmentation_for(augmentation_strength), gen)
    return xo[0, 0].numpy(), to[0].numpy(), wo[0].numpy()


def train_job(pairs: list[TrainingPair], model: Any, model_name: str, *, config: Any,
              background_label: int | None, device: str, stop: threading.Event,
              seed: int | None = None) -> Any:
    """Worker generator: load the base model if needed, then train (the Fine-tune widget's Train)."""
    model = yield from load_in_worker(model, model_name)
    if type(model.net).__name__ == "ExternalNet":  # imported from another program's package
        raise ValueError(f"'{model_name}' comes from another program's bioimage.io package: napari-unet "
                         "can segment with it but not fine-tune it; choose a napari-unet base model")
    # all cores: unlike segmenting (no faster on both cores of a 2-core CPU), a training step is
    # 1.8x faster with two threads than one (bf16, 4 x 444 px: 0.59 vs 1.04 s), and the viewer's
    # longest event-loop gap stays below 100 ms (benchmarks/bench_responsiveness.py)
    return (yield from start_training(pairs, model, config=config,
                                      background_label=background_label, device=device,
                                      stop=stop, seed=seed))


def new_volume_note(spacing: tuple[float, ...]) -> str:
    """What a new 3D U-Net for the layer's voxel size will pool (said when training starts, so a
    layer without its scale is noticed)."""
    from napari_unet.core.network.geometry import pooled_levels
    from napari_unet.core.train.loop3d import volume_architecture

    cfg = volume_architecture(spacing)
    pooled = pooled_levels(cfg.z_pooling) or "none"
    sp = " x ".join(f"{v:g}" for v in spacing)
    note = (f"A new 3D U-Net for voxels of {sp} (Z x Y x X, the image layer's scale): z pooled on "
            f"level(s) {pooled} of {cfg.depth}.")
    if len(set(spacing)) == 1:
        note += (" The layer's scale says the voxels are cubes: if the z step is larger than the "
                 "pixel size, set the layer's scale to the voxel size and train again.")
    return note


def volume_pairs(pairs: list[TrainingPair], background_label: int | None) -> list[TrainingPair]:
    """The (Z, Y, X) images and labels that a 3D U-Net trains on (one or several volumes, each
    with some whole painted slices); ValueError saying what to change otherwise."""
    if not pairs:
        raise ValueError("choose a volume and the labels layer painted on it")
    for p in pairs:
        if p.rgb or np.ndim(p.image) != 3:
            raise ValueError(f"'{p.name}' is not a (Z, Y, X) volume (shape {np.shape(p.image)}): "
                             f"switch '3D U-Net' off to fine-tune on 2D images, or remove that pair")
        if p.mask is not None or background_label is not None:
            raise ValueError("a 3D U-Net trains on whole painted slices: choose the whole image as "
                             "the region and switch scribbles off (0 on a painted slice is "
                             "background)")
    return list(pairs)


def volume_spacing(scales: list[tuple[float, ...]]) -> tuple[float, float, float]:
    """The voxel size (Z, Y, X) of the volumes' image layers (their scales); ValueError when they
    differ (one network is built and weighted for one voxel size)."""
    spacings = {tuple(float(v) for v in sc[-3:]) for sc in scales}
    if len(spacings) != 1:
        raise ValueError(f"the volumes have different voxel sizes (layer scales {sorted(spacings)}): "
                         f"train on volumes of one voxel size, or set their scales alike")
    return spacings.pop()  # type: ignore[return-value]


def train_volume_job(pairs: list[TrainingPair], model: Any, model_name: str, *, config: Any,
                     device: str, stop: threading.Event, seed: int | None = None,
                     spacing: tuple[float, float, float] | None = None) -> Any:
    """Worker generator of the Fine-tune widget's Train with '3D U-Net' on: load the base model if
    needed, then fine-tune it (lifted to 3D) on the painted z-slices of each of the volumes
    (core/train/volume.py);
    ``model=None``: a new 3D U-Net whose pooling follows ``spacing`` (the layer's scale)."""
    from napari_unet.core.train.loop3d import fine_tune_volume

    if model is not None:
        model = yield from load_in_worker(model, model_name)
    several = len(pairs) > 1
    images = [p.image for p in pairs] if several else pairs[0].image
    labels = [p.labels for p in pairs] if several else pairs[0].labels
    return (yield from fine_tune_volume(images, labels, model, config=config,
                                        seed=seed or 0, device=device, stop=stop,
                                        spacing=spacing))


def live_job(image: Any, inbox: Any, base: Any, model_name: str, *, config: Any,
             background_label: int | None, device: str, seed: int, rgb: bool,
             preview_every: float) -> Any:
    """Worker generator of Live: load the base model if needed, then train live with ``config``
    until Stop (the painting's changes and the viewed box arrive through ``inbox``, a
    ``LiveInbox``)."""
    from napari_unet.core.train import live_train

    model = yield from load_in_worker(base, model_name)
    return (yield from live_train(image, inbox, model=model, config=config,
                                  background_label=background_label,
                                  channel_axis=-1 if rgb else None, device=device, seed=seed,
                                  preview_every=preview_every, name=f"{model.name}-live"))

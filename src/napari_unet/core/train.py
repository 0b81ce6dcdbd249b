"""Fine-tune (or train from scratch) a U-Net on painted labels.

:func:`train` is a generator: it yields a :class:`~napari_unet.core.events.StepDone` after every
optimisation step and returns the trained :class:`~napari_unet.core.io.UNetModel` (the
``StopIteration.value``). :func:`train_model` runs it to the end and returns the model.

What one step does (paper section 3):

1. draw ``batch_size`` random patches centred on annotated (known) pixels of the training part of the
   painted data; for valid (unpadded) models the input tile is the output patch plus the model's halo
   of real (mirrored at the image border) context, for same-padded models the tile is the patch;
2. augment image, target and weight map together on the training device (elastic deformation,
   flips, 90-degree rotations, intensity jitter; :mod:`.augment`);
3. crop target and weight map to the model's output, and minimise the pixel-wise softmax
   cross-entropy weighted by the border weight map of eq. 2 (:mod:`.weights`), unknown pixels ignored.

Images are normalised once per plane with the model's :class:`~.normalize.Normalization` (whole-plane
statistics, as at inference), never per patch. A band of the painted data (``val_fraction`` of the
known pixels of each plane, at one end of its annotated area) is held back; every ``val_every`` steps
the foreground IoU on it is measured, and the weights with the best score so far are kept (the
starting model included). Stopping early (``stop`` returns True, or the caller closes the generator)
returns that best model.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Generator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from .annotations import (
    CLASS_NAMES,
    IGNORE,
    AnnotationError,
    check_mode,
    labels_to_target,
    num_classes_for,
    split_planes,
)
from .augment import Augmentation, augment
from .device import resolve_device
from .events import StepDone, run_to_end
from .io import Postprocessing, UNetModel
from .model import UNet, UNetConfig
from .normalize import Normalization
from .weights import SIGMA, W0, weight_map

OPTIMIZERS = ("adam", "sgd")
SAMPLING = ("pixels", "images")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings.

    Defaults and why:

    - ``optimizer="adam"``, ``lr=1e-3`` from scratch and ``3e-4`` when fine-tuning (``lr=None``).
      The paper used SGD with momentum 0.99 on single 572-px tiles for ~10 hours on a GPU; here the
      budget is a few hundred steps on a few painted images. Measured on the touching-cells Huh7
      frame (paint the left part of its annotated region, score the right part; small valid U-Net,
      300 steps, batch 4, one seed, the kept best model): Adam 1e-3 -> foreground IoU 0.67, Adam
      3e-3 -> 0.71, SGD momentum 0.99 lr 1e-2 -> 0.62 (and slow to start), SGD 0.99 lr 3e-2 ->
      diverged (0.32); from 0.25 before training. Adam converges fastest and is least sensitive to the rate; 1e-3 is the safe rate for
      the deeper shipped architecture. Fine-tuning starts lower (3e-4) so that a good starting
      model is adjusted, not overwritten (a choice, not measured here). The rate decays along a
      cosine to 5% of its start by the last step, which steadies the final weights.
    - ``patch_size=256`` output pixels, ``batch_size=4``: large enough for cell-sized context, and
      one step of the shipped depth-4 base-16 model costs about a second on a laptop CPU.
      Patches are shrunk to the image when the image is smaller.
    - ``w0=10``, ``sigma=5`` px: the paper's border weight map (eq. 2). ``class_balance=True``: its
      w_c balances the class frequencies (the paper's choice). It also moves the decision boundary
      toward the rare class (objects come out a little larger, membranes thicker);
      ``class_balance=False`` keeps w_c = 1 and only the border term.
    - ``logit_adjustment``: a loss weighted by w(x) is minimised by q_k proportional to w_k p_k
      (w_k the mean weight of class k), not by the class posterior p_k, so the weighted net draws
      its boundaries toward the heavily weighted classes (thick membranes on EM, where every
      membrane is a weighted separating line). With ``True`` the trained net's output bias is
      shifted by -log w_k (centred; "logit adjustment"), which turns its argmax into the decision
      for the unweighted frequencies; validation scores the adjusted net. The shift is stored in
      the model (provenance ``logit_adjustment``) and undone before a later fine-tuning. ``None``
      (default): as the model being fine-tuned, else off (the paper's plain argmax).
    - ``sampling="pixels"``: a patch is centred on a painted training pixel drawn uniformly from all
      images, so an image's share of the patches is its share of the painted pixels (a large,
      fully painted image dominates a small one). ``"images"``: first an image (plane) uniformly,
      then a painted pixel in it, so each painted image gets the same share of patches.
    - ``val_fraction=0.2``, validation every ``val_every`` steps (default: 20 validations per run).
    """

    steps: int = 500
    batch_size: int = 4
    patch_size: int = 256
    optimizer: str = "adam"
    lr: float | None = None
    weight_decay: float = 0.0
    momentum: float = 0.99  # SGD only (the paper's value)
    cosine_decay: bool = True
    w0: float = W0
    sigma: float = SIGMA
    class_balance: bool = True
    logit_adjustment: bool | None = None
    sampling: str = "pixels"
    val_fraction: float = 0.2
    val_every: int | None = None
    augmentation: Augmentation = field(default_factory=Augmentation)

    def __post_init__(self) -> None:
        for name, lo in (("steps", 1), ("batch_size", 1), ("patch_size", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"TrainConfig.{name} must be an integer >= {lo}, got {v!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.sampling not in SAMPLING:
            raise ValueError(f"TrainConfig.sampling must be one of {SAMPLING}, got {self.sampling!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"TrainConfig.val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.val_every is not None and (not isinstance(self.val_every, int) or self.val_every < 1):
            raise ValueError(f"TrainConfig.val_every must be an integer >= 1, got {self.val_every!r}")
        if self.sigma <= 0 or self.w0 < 0:
            raise ValueError("TrainConfig needs sigma > 0 and w0 >= 0")

    def learning_rate(self, fine_tuning: bool) -> float:
        if self.lr is not None:
            return float(self.lr)
        return 3e-4 if fine_tuning else 1e-3

    def validation_interval(self) -> int:
        return self.val_every or max(1, self.steps // 20)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["augmentation"] = self.augmentation.to_dict()
        return d


def default_architecture(in_channels: int, mode: str) -> UNetConfig:
    """Architecture for training from scratch: the shipped models' (valid, depth 4, 16 channels)."""
    return UNetConfig(in_channels=in_channels, num_classes=num_classes_for(mode), depth=4,
                      base_channels=16, padding="valid", class_names=CLASS_NAMES[mode])


def postprocessing_for(mode: str) -> Postprocessing:
    check_mode(mode)
    if mode == "binary":
        return Postprocessing(instance_classes=(1,))
    return Postprocessing(instance_classes=(2,), grow_classes=(1,))


# ---------------------------------------------------------------------------- data
@dataclass
class _Plane:
    image: np.ndarray  # (C, H + 2 pad, W + 2 pad) normalised, mirror-padded
    target: np.ndarray  # (H + 2 pad, W + 2 pad) int8: -1 unknown or held back
    weights: np.ndarray  # (H + 2 pad, W + 2 pad) float32, 0 where target is -1
    centres: np.ndarray  # flat indices (unpadded coordinates) of known training pixels
    val: np.ndarray | None  # (H, W) bool: held-back known pixels
    val_target: np.ndarray  # (H, W) int8 full target (for the IoU)
    shape: tuple[int, int]
    pad: int


@dataclass
class TrainingData:
    """Painted data prepared for training: normalised planes, targets, weight maps, splits."""

    planes: list[_Plane]
    mode: str
    num_classes: int
    out_size: int  # output patch size
    in_size: int  # input tile size
    halo: int  # (in_size - out_size) // 2
    shapes: list[tuple[int, ...]]
    known_pixels: int
    val_pixels: int
    class_weights: np.ndarray | None = None  # (K,) mean weight per class over the training pixels

    def logit_adjustment(self) -> np.ndarray:
        """-log(mean weight of each class), centred (zero for a class absent from the training)."""
        w = self.class_weights
        if w is None:
            return np.zeros(self.num_classes)
        present = w > 0
        adj = np.zeros(self.num_classes)
        adj[present] = -np.log(w[present])
        adj[present] -= adj[present].mean()
        return adj


def _as_list(x: Any, name: str) -> list[Any]:
    if x is None:
        return []
    if isinstance(x, np.ndarray) or hasattr(x, "__array__") and not isinstance(x, list | tuple):
        return [x]
    if isinstance(x, list | tuple):
        return list(x)
    raise TypeError(f"{name} must be an array or a list of arrays, got {type(x).__name__}")


def _patch_sizes(cfg: UNetConfig, patch_size: int, max_extent: int) -> tuple[int, int]:
    """(output size, input size) of a training patch: about ``patch_size`` output pixels, no bigger
    than needed for the largest plane, and valid for the model."""
    want = max(1, min(int(patch_size), int(max_extent)))
    if cfg.padding == "valid":
        n_in = cfg.input_size(want)
        return cfg.output_size(n_in), n_in
    g = cfg.grid
    n = max(g, int(math.ceil(want / g)) * g)
    return n, n


def _val_band(known: np.ndarray, fraction: float) -> np.ndarray | None:
    """Known pixels at one end (along the longer axis) of the annotated area, ~``fraction`` of them."""
    if fraction <= 0:
        return None
    ys, xs = np.nonzero(known)
    if ys.size < 20:
        return None
    axis_coords = ys if (ys.max() - ys.min()) >= (xs.max() - xs.min()) else xs
    thr = np.quantile(axis_coords, 1.0 - fraction)
    sel = axis_coords > thr
    if not sel.any() or sel.all():
        return None
    val = np.zeros(known.shape, bool)
    val[ys[sel], xs[sel]] = True
    return val


def prepare_data(images: Any, labels: Any, masks: Any = None, *, config: UNetConfig,
                 normalization: Normalization, mode: str, background_label: int | None = None,
                 channel_axis: int | None = None, train_config: TrainConfig | None = None,
                 ) -> TrainingData:
    """Check and prepare (image, labels[, mask]) pairs for training. The inputs are not modified.

    ``images``/``labels``/``masks``: an array or a list of arrays, one per pair; a pair may be a
    stack (Z, Y, X) whose painted planes are used (planes with nothing known are skipped).
    Raises AnnotationError (a ValueError) with a message for the user.
    """
    tc = train_config or TrainConfig()
    ims, labs = _as_list(images, "images"), _as_list(labels, "labels")
    if not ims:
        raise AnnotationError("no training images given")
    if len(ims) != len(labs):
        raise AnnotationError(f"got {len(ims)} images but {len(labs)} labels images: give one labels "
                              f"image per image")
    mks = _as_list(masks, "masks") if masks is not None else [None] * len(ims)
    if len(mks) != len(ims):
        raise AnnotationError(f"got {len(ims)} images but {len(mks)} masks: give one mask per image "
                              f"(None where there is none)")
    raw = []  # (chw, target, name)
    shapes = []
    for k, (im, lab, mk) in enumerate(zip(ims, labs, mks, strict=True)):
        planes = split_planes(im, lab, mk, channel_axis)
        shapes.append(tuple(np.shape(im)))
        used = 0
        for chw, lp, mp, z in planes:
            if chw.shape[0] != config.in_channels:
                raise AnnotationError(
                    f"image {k} has {chw.shape[0]} channel(s) but the model reads {config.in_channels}"
                )
            if z is not None and mp is None and not np.any(
                    (lp != 0) if background_label is None else (lp != 0) | (lp == background_label)):
                continue  # an unpainted plane of a stack
            try:
                tg = labels_to_target(lp, mp, background_label, mode)
            except AnnotationError as exc:
                where = f"image {k}" + (f", plane {z}" if z is not None else "")
                if z is not None and "nothing is annotated" in str(exc):
                    continue
                raise AnnotationError(f"{where}: {exc}") from None
            raw.append((chw, tg))
            used += 1
        if used == 0:
            raise AnnotationError(f"image {k}: no plane of this stack has a painted pixel")
    classes = set()
    for _, tg in raw:
        classes |= tg.classes_present()
    if 0 not in classes or not (classes - {0}):
        what = "background" if 0 not in classes else "objects"
        raise AnnotationError(
            f"only one class is painted (no {what}): training needs both objects and background. "
            + ("Paint background with the background label, or give a mask of a region where "
               "unpainted means background." if what == "background"
               else "Paint some objects, each with its own id.")
        )

    num_classes = num_classes_for(mode)
    max_extent = max(max(tg.target.shape) for _, tg in raw)
    out_size, in_size = _patch_sizes(config, tc.patch_size, max_extent)
    halo = (in_size - out_size) // 2
    pad = halo + out_size + 1
    planes: list[_Plane] = []
    wsum = np.zeros(num_classes)
    wcount = np.zeros(num_classes)
    known_total = val_total = 0
    val_ok = tc.val_fraction > 0
    splits = []
    for _chw, tg in raw:
        splits.append(_val_band(tg.known, tc.val_fraction) if val_ok else None)
    # validation needs both classes in the training part, else it is dropped
    if val_ok:
        train_classes = set()
        for (_, tg), val in zip(raw, splits, strict=True):
            t = tg.target if val is None else np.where(val, IGNORE, tg.target)
            train_classes |= {int(c) for c in np.unique(t) if c >= 0}
        if 0 not in train_classes or not (train_classes - {0}) or all(v is None for v in splits):
            splits = [None] * len(raw)
    for (chw, tg), val in zip(raw, splits, strict=True):
        stats = normalization.stats(chw, channel_axis=0)
        img = Normalization.apply(chw, stats)
        if not np.all(np.isfinite(img)):
            raise AnnotationError("the image contains NaN or infinite values")
        w = weight_map(tg.target, tg.objects, num_classes, tc.w0, tc.sigma, balance=tc.class_balance)
        t = tg.target.copy()
        if val is not None:
            t[val] = IGNORE
            w = np.where(val, 0.0, w).astype(np.float32)
        centres = np.flatnonzero(t >= 0)
        if centres.size == 0:
            continue
        known_total += int(tg.known.sum())
        val_total += 0 if val is None else int(val.sum())
        tk = t[t >= 0].astype(np.int64)
        wsum += np.bincount(tk, weights=w[t >= 0], minlength=num_classes)[:num_classes]
        wcount += np.bincount(tk, minlength=num_classes)[:num_classes]
        planes.append(_Plane(
            image=np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode="reflect"),
            target=np.pad(t, pad, mode="constant", constant_values=IGNORE),
            weights=np.pad(w, pad, mode="constant"),
            centres=centres.astype(np.int64),
            val=val,
            val_target=tg.target,
            shape=tg.target.shape,
            pad=pad,
        ))
    class_weights = np.divide(wsum, wcount, out=np.zeros(num_classes), where=wcount > 0)
    return TrainingData(planes, mode, num_classes, out_size, in_size, halo, shapes, known_total,
                        val_total, class_weights)


def _sample_batch(data: TrainingData, rng: np.random.Generator, n: int, sampling: str = "pixels"
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` random patches centred on known training pixels: image (n, C, I, I), target and
    weights (n, I, I) (I the input tile size; the target is cropped to the output after augmenting).
    ``sampling``: "pixels" (a plane in proportion to its training pixels) or "images" (planes
    equally likely)."""
    counts = np.array([p.centres.size for p in data.planes], np.float64)
    if sampling == "images":
        counts = (counts > 0).astype(np.float64)
    which = rng.choice(len(data.planes), size=n, p=counts / counts.sum())
    i_sz, half, halo = data.in_size, data.out_size // 2, data.halo
    imgs, tgts, wts = [], [], []
    for k in which:
        p = data.planes[k]
        flat = p.centres[rng.integers(p.centres.size)]
        cy, cx = divmod(int(flat), p.shape[1])
        y0 = cy - half - halo + p.pad
        x0 = cx - half - halo + p.pad
        imgs.append(p.image[:, y0 : y0 + i_sz, x0 : x0 + i_sz])
        tgts.append(p.target[y0 : y0 + i_sz, x0 : x0 + i_sz])
        wts.append(p.weights[y0 : y0 + i_sz, x0 : x0 + i_sz])
    return np.stack(imgs), np.stack(tgts), np.stack(wts)


def weighted_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Pixel-wise softmax cross-entropy weighted by ``weights`` (paper eq. 1 with eq. 2's w(x)),
    averaged over the known pixels; ``target == -1`` pixels contribute nothing.

    ``logits`` (N, K, h, w); ``target`` (N, h, w) integer, -1 unknown; ``weights`` (N, h, w).
    """
    t = target.long()
    ce = F.cross_entropy(logits, t, ignore_index=IGNORE, reduction="none")
    known = (t != IGNORE).sum().clamp(min=1)
    return (ce * weights.to(ce.dtype) * (t != IGNORE)).sum() / known


def _center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    dy = (x.shape[-2] - size) // 2
    dx = (x.shape[-1] - size) // 2
    return x[..., dy : dy + size, dx : dx + size]


# ---------------------------------------------------------------------------- validation
@torch.no_grad()
def _predict_classes(net: UNet, image_padded: np.ndarray, pad: int, box: tuple[int, int, int, int],
                     out_size: int, halo: int, device: torch.device,
                     bias: torch.Tensor | None = None) -> np.ndarray:
    """argmax classes on the output window ``box`` = (y0, y1, x0, x1) of a padded plane, in tiles
    (``bias``: (K,) added to the logits first)."""
    y0, y1, x0, x1 = box
    h, w = y1 - y0, x1 - x0
    out = np.zeros((h, w), np.int64)

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
            logits = net(x)
            if bias is not None:
                logits = logits + bias.to(logits.device)[None, :, None, None]
            cls = logits.argmax(1)[0].cpu().numpy()
            cy0, cx0 = ty - y0, tx - x0
            hh, ww = min(out_size, h - cy0), min(out_size, w - cx0)
            out[cy0 : cy0 + hh, cx0 : cx0 + ww] = cls[:hh, :ww]
    return out


def validation_iou(net: UNet, data: TrainingData, device: torch.device,
                   bias: torch.Tensor | None = None) -> float | None:
    """Foreground IoU (object classes together against background) on the held-back pixels
    (``bias``: a logit adjustment applied first)."""
    inter = union = 0
    any_val = False
    was_training = net.training
    net.eval()
    try:
        for p in data.planes:
            if p.val is None:
                continue
            any_val = True
            ys, xs = np.nonzero(p.val)
            box = (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
            pred = _predict_classes(net, p.image, p.pad, box, data.out_size, data.halo, device, bias)
            v = p.val[box[0] : box[1], box[2] : box[3]]
            t = p.val_target[box[0] : box[1], box[2] : box[3]]
            pf = (pred > 0) & v
            tf = (t > 0) & v
            inter += int((pf & tf).sum())
            union += int((pf | tf).sum())
    finally:
        net.train(was_training)
    if not any_val:
        return None
    return 1.0 if union == 0 else inter / union


# ---------------------------------------------------------------------------- RNG
class _TorchRng:
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


def _should_stop(stop: Any) -> bool:
    if stop is None:
        return False
    if hasattr(stop, "is_set"):
        return bool(stop.is_set())
    if callable(stop):
        return bool(stop())
    return bool(stop)


# ---------------------------------------------------------------------------- training
def train(
    images: Any,
    labels: Any,
    masks: Any = None,
    *,
    model: UNetModel | None = None,
    architecture: UNetConfig | None = None,
    config: TrainConfig | None = None,
    mode: str | None = None,
    background_label: int | None = None,
    channel_axis: int | None = None,
    device: str | torch.device = "auto",
    seed: int | None = None,
    stop: Callable[[], bool] | Any = None,
    name: str | None = None,
) -> Generator[StepDone, None, UNetModel]:
    """Fine-tune ``model`` (or train a new one) on painted labels; yields StepDone, returns the model.

    ``images``: a 2D image (Y, X), a multichannel image with ``channel_axis``, or a stack (Z, Y, X);
    or a list of those. ``labels``: the matching integer labels (a napari Labels layer: one id per
    object, 0 = not painted), same shapes. ``masks``: None, or one mask (or None) per image, nonzero
    where the annotation is complete (0 there means background); without masks and without
    ``background_label`` the whole frame counts as complete. ``background_label``: the id painted
    on background (scribbles); other unpainted pixels are ignored.
    ``model``: a loaded :class:`UNetModel` to fine-tune (it is not modified: a copy is trained) or
    None to train a new one with ``architecture`` (default :func:`default_architecture`).
    ``mode``: "binary" (classes background/object with separating lines, the paper) or "boundary"
    (background/boundary/interior); a loaded model's class count decides when None.
    ``stop``: a callable (or an object with ``is_set()``, e.g. threading.Event) checked before every
    step; when it returns True training ends and the best model so far is returned. Closing the
    generator also ends it cleanly. ``seed``: same seed, same data and device -> same weights on CPU.

    Errors in the data (AnnotationError, a ValueError) are raised at the first ``next()``.
    """
    tc = config or TrainConfig()
    dev = resolve_device(device)
    if seed is None:
        seed = secrets.randbelow(2**31)
    seed = int(seed)
    fine_tuning = model is not None
    if model is not None:
        k = model.config.num_classes
        if mode is None:
            if k not in (2, 3):
                raise ValueError(f"cannot fine-tune a {k}-class model from painted instance labels: "
                                 f"only 2-class (binary) and 3-class (boundary) models")
            mode = "binary" if k == 2 else "boundary"
        elif num_classes_for(mode) != k:
            raise ValueError(f"mode {mode!r} needs {num_classes_for(mode)} classes but the model has {k}")
        arch = model.config
        normalization = model.normalization
        post = model.postprocessing
    else:
        mode = mode or "binary"
        check_mode(mode)
        if architecture is None:
            c = 1
            if channel_axis is not None:
                first = _as_list(images, "images")[0]
                c = int(np.shape(first)[channel_axis])
            architecture = default_architecture(c, mode)
        arch = architecture
        if arch.num_classes != num_classes_for(mode):
            raise ValueError(f"architecture has {arch.num_classes} classes but mode {mode!r} needs "
                             f"{num_classes_for(mode)}")
        normalization = Normalization()
        post = postprocessing_for(mode)

    data = prepare_data(images, labels, masks, config=arch, normalization=normalization, mode=mode,
                        background_label=background_label, channel_axis=channel_axis,
                        train_config=tc)

    base_adj = None if model is None else model.provenance.get("logit_adjustment")
    use_adj = tc.logit_adjustment if tc.logit_adjustment is not None else base_adj is not None
    adj = torch.from_numpy(data.logit_adjustment()).float() if use_adj else None

    rng_t = _TorchRng(seed, dev)
    with rng_t.active():
        if model is not None:
            net = UNet(arch)
            net.load_state_dict(model.net.state_dict())
            if base_adj is not None:  # train in the weighted parametrisation the loss expects
                with torch.no_grad():
                    net.head.bias -= torch.tensor(base_adj, dtype=net.head.bias.dtype)
        else:
            net = UNet(arch)
    net.to(dev)
    net.train()
    lr = tc.learning_rate(fine_tuning)
    if tc.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(net.parameters(), lr=lr,
                                                      weight_decay=tc.weight_decay)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=tc.momentum,
                              weight_decay=tc.weight_decay)
    sched = None
    if tc.cosine_decay and tc.steps > 1:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=tc.steps, eta_min=0.05 * lr)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    val_every = tc.validation_interval()

    best_score = validation_iou(net, data, dev, adj)
    start_score = best_score
    best_state = _clone_state(net)
    best_step = 0
    val_score = best_score
    step = 0
    t0 = time.perf_counter()
    losses: list[float] = []

    def result() -> UNetModel:
        if best_score is not None:
            net.load_state_dict(best_state)  # the best validated weights
        # without validation: the last weights
        net.eval()
        if adj is not None:
            with torch.no_grad():
                net.head.bias += adj.to(net.head.bias.device)
        base = None if model is None else {"name": model.name, "source": model.source}
        prov = {
            "base_model": base,
            "from_scratch": model is None,
            "mode": mode,
            "data_shapes": [list(s) for s in data.shapes],
            "planes": len(data.planes),
            "known_pixels": data.known_pixels,
            "validation_pixels": data.val_pixels,
            "background_label": background_label,
            "masks": masks is not None,
            "steps": step,
            "steps_planned": tc.steps,
            "best_step": best_step,
            "patch": {"output": data.out_size, "input": data.in_size},
            "training": {**tc.to_dict(), "lr": lr},
            "augmentation": tc.augmentation.to_dict(),
            "validation_iou": best_score,
            "validation_iou_start": start_score,
            "class_mean_weights": None if data.class_weights is None else [float(v) for v in data.class_weights],
            "logit_adjustment": None if adj is None else [float(v) for v in adj],
            "final_loss": losses[-1] if losses else None,
            "seed": seed,
            "device": str(dev),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if model is not None and model.provenance:
            prov["base_provenance"] = model.provenance
        nm = name or (f"{model.name}-finetuned" if model is not None else f"unet-{mode}")
        desc = (f"fine-tuned from {model.name}" if model is not None else "trained from scratch") + \
            f" on {len(data.planes)} painted plane(s), {step} steps"
        return UNetModel(net=net.cpu(), normalization=normalization, postprocessing=post, name=nm,
                         description=desc, provenance=prov)

    try:
        while step < tc.steps:
            if _should_stop(stop):
                break
            with rng_t.active():
                x, t, w = _sample_batch(data, rng, tc.batch_size, tc.sampling)
                xt = torch.from_numpy(x).to(dev)
                tt = torch.from_numpy(t).to(dev)
                wt = torch.from_numpy(w).to(dev)
                xt, (tt, wt) = augment(xt, [tt, wt], tc.augmentation, gen)
                tt = _center_crop(tt, data.out_size)
                wt = _center_crop(wt, data.out_size)
                logits = net(xt)
                loss = weighted_loss(logits, tt, wt)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
            step += 1
            lv = float(loss.detach())
            losses.append(lv)
            if step % val_every == 0 or step == tc.steps:
                with rng_t.active():
                    val_score = validation_iou(net, data, dev, adj)
                if val_score is not None and (best_score is None or val_score > best_score):
                    best_score, best_step = val_score, step
                    best_state = _clone_state(net)
            elapsed = time.perf_counter() - t0
            eta = elapsed / step * (tc.steps - step)
            yield StepDone(step=step, total=tc.steps, loss=lv, val_score=val_score,
                           best_score=best_score, eta_s=eta)
    except GeneratorExit:
        # closed by the caller: end cleanly (Python >= 3.13 hands this value to close())
        return result()
    return result()


def _clone_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def train_model(images: Any, labels: Any, masks: Any = None, **kwargs: Any) -> UNetModel:
    """Run :func:`train` to the end and return the trained model (same arguments)."""
    gen = train(images, labels, masks, **kwargs)
    return run_to_end(gen)


__all__ = [
    "TrainConfig",
    "TrainingData",
    "default_architecture",
    "postprocessing_for",
    "prepare_data",
    "train",
    "train_model",
    "validation_iou",
    "weighted_loss",
]

"""Training settings (:class:`TrainConfig`), the from-scratch architecture and per-mode post-processing.

The defaults are measured, not guessed: see docs/benchmarks.md ("Fine-tuning a new modality") for
the runs behind them. In short, on two painted frames of a modality no shipped model knows:

- Adam, fine-tuning rate 2e-3 with a short warm-up and a cosine decay to 5 % (3e-4 was too timid to
  move the nuclei model to brightfield cells in two minutes);
- ``class_balance=False``: the paper's w_c weighted the rare class ~27x on a sparse colony and thickened
  objects until packed neighbours merged; the border term of eq. 2 (w0 = 10, sigma = 5 px) stays;
- bf16 autocast on a CPU with bf16 units (faster per step: docs/benchmarks.md), channels_last always;
  the environment variable ``NAPARI_UNET_PRECISION`` (``fp32`` / ``bf16``), when set, is what
  ``precision="auto"`` means: ``NAPARI_UNET_PRECISION=fp32`` forces the fp32 path of every
  training (CLI, widgets, Live), as on a CPU without AVX512-BF16 or AMX (with
  ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` torch and oneDNN also use their AVX2
  kernels: how CI checks that the tests pass on such a CPU);
- a third of the patches centred on an object pixel (nnU-Net's foreground oversampling);
- many cheap steps rather than few large ones: 2 patches of 128 output pixels per step, and when
  fine-tuning the contracting path keeps the base model's weights (``freeze_encoder``). A painting
  is learnt in steps, and on a CPU without bf16 units 4 patches of 256 px with every layer
  learning made a fifth of the steps in the same minutes and learnt neither the rods nor the
  brightfield cells in 2 minutes (docs/benchmarks.md, "A recipe for the steps a CPU can give");
- an exponential moving average of the weights is what is validated and returned: the final
  one (a few held-back objects are the live score and the safety net, not the selector).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from napari_unet.core.modelfile.files import Postprocessing
from napari_unet.core.network.unet import UNetConfig
from napari_unet.core.train.annotations import CLASS_NAMES, check_mode, num_classes_for
from napari_unet.core.train.augment import Augmentation
from napari_unet.core.train.weight_map import SIGMA, W0

OPTIMIZERS = ("adam", "sgd")
SAMPLING = ("pixels", "images")
LOSSES = ("ce", "ce+dice")
PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_ENV = "NAPARI_UNET_PRECISION"  # when set: what precision="auto" means (module docstring)
KEEPS = ("final", "best")
# automatic ensembles: one network per NETWORK_STEPS steps that the time budget holds on this
# machine, and per NETWORK_PASSES passes over the painting, at most MAX_AUTO_MEMBERS
NETWORK_STEPS = 250
NETWORK_PASSES = 225
MAX_AUTO_MEMBERS = 3
PROBE_STEPS = 12  # the loop measures the machine's speed over steps 3 to this one
MAX_MEMBERS = 8
# the settings of a run that chose no number of steps, and what "no step limit" is with a time budget
DEFAULT_STEPS = 500
UNLIMITED_STEPS = 10**9
# a 3D U-Net's defaults (fine_tune_volume): its patches are volumes, so fewer and smaller ones
VOLUME_DEFAULTS: dict[str, Any] = {"steps": 200, "batch_size": 2, "patch_size": 96, "lr": 1e-3}


@dataclass(frozen=True)
class TrainConfig:
    """Training settings.

    - ``steps``: optimisation steps; ``minutes``: a time budget (wall clock, validation included).
      Training ends at whichever comes first; the learning-rate schedule follows the larger of the
      two progress fractions, so a time budget gets a full warm-up and decay.
    - ``optimizer="adam"``, ``lr``: None = 2e-3 (fine-tuning and from scratch). Warm-up over the
      first ``warmup`` fraction of the run, then a cosine decay to 5 % (``cosine_decay``).
      ``momentum=0.99`` is the paper's, for ``optimizer="sgd"``.
    - ``patch_size=128`` output pixels, ``batch_size=2`` (shrunk to the image when it is smaller).
    - ``w0=10``, ``sigma=5`` px: the paper's border weight map (eq. 2); ``class_balance`` adds its w_c
      (off by default, see the module docstring); ``logit_adjustment``: shift the output bias by
      -log(mean class weight) so the argmax is not drawn toward heavily weighted classes (None: as
      the model being fine-tuned).
    - ``loss``: "ce" (the paper's weighted softmax cross-entropy) or "ce+dice" (plus a soft Dice
      of the object classes on the known pixels, nnU-Net's loss).
    - ``foreground_fraction``: share of patches centred on a painted object pixel (the rest on any
      painted pixel); ``background_fraction``: share centred on a painted background pixel (Live:
      half and half, else a sparse painting's background is rarely seen). ``sampling``: "pixels"
      (an image's share of patches is its share of painted pixels) or "images" (each painted
      image equally often).
    - ``val_fraction``: about this share of the painted objects is held back, whole, from all over
      each image, each with a ring of its surroundings. With ``val_fraction=0``, fewer than
      ``val_min_total`` complete objects painted, or fewer than ``val_min_objects`` held back,
      nothing is held back: training uses all of the painting and returns the final averaged
      weights (and says so). ``val_every``: steps between validations (None: ~20 per run, or ~15
      per time budget).
    - ``keep``: "final" (default, nnU-Net's choice): the final averaged weights; validation is the
      live score and the safety net: the starting model comes back only when it scores above the
      final weights by more than ``start_margin``, with a warning. "best": the best validated
      step (again the start only by more than the margin). On brightfield cells picking the best
      step on a few held-back objects chose early, worse weights (docs/benchmarks.md, "Figures
      moved out of the code").
    - ``ema``: decay of the exponential moving average of the weights (0 = off: raw weights).
    - ``freeze_encoder`` (default True): when fine-tuning, the contracting path (``down``) keeps
      the base model's weights; the bottom, the expanding path and the head learn (about half the
      step time; a network trained from scratch trains every layer).
    - ``grad_clip``: None, or the largest norm of a step's gradient (over all trained
      parameters); larger gradients are scaled down to it before the optimiser's step.
    - ``plateau_patience``: with validation, the run ends early when the validation loss has not
      reached a new minimum for this many validations (after a fifth of the run): the learning
      rate decays to its floor over a quarter of the time spent so far, then training stops and
      says so (:mod:`.plateau`; 0 = off: the budget is the only end).
    - ``prior_adaptation``: record the painting's background share in the model, so that
      segmenting re-weights each plane to its own share (EM, :mod:`napari_unet.core.postprocess.prior`): how
      much background a user painted is not how much the next images hold. Measured on
      brightfield cells (train on frames with a wide scratch, 71 % background; score on later
      frames with 42 % and 20 %): foreground IoU 0.648 -> 0.783 with the same weights.
    - ``members``: how many networks are fine-tuned, one after the other, and averaged (their
      softmax means: :mod:`napari_unet.core.network.ensemble`); the budget (``minutes`` or ``steps``) is
      shared by them, a network that ends early leaving its time to the next, and each holds back
      its own objects for validation (``holdback_seed``), so that together they learn all of the
      painting. None (default): with a time budget and a painting that can be validated, one
      network per :data:`NETWORK_STEPS` steps (and :data:`NETWORK_PASSES` passes over the
      painting) that the budget holds on this machine, at most :data:`MAX_AUTO_MEMBERS`
      (measured over the first steps of the run); else one. A network validated worse
      than the starting model is left out. Measured on brightfield cells: see
      docs/benchmarks.md ("An ensemble instead of one network").
    - ``precision``: "auto" (bf16 autocast where the device computes it natively, else fp32;
      the environment variable ``NAPARI_UNET_PRECISION``, when set, replaces "auto" by its value),
      "fp32" or "bf16".
    """

    steps: int = 500
    minutes: float | None = None
    batch_size: int = 2
    patch_size: int = 128
    optimizer: str = "adam"
    lr: float | None = None
    weight_decay: float = 0.0
    momentum: float = 0.99  # SGD only (the paper's value)
    cosine_decay: bool = True
    warmup: float = 0.05
    w0: float = W0
    sigma: float = SIGMA
    class_balance: bool | str = False
    logit_adjustment: bool | None = None
    loss: str = "ce+dice"
    foreground_fraction: float = 0.33
    background_fraction: float = 0.0
    sampling: str = "pixels"
    val_fraction: float = 0.1
    val_min_total: int = 40
    val_min_objects: int = 6
    keep: str = "final"
    start_margin: float = 0.05
    val_every: int | None = None
    ema: float = 0.95
    plateau_patience: int = 3
    precision: str = "auto"
    prior_adaptation: bool = True
    members: int | None = None
    holdback_seed: int = 0
    freeze_encoder: bool = True
    grad_clip: float | None = None
    augmentation: Augmentation = field(default_factory=Augmentation)

    def __post_init__(self) -> None:
        for name, lo in (("steps", 1), ("batch_size", 1), ("patch_size", 1), ("val_min_total", 0),
                         ("val_min_objects", 1), ("plateau_patience", 0), ("holdback_seed", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"TrainConfig.{name} must be an integer >= {lo}, got {v!r}")
        if self.minutes is not None and not (isinstance(self.minutes, int | float)
                                             and math.isfinite(self.minutes) and self.minutes > 0):
            raise ValueError(f"TrainConfig.minutes must be a number > 0 (or None), got {self.minutes!r}")
        forced = os.environ.get(PRECISION_ENV, "").strip().lower()
        if self.precision == "auto" and forced not in ("", "auto"):
            if forced not in PRECISIONS:
                raise ValueError(f"the environment variable {PRECISION_ENV} must be one of "
                                 f"{PRECISIONS} (or unset), got {forced!r}")
            object.__setattr__(self, "precision", forced)  # frozen: set once, here
        for name, allowed in (("optimizer", OPTIMIZERS), ("sampling", SAMPLING), ("loss", LOSSES),
                              ("precision", PRECISIONS), ("keep", KEEPS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.class_balance not in (False, True, "objects"):
            raise ValueError(f"TrainConfig.class_balance must be False, True (the paper's w_c per class) "
                             f"or 'objects' (background against objects), got {self.class_balance!r}")
        if self.members is not None and (not isinstance(self.members, int) or isinstance(self.members, bool)
                                         or not 1 <= self.members <= MAX_MEMBERS):
            raise ValueError(f"TrainConfig.members must be None (automatic) or an integer from 1 to "
                             f"{MAX_MEMBERS}, got {self.members!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"TrainConfig.val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.val_every is not None and (not isinstance(self.val_every, int) or self.val_every < 1):
            raise ValueError(f"TrainConfig.val_every must be an integer >= 1, got {self.val_every!r}")
        if self.sigma <= 0 or self.w0 < 0:
            raise ValueError("TrainConfig needs sigma > 0 and w0 >= 0")
        if not 0 <= self.foreground_fraction <= 1:
            raise ValueError(f"TrainConfig.foreground_fraction must be in [0, 1], got "
                             f"{self.foreground_fraction!r}")
        if not 0 <= self.background_fraction <= 1 - self.foreground_fraction:
            raise ValueError(f"TrainConfig.background_fraction must be in [0, 1 - "
                             f"foreground_fraction], got {self.background_fraction!r}")
        if not isinstance(self.freeze_encoder, bool):
            raise ValueError(f"TrainConfig.freeze_encoder must be True or False, got "
                             f"{self.freeze_encoder!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"TrainConfig.grad_clip must be None or > 0, got {self.grad_clip!r}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"TrainConfig.ema must be in [0, 1), got {self.ema!r}")
        if not 0 <= self.start_margin <= 1:
            raise ValueError(f"TrainConfig.start_margin must be in [0, 1], got {self.start_margin!r}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"TrainConfig.warmup must be in [0, 1), got {self.warmup!r}")

    @classmethod
    def from_choices(cls, *, volume: bool = False, steps: int | None = None,
                     minutes: float | None = None, lr: float | None = None,
                     strength: float | None = None, members: int | None = None,
                     batch_size: int | None = None, patch_size: int | None = None,
                     **settings: Any) -> TrainConfig:
        """The settings of a run from what a user chose (the CLI's options, the Fine-tune widget's
        controls): the one place where those choices become a ``TrainConfig``.

        - ``volume``: a 3D U-Net trained on painted z-slices (:data:`VOLUME_DEFAULTS`: 200 steps,
          2 patches of 96 px, learning rate 1e-3; one network, ``members`` is not used);
        - ``steps``: None = no number chosen: :data:`UNLIMITED_STEPS` with a ``minutes`` budget,
          else the default (500, or the 3D default);
        - ``lr``, ``batch_size``, ``patch_size``: None (or 0 for the sizes) = the default;
        - ``strength``: the augmentation's strength (:func:`augmentation_for`; None = 1, the
          paper's elastic deformation);
        - ``settings``: any other field of :class:`TrainConfig`, as it is.

        Raises ValueError (naming the field) for a value :class:`TrainConfig` refuses.
        """
        defaults = dict(VOLUME_DEFAULTS) if volume else {
            "steps": DEFAULT_STEPS, "batch_size": cls.batch_size, "patch_size": cls.patch_size,
            "lr": None}
        if steps is None:
            steps = UNLIMITED_STEPS if minutes else defaults["steps"]
        return cls(steps=steps, minutes=minutes, batch_size=batch_size or defaults["batch_size"],
                   patch_size=patch_size or defaults["patch_size"],
                   lr=lr if lr is not None else defaults["lr"],
                   members=None if volume else members,
                   augmentation=augmentation_for(1.0 if strength is None else strength),
                   **settings)

    def members_for(self, has_validation: bool, live: bool = False, steps: float | None = None,
                    passes: float | None = None) -> int:
        """How many networks this run trains (see ``members``). ``steps`` / ``passes``: what the
        whole time budget will make on this machine (measured by the loop over its first
        :data:`PROBE_STEPS` steps; None before that: one network)."""
        if live:
            return 1
        if self.members is not None:
            return self.members
        if not has_validation or self.minutes is None or steps is None:
            return 1
        n = steps // NETWORK_STEPS
        if passes is not None:
            n = min(n, passes // NETWORK_PASSES)
        return int(min(MAX_AUTO_MEMBERS, max(1, n)))

    def learning_rate(self) -> float:
        return float(self.lr) if self.lr is not None else 2e-3

    def validation_interval(self) -> int:
        """Steps between validations (a time budget spaces them by the clock instead, see loop)."""
        return self.val_every or max(1, self.steps // 20)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["augmentation"] = self.augmentation.to_dict()
        return d


def augmentation_for(strength: float) -> Augmentation:
    """Augmentation settings for a strength in [0, 2]: 1 is the paper's elastic deformation (3x3
    grid, 10 px standard deviation) with flips, 90-degree turns and 10% intensity jitter (the
    default :class:`Augmentation`); 0 is off; the displacement and the jitter scale with the
    strength."""
    s = float(strength)
    if s <= 0:
        return Augmentation.none()
    return Augmentation(elastic=True, grid_points=3, sigma=10.0 * s, flip=True, rot90=True,
                        intensity=min(0.1 * s, 0.5))


def default_architecture(in_channels: int, mode: str) -> UNetConfig:
    """Architecture for training from scratch: the shipped models' (valid, depth 4, 16 channels)."""
    return UNetConfig(in_channels=in_channels, num_classes=num_classes_for(mode), depth=4,
                      base_channels=16, padding="valid", class_names=CLASS_NAMES[mode])


def postprocessing_for(mode: str, object_area: float | None = None) -> Postprocessing:
    """Instances from a model's classes: components of the object class ("binary", separated by
    the paper's background lines), or, for "boundary" models, seeds of confident interior flooded
    by a watershed of the interior probability (the network's own borders separate packed
    objects). ``object_area``: the median painted object (pixels): seeds below 6 % of it are
    noise, not objects (measured on brightfield cells: docs/benchmarks.md)."""
    check_mode(mode)
    if mode == "binary":
        return Postprocessing(instance_classes=(1,))
    min_seed = 1 if object_area is None else int(min(max(round(0.06 * object_area), 4), 1000))
    return Postprocessing(instance_classes=(2,), grow_classes=(1,), split="seeded",
                          seed_threshold=0.5, min_seed_size=min_seed)

"""Fine-tune (or train from scratch) a U-Net on painted labels.

:func:`train` is a generator: it yields a :class:`~napari_unet.core.events.StepDone` after every
optimisation step and returns the trained :class:`~napari_unet.core.modelfile.files.UNetModel`;
:func:`train_model` runs it to the end. The package's files say what they hold:

- :mod:`.config`: :class:`TrainConfig` and its measured defaults, the from-scratch architecture;
- :mod:`.data`: painted pairs -> targets, weight maps, hold-back, random patches;
- :mod:`.validation`: whole objects held back from all over the painting, scored by foreground IoU and instance F1;
- :mod:`.loss`: the paper's weighted cross-entropy, and Dice;
- :mod:`.network`: the trained copy (boundary class added when needed), averaged weights,
  precision, the private RNG, the learning-rate schedule;
- :mod:`.loop`: the training generator of one network;
- :mod:`.members`: :func:`train`, one network or an ensemble of them sharing the budget;
- :mod:`.live`: live training while the user paints (the painting changes between steps, a
  preview of the viewed box);
- :mod:`.report`: the provenance stored in the model file and the one-line summary.
"""

from napari_unet.core.train.config import TrainConfig, default_architecture, postprocessing_for
from napari_unet.core.train.data import (
    TrainingData,
    choose_mode,
    prepare_data,
    sample_batch,
    touching_fraction,
)
from napari_unet.core.train.live import live_config, live_train
from napari_unet.core.train.live_inbox import LiveInbox
from napari_unet.core.train.loop import train_network
from napari_unet.core.train.loss import dice_loss, training_loss, weighted_loss
from napari_unet.core.train.members import train, train_model
from napari_unet.core.train.report import training_summary
from napari_unet.core.train.start import widen_head
from napari_unet.core.train.validation import ValScore, validate

__all__ = [
    "TrainConfig",
    "LiveInbox",
    "TrainingData",
    "ValScore",
    "choose_mode",
    "default_architecture",
    "dice_loss",
    "live_config",
    "live_train",
    "postprocessing_for",
    "prepare_data",
    "sample_batch",
    "touching_fraction",
    "train",
    "train_model",
    "train_network",
    "training_loss",
    "training_summary",
    "validate",
    "weighted_loss",
    "widen_head",
]

"""The Fine-tune widget's training settings, one magicgui Container: scribbles, base model, device,
budget, networks, learning rate, augmentation, seed, and the 3D U-Net switch with its start.

The container enables and disables itself as one while a run lasts (:meth:`TrainingSettings.set_running`)
and builds the run's ``TrainConfig`` from its values (:meth:`TrainingSettings.train_config`, through the
core's :meth:`~napari_unet.core.train.config.TrainConfig.from_choices`, which the CLI calls too). The
Fine-tune widget, Live and Preview read it; their tooltips say what a biologist needs to choose them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSlider, FloatSpinBox, SpinBox

# the '3D start' choices: the base model lifted to 3D, or a new 3D U-Net from the voxel size
VOLUME_STARTS = ("base model", "new 3D U-Net (pooling from the voxel size)")


class TrainingSettings(Container):
    """The training controls (see the module docstring). ``models``: the base-model choices (a
    magicgui choices callable)."""

    def __init__(self, models: Callable[..., list[str]]) -> None:
        from napari_unet.core.device import (
            available_devices,  # torch: when the widget opens, not on import
        )

        super().__init__(labels=True)
        self.scribbles = CheckBox(
            value=False, text="Background painted as scribbles",
            tooltip="On: only painted pixels are known; background is what you painted with the "
                    "background label, everything else unpainted is ignored")
        self.background_label = SpinBox(
            value=1, min=1, max=2**31 - 1, label="Background label", enabled=False,
            tooltip="The label value you painted on background (scribbles mode)")
        self.base_model = ComboBox(choices=models, label="Base model",
                                   tooltip="The model to start from (it is not changed)")
        self.device = ComboBox(choices=["auto", *available_devices()], value="auto",
                               label="Device", tooltip="Where to train: auto = GPU if any, else CPU")
        self.minutes = FloatSpinBox(
            # 4, not 2: in the viewer training leaves a core to the event loop (a step takes
            # ~1.6x the CLI's on 2 cores: 2 minutes left brightfield cells unseparated), and with
            # validation it ends by itself once the painting is learnt
            value=4.0, min=0.0, max=1440.0, step=0.5, label="Minutes",
            tooltip="Time budget of the training in minutes, used when Steps is 0; the learning "
                    "rate warms up and decays within it. With validation (40 or more painted "
                    "objects), training ends earlier once the painting is learnt")
        self.steps = SpinBox(value=0, min=0, max=1000000, step=50, label="Steps",
                             tooltip="Optimisation steps, each a batch of augmented patches; 0 = "
                                     "train for Minutes instead (a fixed number of steps with a "
                                     "seed gives the same model again)")
        self.members = SpinBox(
            value=0, min=0, max=8, label="Networks",
            tooltip="Networks fine-tuned one after the other on the painting and averaged (an "
                    "ensemble: steadier results, each network costs one more pass to segment); "
                    "0 = automatic: with validation (40 or more painted objects), one per 250 "
                    "steps that the budget holds on this machine, at most 3, else 1")
        self.lr = FloatSpinBox(value=2e-3, min=1e-6, max=1.0, step=1e-4, label="Learning rate",
                               tooltip="Adam learning rate; warmed up, then it decays along a "
                                       "cosine to 5%")
        self.lr.native.setDecimals(6)
        self.strength = FloatSlider(
            value=1.0, min=0.0, max=2.0, step=0.1, label="Augmentation",
            tooltip="Augmentation strength: 1 = the paper's elastic deformation (3x3 grid, 10 px) "
                    "with flips, turns and intensity jitter; 0 = none; 2 = twice the displacement")
        self.seed = SpinBox(
            value=0, min=0, max=2**31 - 1, label="Seed",
            tooltip="Random seed of the patch sampling, augmentation and dropout: the same pairs, "
                    "settings and seed give the same model (on the CPU); change it for another draw")
        self.volume = CheckBox(
            value=False, label="3D U-Net",
            tooltip="The image is a (Z, Y, X) volume and a few of its z-slices are painted "
                    "completely (0 there is background, other slices unknown): fine-tune a 3D "
                    "U-Net (see 3D start); add pairs to train on several volumes of one voxel size")
        self.volume_start = ComboBox(
            choices=VOLUME_STARTS, value=VOLUME_STARTS[0], label="3D start", enabled=False,
            tooltip="With '3D U-Net': start from the base model (a 2D one lifted to 3D, equal to "
                    "it on every plane) or from a new 3D U-Net with random weights whose levels "
                    "pool z only where the image layer's voxel size (its scale) allows")
        self.extend([self.scribbles, self.background_label, self.base_model, self.device,
                     self.minutes, self.steps, self.members, self.lr, self.strength, self.seed,
                     self.volume, self.volume_start])
        self.running = False
        self.scribbles.changed.connect(lambda _v: self._sync())
        self.volume.changed.connect(lambda _v: self._sync())
        self.volume_start.changed.connect(lambda _v: self._sync())

    # ------------------------------------------------------------------ what they say
    @property
    def background(self) -> int | None:
        """The background label of a scribbled painting, None when unpainted is background."""
        return int(self.background_label.value) if self.scribbles.value else None

    @property
    def new3d(self) -> bool:
        """'3D U-Net' with the start 'new 3D U-Net': no base model is used."""
        return bool(self.volume.value) and self.volume_start.value == VOLUME_STARTS[1]

    def train_config(self, *, live: bool = False) -> Any:
        """The ``TrainConfig`` of a run with these settings: Train (2D, or 3D with '3D U-Net'), or
        Live (``live``: live training's own measured recipe, with this augmentation). Steps 0 means
        the Minutes budget. Raises ValueError for settings the core refuses."""
        from napari_unet.core.train.config import DEFAULT_STEPS, TrainConfig, augmentation_for

        if live:
            from napari_unet.core.train.live import live_config

            # lr None: live training's own measured rate and recipe, not Fine-tune's
            return live_config(lr=None, augmentation=augmentation_for(float(self.strength.value)))
        steps = int(self.steps.value) or None
        minutes = None if steps else float(self.minutes.value) or None
        if steps is None and minutes is None:  # neither chosen: the widget's 500 steps, 2D or 3D
            steps = DEFAULT_STEPS
        return TrainConfig.from_choices(
            volume=bool(self.volume.value), steps=steps, minutes=minutes, lr=float(self.lr.value),
            strength=float(self.strength.value), members=int(self.members.value) or None)

    # ------------------------------------------------------------------ enabled
    def set_running(self, running: bool) -> None:
        """Disable every control while a run lasts; enable them again, as their choices allow,
        when it ends."""
        self.running = bool(running)
        for w in (self.base_model, self.device, self.minutes, self.steps, self.members, self.lr,
                  self.scribbles, self.strength, self.seed, self.volume):
            w.enabled = not running
        self._sync()

    def _sync(self) -> None:
        """Background label only with scribbles; 3D start only with '3D U-Net'; no base model for
        a new 3D U-Net."""
        self.background_label.enabled = not self.running and bool(self.scribbles.value)
        self.volume_start.enabled = not self.running and bool(self.volume.value)
        self.base_model.enabled = not self.running and not self.new3d

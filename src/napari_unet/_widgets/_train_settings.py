"""The Fine-tune widget's training settings: scribbles, base model, device, budget, networks,
learning rate, augmentation, seed, and the 3D U-Net switch with its start. Each is an attribute of
the widget (``w.steps`` ...); their tooltips say what a biologist needs to choose them."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import CheckBox, ComboBox, FloatSlider, FloatSpinBox, SpinBox

from napari_unet._widgets._train_jobs import VOLUME_STARTS


def add_training_settings(w: Any) -> list[Any]:
    """Create the settings on the widget ``w`` (its ``_models`` gives the base-model choices);
    returns them in the order they are shown."""
    from napari_unet.core.device import (
        available_devices,  # torch: when the widget opens, not on import
    )

    w.scribbles = CheckBox(
        value=False, text="Background painted as scribbles",
        tooltip="On: only painted pixels are known; background is what you painted with the "
                "background label, everything else unpainted is ignored")
    w.background_label = SpinBox(
        value=1, min=1, max=2**31 - 1, label="Background label", enabled=False,
        tooltip="The label value you painted on background (scribbles mode)")
    w.base_model = ComboBox(choices=w._models, label="Base model",
                            tooltip="The model to start from (it is not changed)")
    w.device = ComboBox(choices=["auto", *available_devices()], value="auto",
                        label="Device", tooltip="Where to train: auto = GPU if any, else CPU")
    w.minutes = FloatSpinBox(
        # 4, not 2: in the viewer training leaves a core to the event loop (a step takes
        # ~1.6x the CLI's on 2 cores: 2 minutes left brightfield cells unseparated), and with
        # validation it ends by itself once the painting is learnt
        value=4.0, min=0.0, max=1440.0, step=0.5, label="Minutes",
        tooltip="Time budget of the training in minutes, used when Steps is 0; the learning "
                "rate warms up and decays within it. With validation (40 or more painted "
                "objects), training ends earlier once the painting is learnt")
    w.steps = SpinBox(value=0, min=0, max=1000000, step=50, label="Steps",
                      tooltip="Optimisation steps, each a batch of augmented patches; 0 = "
                              "train for Minutes instead (a fixed number of steps with a "
                              "seed gives the same model again)")
    w.members = SpinBox(
        value=0, min=0, max=8, label="Networks",
        tooltip="Networks fine-tuned one after the other on the painting and averaged (an "
                "ensemble: steadier results, each network costs one more pass to segment); "
                "0 = automatic: with validation (40 or more painted objects), one per 250 "
                "steps that the budget holds on this machine, at most 3, else 1")
    w.lr = FloatSpinBox(value=2e-3, min=1e-6, max=1.0, step=1e-4, label="Learning rate",
                        tooltip="Adam learning rate; warmed up, then it decays along a "
                                "cosine to 5%")
    w.lr.native.setDecimals(6)
    w.strength = FloatSlider(
        value=1.0, min=0.0, max=2.0, step=0.1, label="Augmentation",
        tooltip="Augmentation strength: 1 = the paper's elastic deformation (3x3 grid, 10 px) "
                "with flips, turns and intensity jitter; 0 = none; 2 = twice the displacement")
    w.seed = SpinBox(
        value=0, min=0, max=2**31 - 1, label="Seed",
        tooltip="Random seed of the patch sampling, augmentation and dropout: the same pairs, "
                "settings and seed give the same model (on the CPU); change it for another draw")
    w.volume = CheckBox(
        value=False, label="3D U-Net",
        tooltip="The image is a (Z, Y, X) volume and a few of its z-slices are painted "
                "completely (0 there is background, other slices unknown): fine-tune a 3D "
                "U-Net (see 3D start); add pairs to train on several volumes of one voxel size")
    w.volume_start = ComboBox(
        choices=VOLUME_STARTS, value=VOLUME_STARTS[0], label="3D start", enabled=False,
        tooltip="With '3D U-Net': start from the base model (a 2D one lifted to 3D, equal to "
                "it on every plane) or from a new 3D U-Net with random weights whose levels "
                "pool z only where the image layer's voxel size (its scale) allows")
    return [w.scribbles, w.background_label, w.base_model, w.device, w.minutes, w.steps, w.members,
            w.lr, w.strength, w.seed, w.volume, w.volume_start]

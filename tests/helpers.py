"""Plain helpers that tests call with arguments: drive a progress generator, build a tiny U-Net,
compare two labellings, find the test data. (Fixtures are in conftest.py; a plain module because
tests import these as functions, and importing from conftest.py is what pytest advises against.)"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).parent / "data"

# the class names training gives a model (core/train/annotations.py, modes "binary" and "boundary")
TRAINING_CLASS_NAMES = {2: ("background", "object"), 3: ("background", "boundary", "interior")}


def drain(gen: Generator, *, keep_events: bool = False) -> Any:
    """Iterate a progress generator to its end and return its return value; with ``keep_events``,
    ``(events, return value)``, the events in the order yielded."""
    events = []
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return (events, stop.value) if keep_events else stop.value
        if keep_events:
            events.append(event)


def tiny_model(*, seed: int = 0, depth: int = 2, base_channels: int = 4, padding: str = "valid",
               classes: int = 2, in_channels: int = 1, training_names: bool = False,
               postprocessing=None, provenance: dict | None = None, eval_mode: bool = False):
    """A small random U-Net model named "tiny" (fast core tests): ``torch.manual_seed(seed)``, then
    the network. ``training_names``: classes named as training names them (background/object,
    background/boundary/interior) instead of UNetConfig's defaults (background, class 1, ...);
    ``postprocessing`` (default: ``Postprocessing()``) and ``provenance`` (default: empty) go into
    the model; ``eval_mode``: the network in eval mode (no dropout) rather than as built."""
    import torch

    from napari_unet.core.modelfile.files import Postprocessing, UNetModel
    from napari_unet.core.network.unet import UNet, UNetConfig

    torch.manual_seed(seed)
    names = TRAINING_CLASS_NAMES[classes] if training_names else ()
    net = UNet(UNetConfig(depth=depth, base_channels=base_channels, padding=padding, num_classes=classes,
                          in_channels=in_channels, class_names=names))
    if eval_mode:
        net.eval()
    return UNetModel(net, postprocessing=postprocessing or Postprocessing(), name="tiny",
                     provenance=dict(provenance or {}))


def instances_model(postprocessing=None):
    """The batch tests' tiny model: 3 classes (seed 2), instances from class 1 of 5 pixels or more
    unless ``postprocessing`` says otherwise."""
    from napari_unet.core.modelfile.files import Postprocessing

    return tiny_model(classes=3, seed=2,
                      postprocessing=postprocessing or Postprocessing(instance_classes=(1,), min_size=5))


def is_relabelling(a: np.ndarray, b: np.ndarray) -> bool:
    """True when a and b are the same partition: same background, ids in one-to-one correspondence."""
    a, b = np.asarray(a).ravel().astype(np.int64), np.asarray(b).ravel().astype(np.int64)
    if not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))

"""Shared test fixtures: tiny model files, real sample images, a synthetic colony of packed rods,
one torch thread for tiny training runs, captured napari notifications. Helpers that tests call
with arguments (tiny models, draining a generator, the data folder) are in helpers.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import DATA, tiny_model


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-channel, 2-class U-Net of depth 2 with 4 base channels, saved as a model file."""
    from napari_unet.core.modelfile.files import save_model

    return save_model(tiny_model(), tmp_path_factory.mktemp("models") / "tiny.safetensors")


@pytest.fixture(scope="session")
def nuclei_image() -> np.ndarray:
    """The real 512x512 uint16 fluorescence nuclei image shipped as sample data."""
    import tifffile

    from napari_unet._sample_data import sample_path

    return tifffile.imread(sample_path("nuclei"))


@pytest.fixture(scope="module")
def nuclei_model():
    """The shipped 2D ``nuclei`` model (one per test module: a test may change its copy)."""
    from napari_unet.core.exchange.opening import load_model

    return load_model("nuclei")


@pytest.fixture(scope="session")
def nuclei_mask() -> np.ndarray:
    import tifffile

    return tifffile.imread(DATA / "nuclei_dsb2018_mask_instances.tif")


@pytest.fixture
def notifications():
    """Notifications napari shows during the test (a list of napari Notification objects)."""
    from napari.utils.notifications import notification_manager

    seen: list = []

    def _keep(event) -> None:
        seen.append(event.value if hasattr(event, "value") else event)

    notification_manager.notification_ready.connect(_keep)
    yield seen
    notification_manager.notification_ready.disconnect(_keep)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine OpenMP threads
    spinning against other processes made each convolution 10-20x slower (use it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def colony():
    """Two frames of a synthetic colony of packed rods (empty margins around it), 18 cells each:
    ([image, image], [labels, labels])."""
    from napari_unet._synthetic import rod_colony

    frames = [rod_colony(seed=s) for s in (0, 1)]
    return [f[0] for f in frames], [f[1] for f in frames]

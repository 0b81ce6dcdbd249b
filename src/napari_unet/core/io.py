"""Deprecated: the old home of model files; import from ``napari_unet`` instead.

``from napari_unet.core.io import load_model`` (the import the README documented) keeps working for
one release, with a DeprecationWarning that names the new import. This module re-exports only what
the old ``napari_unet.core.io`` offered publicly (``load_model`` now lives in
:mod:`napari_unet.core.exchange.opening`, the rest in :mod:`napari_unet.core.modelfile.files`); it
will be removed in the next release.
"""

from __future__ import annotations

import warnings

from napari_unet.core.exchange.opening import load_model
from napari_unet.core.modelfile.files import (
    ModelFileError,
    Postprocessing,
    UNetModel,
    read_header,
    save_model,
    shipped_models,
)

__all__ = [
    "ModelFileError",
    "Postprocessing",
    "UNetModel",
    "load_model",
    "read_header",
    "save_model",
    "shipped_models",
]

# stacklevel=2: the warnings machinery skips importlib's own frames, so the warning points at the
# line of the user's code that imports this module.
warnings.warn(
    "napari_unet.core.io is deprecated and will be removed in the next release: use "
    "`from napari_unet import load_model, save_model, shipped_models, UNetModel` (or, for "
    "Postprocessing, ModelFileError and read_header, `from napari_unet.core.modelfile.files import ...`)",
    DeprecationWarning,
    stacklevel=2,
)

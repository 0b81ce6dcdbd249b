"""napari-unet: the U-Net of Ronneberger, Fischer and Brox (MICCAI 2015) for napari.

The public API, importable from the package itself::

    from napari_unet import load_model, segment_image

    labels = segment_image(image, load_model("nuclei"), output="instances")

Importing the package is cheap: every name below is imported lazily (PEP 562), on first use, so
``import napari_unet`` (which napari does when it opens the Plugins menu) imports no torch.

- models: :func:`load_model` (a model file, a shipped model's name or a bioimage.io package),
  :func:`save_model`, :func:`shipped_models`, :class:`UNetModel`, :class:`UNetConfig`,
  :class:`UNet`;
- segmenting: :func:`segment` (the generator of progress events), :func:`segment_image`,
  :func:`predict_image` (probabilities), :func:`evaluate` (scores against ground truth);
- training: :func:`train`, :class:`TrainConfig`, :func:`fine_tune_volume`;
- many images: :func:`segment_files`, :func:`segment_arrays`, :func:`segment_to_zarr`;
- exchange: :func:`export_bioimageio`, :func:`export_onnx`, :func:`export_torchscript`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    "load_model": "napari_unet.core.exchange.opening",
    "save_model": "napari_unet.core.modelfile.files",
    "shipped_models": "napari_unet.core.modelfile.files",
    "UNetModel": "napari_unet.core.modelfile.files",
    "UNetConfig": "napari_unet.core.network.unet",
    "UNet": "napari_unet.core.network.unet",
    "segment": "napari_unet.core.segment",
    "segment_image": "napari_unet.core.segment",
    "predict_image": "napari_unet.core.predict.predict2d",
    "train": "napari_unet.core.train.members",
    "TrainConfig": "napari_unet.core.train.config",
    "fine_tune_volume": "napari_unet.core.train.loop3d",
    "evaluate": "napari_unet.core.metrics",
    "segment_files": "napari_unet.batch.files",
    "segment_arrays": "napari_unet.batch.arrays",
    "segment_to_zarr": "napari_unet.batch.zarr_blocks",
    "export_bioimageio": "napari_unet.core.exchange.bioimageio",
    "export_onnx": "napari_unet.core.exchange.portable",
    "export_torchscript": "napari_unet.core.exchange.portable",
}

__all__ = [
    "__version__",
    "load_model",
    "save_model",
    "shipped_models",
    "UNetModel",
    "UNetConfig",
    "UNet",
    "segment",
    "segment_image",
    "predict_image",
    "train",
    "TrainConfig",
    "fine_tune_volume",
    "evaluate",
    "segment_files",
    "segment_arrays",
    "segment_to_zarr",
    "export_bioimageio",
    "export_onnx",
    "export_torchscript",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on demand
    from napari_unet.batch.arrays import segment_arrays
    from napari_unet.batch.files import segment_files
    from napari_unet.batch.zarr_blocks import segment_to_zarr
    from napari_unet.core.exchange.bioimageio import export_bioimageio
    from napari_unet.core.exchange.opening import load_model
    from napari_unet.core.exchange.portable import export_onnx, export_torchscript
    from napari_unet.core.metrics import evaluate
    from napari_unet.core.modelfile.files import UNetModel, save_model, shipped_models
    from napari_unet.core.network.unet import UNet, UNetConfig
    from napari_unet.core.predict.predict2d import predict_image
    from napari_unet.core.segment import segment, segment_image
    from napari_unet.core.train.config import TrainConfig
    from napari_unet.core.train.loop3d import fine_tune_volume
    from napari_unet.core.train.members import train


def __getattr__(name: str) -> Any:
    """Import a public name from its defining module on first access (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_unet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    """The module's own names plus the lazily imported public API."""
    return sorted(set(globals()) | set(__all__))

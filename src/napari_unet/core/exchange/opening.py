"""Opening any model: a shipped model's name, a napari-unet model file or a bioimage.io package.

The model-file layer (:mod:`napari_unet.core.modelfile`) reads its own files and knows nothing of
packages; opening a package needs the exchange layer (:mod:`.package_import`), so the one function
that opens everything lives here, above both.
"""

from __future__ import annotations

import os

import torch

from napari_unet.core.modelfile.files import UNetModel, read_model, resolve_model_path


def load_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu") -> UNetModel:
    """Open a model: a shipped model by name, a model file by path, or a bioimage.io package.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        A shipped model's name (``"nuclei"``, see
        :func:`~napari_unet.core.modelfile.files.shipped_models`), the path of a napari-unet
        ``.safetensors`` file (the suffix may be left out) or of a bioimage.io package (``.zip``:
        one exported by napari-unet, or another U-Net with TorchScript or ONNX weights).
    device : str or torch.device, default "cpu"
        Where the network goes once read (weights are always read on the CPU first).

    Returns
    -------
    UNetModel
        The network in eval mode with its normalisation and post-processing.

    Raises
    ------
    napari_unet.core.modelfile.files.ModelFileError
        No such file or name, or a file or package that is not a usable model (the message
        names the file and what is wrong with it).
    """
    path = resolve_model_path(name_or_path)
    if path.suffix.lower() == ".zip":
        from napari_unet.core.exchange.package_import import load_package

        return load_package(path, device)
    return read_model(path, device)

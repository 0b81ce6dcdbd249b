"""Model exchange: TorchScript and ONNX files of our network, bioimage.io model packages in and out.

Pure torch/numpy like the rest of the core. TorchScript needs only torch; ONNX export needs the
``onnx`` package, ONNX inference ``onnxruntime``; bioimage.io packages need ``bioimageio.spec`` (and
``bioimageio.core`` to run a package's own test). Those are the optional extra
``pip install "napari-unet[export]"``; :func:`require` names it when something is missing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from napari_unet.core.modelfile.files import ModelFileError

EXTRA_HINT = 'install the export extra: pip install "napari-unet[export]"'


class ExchangeError(ModelFileError):
    """A package or file that cannot be exported or imported, with a sentence saying why (a
    ModelFileError, so that callers reporting unreadable models report these too)."""


def require(module: str, what: str) -> Any:
    """Import ``module`` or raise ExchangeError saying that ``what`` needs it (and the extra)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExchangeError(f"{what} needs the Python package {module!r}: {EXTRA_HINT}") from None


@dataclass(frozen=True)
class ExportStep:
    """One step of writing an export finished: ``done`` of ``total``; ``what`` says which."""

    done: int
    total: int
    what: str = ""

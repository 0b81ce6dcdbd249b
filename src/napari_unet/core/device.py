"""Choice of the compute device: CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return the torch device for ``device`` ("auto", "cpu", "cuda", "cuda:1", "mps").

    "auto" picks CUDA when available, then Apple MPS, else the CPU. An explicit device that is not
    available raises ValueError with the devices that are.
    """
    if isinstance(device, torch.device):
        device = str(device)
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available here; "
                             f"available: {available_devices()}")
        return torch.device(name)
    if name == "mps":
        if not _mps_available():
            raise ValueError(f"device 'mps' requested but Apple MPS is not available here; "
                             f"available: {available_devices()}")
        return torch.device("mps")
    raise ValueError(f"unknown device {device!r}: use one of {DEVICES}")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    if _mps_available():
        out.append("mps")
    return out


def free_memory_bytes(device: torch.device) -> int:
    """Free memory on ``device`` in bytes (an estimate on the CPU and MPS)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # pragma: no cover - psutil is a dependency of the tests only
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))

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


# ---------------------------------------------------------------------------- CPU threads
def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; all cores where that is unknown)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def cpu_threads(cores: int, busy: float, reserve: int = 0) -> int:
    """The torch threads for a CPU job: the cores that other processes leave free, less
    ``reserve`` (e.g. one for a viewer's event loop), at least 1.

    Parameters
    ----------
    cores : int
        The cores this process may use (:func:`usable_cores`).
    busy : float
        How many cores other processes keep busy now (:func:`busy_cores`).
    reserve : int, default 0
        Cores to leave to this process's other work.

    Returns
    -------
    int
        Threads in [1, cores]. One thread per free core: more threads than free cores make every
        step wait for preempted threads (with two busy processes on 2 cores, Live made 2-8 steps
        in 30 s with torch's default 2 threads against 53 with one: docs/benchmarks.md, "Threads
        under load").
    """
    free = int(cores) - int(round(max(0.0, float(busy))))
    return max(1, min(int(cores), free - int(reserve)))


def busy_cores(window_s: float = 0.3, *, read_stat: object = None, own_seconds: object = None,
               sleep: object = None) -> float:
    """How many cores other processes keep busy, measured over ``window_s`` seconds (Linux:
    the machine's busy time from /proc/stat less this process's own CPU time); 0.0 where that
    cannot be read. ``read_stat``, ``own_seconds`` and ``sleep`` replace the readings in tests."""
    import os
    import time

    def stat() -> tuple[float, float]:  # (busy, all) seconds of every core together
        text = read_stat() if read_stat is not None else open("/proc/stat").read()  # noqa: SIM115
        fields = [float(v) for v in text.splitlines()[0].split()[1:]]
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        return (sum(fields) - idle) / hz, sum(fields) / hz

    def own() -> float:
        if own_seconds is not None:
            return float(own_seconds())  # type: ignore[operator]
        t = os.times()
        return t.user + t.system

    try:
        b0, _ = stat()
        o0 = own()
        (sleep or time.sleep)(window_s)  # type: ignore[operator]
        b1, _ = stat()
        o1 = own()
    except (OSError, ValueError, IndexError):
        return 0.0
    if window_s <= 0:
        return 0.0
    return max(0.0, ((b1 - b0) - (o1 - o0)) / window_s)

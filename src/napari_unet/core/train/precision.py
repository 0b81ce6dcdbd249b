"""The arithmetic precision of training: bfloat16 where the device computes it natively, else
float32 (:func:`resolve_precision`), and the autocast context of the forward pass."""

from __future__ import annotations

import functools
from contextlib import nullcontext
from typing import Any

import torch


@functools.lru_cache(maxsize=1)
def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" where the device computes bfloat16 natively (CUDA with bf16, a CPU with
    AVX512-BF16 or AMX), else "fp32": bf16 autocast is faster where the CPU has bf16 units and
    many times slower where it has not (docs/benchmarks.md)."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if _cpu_has_bf16() else "fp32"
    return "fp32"


def autocast_for(precision: str, device: torch.device) -> Any:
    """A context-manager factory for the forward pass at ``precision``."""
    if precision == "bf16":
        return functools.partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)
    return nullcontext

"""What every benchmark reports about the machine it ran on: the CPU's vector flags and the
fp32 / bf16 matmul rates (2048^2, best of 3)."""

from __future__ import annotations

import time


def cpu_flags() -> str:
    """The CPU flags that decide the training path (AVX2, AVX-512, bf16 units)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return "?"
    return ", ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags)


def matmul_gflops(dtype: str) -> float:
    """GFLOP/s of a 2048 x 2048 matmul in ``dtype`` ("float32", "bfloat16"), best of 3."""
    import torch

    a = torch.randn(2048, 2048, dtype=getattr(torch, dtype))
    a @ a
    times = []
    for _ in range(3):
        t = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - t)
    return 2 * 2048**3 / min(times) / 1e9

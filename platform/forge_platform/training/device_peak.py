"""The peak FLOP/s that MFU is measured against, taken on the device itself.

MFU's denominator is the measured dense-matmul rate of the device (bf16 on GPU, fp32 on CPU),
not a datasheet figure: on an H100 the measured bf16 rate is well below the paper figure
(benchmarks/models/RESULTS.md gives both), and MFU stays comparable with the anchors measured the
same way.
"""

from __future__ import annotations

import time

import torch


def measure_matmul_flops(device: torch.device, size: int | None = None, repeats: int = 10) -> float:
    """Median FLOP/s of a square matmul on `device` (bf16 8192^3 on GPU, fp32 1024^3 on CPU)."""
    on_gpu = device.type == "cuda"
    n = size or (8192 if on_gpu else 1024)
    dtype = torch.bfloat16 if on_gpu else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for _ in range(repeats + 2):
        if on_gpu:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        if on_gpu:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    median = sorted(times[2:])[len(times[2:]) // 2]  # the first two warm up
    return 2 * n**3 / median

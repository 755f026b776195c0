"""Timing helpers shared by the benchmark parts."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch


def memory_bandwidth(device: torch.device, megabytes: int = 512) -> float:
    """Read bandwidth in bytes/s: best time to sum a large buffer (the least disturbed run; a floor wants the best)."""
    x = torch.ones(megabytes * 2**18, device=device)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        x.sum().item()
        times.append(time.perf_counter() - start)
    return x.numel() * 4 / min(times)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_runs(fn: Callable[[], dict[str, float]], runs: int) -> dict[str, float]:
    """One warm-up call, then the per-key median of `runs` calls of fn (which returns its own timings)."""
    fn()
    results = [fn() for _ in range(runs)]
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10

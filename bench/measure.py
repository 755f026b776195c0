"""Timing helpers shared by the benchmark parts."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch

from core.lm import paths
from core.lm.kernels import cpu_kernels_available, linear_rows


def memory_bandwidth(device: torch.device, megabytes: int = 512) -> float:
    """Read bandwidth in bytes/s: the best of 5 runs (the least disturbed; a floor wants the best) of
    summing a large buffer and, on CPU, of streaming it through the decode kernel as a weight matrix
    with each of its prefetch/thread settings (torch's sum alone reaches only ~85% of what the kernel
    reads; which setting streams best depends on the CPU). On huge pages, as the LM's weights."""
    x = torch.ones(megabytes * 2**18, device=device)
    readers = [lambda: x.sum().item()]
    if device.type == "cpu" and cpu_kernels_available():
        x = torch.ops.fishtts.huge_page_copy(x)
        matrix, row = x.view(-1, 1024), torch.ones(1, 1024)
        for variant in paths.KERNEL_VARIANTS.keys() & set(paths.decode_candidates("float32")):
            readers.append(lambda v=variant: _with_path(v, lambda: linear_rows(row, matrix)))
    best = min(_best_time(read) for read in readers)
    return x.numel() * 4 / best


def _with_path(variant: str, fn: Callable[[], object]) -> object:
    with paths.using("float32", decode=variant):
        return fn()


def _best_time(fn: Callable[[], object], runs: int = 5) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


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

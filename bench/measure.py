"""Timing helpers shared by the benchmark parts."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from core.lm import paths
from core.lm.kernels import cpu_kernels_available, linear_rows

T = TypeVar("T")


class ReadBandwidth:
    """The memory's read bandwidth in bytes/s, now: the floor for a decode, which streams its weights.

    On a shared VM it moves by up to 2x within a minute (29-66 GB/s on one AMD EPYC in an hour), so a floor
    measured once at the start says little about a decode timed minutes later (a run read 34.8 GB/s at the
    start and 61-62 beside its decode runs): `around(fn)` reads it just before and just after fn.
    The first reading is the best of 5 runs (the least disturbed; a floor wants the best) of summing a
    large buffer and, on CPU, of streaming it through the decode kernel as a weight matrix with each of its
    prefetch/thread settings (which reads fastest depends on the CPU and the moment: on the AMD EPYC torch's
    sum read 60-66 GB/s in quiet minutes, when the kernel's dot products, two loads per weight vector, peak
    at 44-53 GB/s on its two cores; elsewhere the kernel read more); later readings take the reader that
    was fastest, best of 3. On huge pages, as the LM's weights."""

    def __init__(self, device: torch.device, megabytes: int = 512):
        x = torch.ones(megabytes * 2**18, device=device)
        self.bytes = x.numel() * 4
        self.readers = [lambda: x.sum().item()]
        if device.type == "cpu" and cpu_kernels_available():
            x = torch.ops.fishtts.huge_page_copy(x)
            matrix, row = x.view(-1, 1024), torch.ones(1, 1024)
            for variant in paths.KERNEL_VARIANTS.keys() & set(paths.decode_candidates("float32")):
                self.readers.append(lambda v=variant: _with_path(v, lambda: linear_rows(row, matrix)))
        self.best_reader: Callable[[], object] | None = None

    def __call__(self) -> float:
        if self.best_reader is None:
            best, self.best_reader = min(((_best_time(r), r) for r in self.readers), key=lambda pair: pair[0])
        else:
            best = _best_time(self.best_reader, runs=3)
        return self.bytes / best

    def around(self, fn: Callable[[], T]) -> tuple[T, float]:
        """fn's result and the bandwidth beside it: the higher of the readings before and after (the
        floor it had, taken generously)."""
        before = self()
        result = fn()
        return result, max(before, self())


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

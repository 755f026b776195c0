"""Device and precision choice: CUDA when present; float32 on CPU (bf16 matmuls are ~75x slower there);
and the CPU threads a loading thread leaves behind."""

from __future__ import annotations

import ctypes
import functools
import os

import torch

# What --device and a load request's `device` take (auto: CUDA when present), as words and as a pattern.
DEVICE_NAMES = "cpu, cuda, cuda:N or auto"
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]{1,2})?)$"


def resolve_device(device: str | None = None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r} (use {DEVICE_NAMES})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but is not available on this machine")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"CUDA device {resolved.index} does not exist ({torch.cuda.device_count()} visible)")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r} (use {DEVICE_NAMES})")
    return resolved


def lm_dtype(device: torch.device, half: bool = False, precision: str | None = None) -> torch.dtype:
    """The original runs bf16 (fp16 with --half) on CUDA; on CPU we compute in float32."""
    if precision:
        table = {
            "float32": torch.float32,
            "float16": torch.float16,
            "half": torch.float16,
            "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16,
            "fp16": torch.float16,
            "fp32": torch.float32,
        }
        if precision not in table:
            raise ValueError(f"unknown precision {precision!r} (use float32, bfloat16 or float16)")
        if device.type == "cpu":
            return torch.float32
        return table[precision]
    if device.type == "cpu":
        return torch.float32
    return torch.float16 if half else torch.bfloat16


OMP_PAUSE_HARD = 2  # OpenMP 5.0's omp_pause_hard


def release_openmp_threads() -> bool:
    """Free the calling thread's OpenMP worker threads (torch's intra-op pool); True if it did.

    Why: GNU OpenMP gives every thread that runs a parallel region a team of its own, and once its
    workers outnumber the CPUs, every team's idle workers sleep at once instead of spinning, so each
    parallel op pays a wake-up. A thread that loaded the models keeps its team, so the scheduler's work
    (prefill, the VQGAN) ran ~1.4x slower (Intel Xeon, 2 vCPUs). The next parallel op on this thread
    makes a new team: call this once the thread's torch work is done. Only GNU OpenMP as torch ships
    it (torch/lib/libgomp.so.1), where a hard pause frees just the calling thread's pool; LLVM's runtime
    (libomp, libiomp5) would shut down every thread's, so elsewhere nothing happens."""
    pause = _gomp_pause()
    return pause is not None and pause(OMP_PAUSE_HARD) == 0


@functools.cache
def _gomp_pause():
    """torch's own libgomp's omp_pause_resource_all, if torch runs on it (already mapped: never load a
    second OpenMP runtime into the process)."""
    path = os.path.realpath(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp.so.1"))
    try:
        with open("/proc/self/maps") as maps:
            if path not in maps.read():
                return None
    except OSError:
        return None
    return getattr(ctypes.CDLL(path), "omp_pause_resource_all", None)

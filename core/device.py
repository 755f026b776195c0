"""Device and precision choice: CUDA when present; float32 on CPU (bf16 matmuls are ~75x slower there)."""

from __future__ import annotations

import torch


def resolve_device(device: str | None = None) -> torch.device:
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but is not available on this machine")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"CUDA device {resolved.index} does not exist ({torch.cuda.device_count()} visible)")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r} (use cpu, cuda or cuda:N)")
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

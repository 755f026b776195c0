"""Rotary position embedding over interleaved pairs (2j, 2j+1) of each head, as v0.2 and S1 compute it:
a cos/sin table rounded to bfloat16 (the originals' buffer, even in float32 runs) and the rotation in
float32. A CPU float32 rotation goes to one C++ call (csrc/cpu_kernels.cpp's rope_rows: the same
products and sums, so the same bits) instead of torch's ~15 ops, ~6% of a prompt's prefill.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kernels import kernel_head_dim, uses_cpu_kernels


def rope_table(length: int, head_dim: int, base: float) -> Tensor:
    """[length, head_dim // 2, 2] (cos, sin) in bfloat16, computed on the CPU: row p depends only on p, so a
    longer table extends a shorter one."""
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, device="cpu")[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32, device="cpu"), freqs)
    rotation = torch.polar(torch.ones_like(angles), angles)
    return torch.stack([rotation.real, rotation.imag], dim=-1).to(torch.bfloat16)


def apply_rope(x: Tensor, table: Tensor) -> Tensor:
    """Rotate pairs (2j, 2j+1) of every head; x [B, S, H, D], table [S, D/2, 2] (or [B, S, D/2, 2] per row)."""
    if uses_cpu_kernels(x) and x.dim() == 4 and kernel_head_dim(x.size(-1)):
        return torch.ops.fishtts.rope_rows(x, table)
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    table = table.view(table.size(0) if table.dim() == 4 else 1, pairs.size(1), 1, pairs.size(3), 2)
    rotated = torch.stack(
        [
            pairs[..., 0] * table[..., 0] - pairs[..., 1] * table[..., 1],
            pairs[..., 1] * table[..., 0] + pairs[..., 0] * table[..., 1],
        ],
        dim=-1,
    )
    return rotated.flatten(3).type_as(x)

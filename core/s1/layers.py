"""Pieces shared by the Dual-AR model and the codec's transformers.

Numerics follow the original on purpose (SPEC §2.6, §3.2): RMSNorm computed in float32 (v0.2's,
core/lm/norm.py); RoPE over interleaved pairs with a cos/sin table rounded to bfloat16 (even in float32
runs; exact tables move logits by ~2.6e-2) and the rotation computed in float32.
Linears are `Linear`: a CPU decode step's few float32 rows take v0.2's autotuned float32 decode path
(core/lm/paths.py), anything else torch's own op, so prefill and full forwards round as before.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..lm.paths import Linear


def rope_table(length: int, head_dim: int, base: float) -> Tensor:
    """[length, head_dim // 2, 2] (cos, sin) in bfloat16 on the CPU; row p depends only on p (tables extend)."""
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, device="cpu")[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(length, dtype=torch.float32, device="cpu"), freqs)
    rotation = torch.polar(torch.ones_like(angles), angles)
    return torch.stack([rotation.real, rotation.imag], dim=-1).to(torch.bfloat16)


def apply_rope(x: Tensor, table: Tensor) -> Tensor:
    """Rotate pairs (2j, 2j+1) of every head; x [B, S, H, D], table [S, D/2, 2] (or [B, S, D/2, 2] per row)."""
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


class SwiGLU(nn.Module):
    """`w2(silu(w1 x) * w3 x)`, no biases (names as in the checkpoints)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = Linear(dim, hidden, bias=False)
        self.w3 = Linear(dim, hidden, bias=False)
        self.w2 = Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))

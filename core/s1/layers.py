"""Pieces shared by the Dual-AR model and the codec's transformers.

Numerics follow the original on purpose (SPEC §2.6, §3.2): RMSNorm computed in float32 (v0.2's,
core/lm/norm.py) and v0.2's RoPE (core/lm/rope.py: interleaved pairs, a cos/sin table rounded to bfloat16
even in float32 runs, where exact tables would move logits by ~2.6e-2; the rotation in float32).
Linears are `Linear`: a CPU decode step's few float32 rows take v0.2's autotuned float32 decode path
(core/lm/paths.py), anything else torch's own op, so prefill and full forwards round as before.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..lm.paths import Linear


class SwiGLU(nn.Module):
    """`w2(silu(w1 x) * w3 x)`, no biases (names as in the checkpoints)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = Linear(dim, hidden, bias=False)
        self.w3 = Linear(dim, hidden, bias=False)
        self.w2 = Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))

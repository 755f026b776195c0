"""RMSNorm, as the v0.2 and S1 models compute it; a CPU decode step's few rows go to one C++ call."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .kernels import few_rows


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if few_rows(x) and self.weight.dtype == torch.float32:
            return torch.ops.fishtts.rms_norm(x, self.weight, self.eps)
        xf = x.float()
        normed = xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight

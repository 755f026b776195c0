"""Causal convolutions and the small blocks built from them (SPEC §2.2-2.4, §2.7).

Weight norm is folded into plain weights at load time (load.py), so these hold `conv.weight`.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ...convs import causal_conv_transpose1d, conv1d, pad_time
from ...lm.kernels import cpu_kernels_available


class CausalConv(nn.Module):
    """Conv1d padded on the left by (effective kernel - stride), plus what makes the last frame whole."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel, stride=stride, dilation=dilation, groups=groups)
        self.stride = stride
        self.effective_kernel = (kernel - 1) * dilation + 1
        self.left_pad = self.effective_kernel - stride

    def extra_right_pad(self, length: int) -> int:
        frames = (length - self.effective_kernel + self.left_pad) / self.stride + 1
        ideal = (math.ceil(frames) - 1) * self.stride + (self.effective_kernel - self.left_pad)
        return ideal - length

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:  # (no right pad then) zeros on both ends, the right end's outputs dropped: no
            # padded copy of the input (~6% of a float32 decode)
            return conv1d(self.conv, x, padding=self.left_pad)[..., : x.shape[-1]]
        return conv1d(self.conv, pad_time(x, self.left_pad, self.extra_right_pad(x.shape[-1])))


class CausalTransposedConv(nn.Module):
    """ConvTranspose1d with its last (kernel - stride) output samples dropped (computed as phases of a
    conv: convs.causal_conv_transpose1d)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(in_ch, out_ch, kernel, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        return causal_conv_transpose1d(self.conv, x)


class Snake(nn.Module):
    """x + sin²(αx)/(α + 1e-9), α per channel (the descript-audio-codec activation, same op order)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        """`out`: where to write the result, rounded to its dtype (a stream's conv input buffer)."""
        inverse = (self.alpha + 1e-9).reciprocal()
        if _fused_snake_fits(x, self.alpha, out):
            # One pass in C++ (csrc/snake.cpp): the same float32 operations and sine, so the same bits as
            # below, where five passes over the decoder's largest tensors took ~0.8 s of a 10 s stream.
            out = _like(x) if out is None else out
            torch.ops.fishtts.snake_(x, self.alpha.reshape(-1), inverse.reshape(-1), out)
            return out
        # In place after the first product: one new tensor instead of five (the decoder's largest are
        # ~50 MB a second of audio); the same operations on the same values, so the same bits. Computed in
        # x's dtype, then rounded into an `out` of another (ops writing a bfloat16 `out` ran ~15x slower).
        same = out is not None and out.dtype == x.dtype
        y = torch.mul(self.alpha, x, out=out if same else None)
        y = y.sin_().pow_(2).mul_(inverse).add_(x)
        return y if out is None or same else out.copy_(y)


def _fused_snake_fits(x: Tensor, alpha: Tensor, out: Tensor | None) -> bool:
    """Whether csrc/snake.cpp computes this Snake: float32 x [B, C, T] on the CPU with the channels or the
    time steps at unit stride in x and out (float32 or bfloat16), no gradient wanted, the kernels built with
    MKL's sine (torch's)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or alpha.dtype != torch.float32 or x.dim() != 3:
        return False
    if out is not None and (out.shape != x.shape or out.dtype not in (torch.float32, torch.bfloat16)):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or alpha.requires_grad):
        return False
    target = x if out is None else out
    if not (x.stride(1) == 1 == target.stride(1) or x.stride(2) == 1 == target.stride(2)):
        return False
    return fused_snake_available()


def _like(x: Tensor) -> Tensor:
    """An empty tensor of x's shape, with x's unit-stride dimension (a slice of a time-major buffer is not
    dense, and empty_like would lay it out channel-major)."""
    batch, channels, steps = x.shape
    if x.stride(1) == 1:
        return x.new_empty(batch, steps, channels).transpose(1, 2)
    return x.new_empty(batch, channels, steps)


def fused_snake_available() -> bool:
    return cpu_kernels_available() and _mkl_sine()


@functools.cache
def _mkl_sine() -> bool:
    """Whether the built kernels found torch's MKL sine (asked once: Snake runs ~30 times a chunk)."""
    return torch.ops.fishtts.snake_available()


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake(channels),
            CausalConv(channels, channels, 7, dilation=dilation),
            Snake(channels),
            CausalConv(channels, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        return x[..., : y.shape[-1]] + y  # causal padding keeps lengths equal; trim defensively like the original


class ConvNeXtBlock(nn.Module):
    """Depth-wise causal conv → LayerNorm → Linear ×4 → GELU → Linear → ×γ, plus the input."""

    def __init__(self, dim: int, kernel: int = 7, mlp_ratio: float = 4.0):
        super().__init__()
        self.dwconv = CausalConv(dim, dim, kernel, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, int(mlp_ratio * dim))
        self.pwconv2 = nn.Linear(int(mlp_ratio * dim), dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.finish(x, self.dwconv(x))

    def finish(self, x: Tensor, convolved: Tensor) -> Tensor:
        """Everything after the depth-wise conv (per time step), given its output."""
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(convolved.permute(0, 2, 1)))))
        return x + (self.gamma * y).permute(0, 2, 1)

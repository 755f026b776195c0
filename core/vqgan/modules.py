"""VQGAN building blocks (spec §1.2): ConvDownSampler, the WN gated conv stack, HiFi-GAN V1.

Weight norm is folded into plain conv weights at load time (see load.py), so every conv here
is a plain nn.Conv1d / nn.ConvTranspose1d. Convs that are weight-normed in the checkpoint are
tagged with `weight_normed(...)` so the loader knows which keys come as (g, v) pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..convs import compute_dtype, conv1d, conv_transpose1d
from .config import DownsampleConfig, GeneratorConfig, WNConfig

LRELU_SLOPE = 0.1
POST_SLOPE = 0.01  # the generator's last activation uses the default slope, not 0.1 (QUIRKS 2)


def weight_normed(conv: nn.Module) -> nn.Module:
    """Mark a conv whose checkpoint weight is stored as weight-norm g / v."""
    conv.weight_normed = True
    return conv


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of a [B, C, T] tensor."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ConvDownSampler(nn.Module):
    """Strided conv -> channel LayerNorm -> GELU, per stage; length L -> ceil(L / stride)."""

    def __init__(self, c: DownsampleConfig):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Sequential(
                nn.Conv1d(c_in, c_out, k, stride=s, padding=(k - 1) // 2),
                ChannelLayerNorm(c_out, eps=1e-5),
                nn.GELU(),
            )
            for c_in, c_out, k, s in zip(c.dims[:-1], c.dims[1:], c.kernel_sizes, c.strides)
        )

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = conv(x)
        return x


class WN(nn.Module):
    """Non-causal WaveNet-style stack of gated dilated convs (VITS "WN"), no conditioning."""

    def __init__(self, c: WNConfig):
        super().__init__()
        h, k = c.hidden_channels, c.kernel_size
        self.hidden_channels = h
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        for i in range(c.n_layers):
            d = c.dilation_rate**i
            self.in_layers.append(weight_normed(nn.Conv1d(h, 2 * h, k, dilation=d, padding=(k * d - d) // 2)))
            # The last layer only feeds the skip sum, so it has half the outputs.
            out = 2 * h if i < c.n_layers - 1 else h
            self.res_skip_layers.append(weight_normed(nn.Conv1d(h, out, 1)))
        self.out_layer = nn.Conv1d(h, c.out_channels, 1) if c.out_channels else None

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x [B, H, T]; mask [B, 1, T] or None for all-ones (skips the multiplies)."""
        h = self.hidden_channels
        last = len(self.in_layers) - 1
        skip = None
        for i, (in_layer, res_skip) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            a = in_layer(x)
            acts = torch.tanh(a[:, :h]) * torch.sigmoid(a[:, h:])
            rs = res_skip(acts)
            if i < last:
                x = x + rs[:, :h]
                if mask is not None:
                    x = x * mask
                rs = rs[:, h:]
            skip = rs if skip is None else skip + rs
        if mask is not None:
            skip = skip * mask
        return self.out_layer(skip) if self.out_layer is not None else skip


class ResBlock1(nn.Module):
    """HiFi-GAN ResBlock type 1: pairs of (dilated conv, conv) with residual adds."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        k = kernel_size
        self.convs1 = nn.ModuleList(
            weight_normed(nn.Conv1d(channels, channels, k, dilation=d, padding=(k * d - d) // 2)) for d in dilations
        )
        self.convs2 = nn.ModuleList(
            weight_normed(nn.Conv1d(channels, channels, k, padding=(k - 1) // 2)) for _ in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            # Between c1 and c2 the activations stay in the convs' compute dtype: a leaky ReLU of bfloat16
            # values rounds once, as the float32 one did before c2 rounded its input, so the same bits
            # with two conversions fewer (~4% of a bfloat16 decode). The residual sum stays float32.
            xt = conv1d(c1, F.leaky_relu(x, LRELU_SLOPE), out_dtype=compute_dtype(c1))
            x = conv1d(c2, F.leaky_relu_(xt, LRELU_SLOPE), out_dtype=x.dtype).add_(x)
        return x


class Generator(nn.Module):
    """HiFi-GAN V1 generator: mel [B, n_mels, M] -> waveform [B, 1, M * prod(upsample_rates)]."""

    def __init__(self, c: GeneratorConfig):
        super().__init__()
        ch = c.upsample_initial_channel
        self.num_kernels = len(c.resblock_kernel_sizes)
        self.conv_pre = weight_normed(nn.Conv1d(c.initial_channel, ch, 7, padding=3))
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (u, k) in enumerate(zip(c.upsample_rates, c.upsample_kernel_sizes)):
            c_in, c_out = ch // 2**i, ch // 2 ** (i + 1)
            self.ups.append(weight_normed(nn.ConvTranspose1d(c_in, c_out, k, stride=u, padding=(k - u) // 2)))
            for rk, rd in zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes):
                self.resblocks.append(ResBlock1(c_out, rk, tuple(rd)))
        self.conv_post = weight_normed(nn.Conv1d(c_out, 1, 7, padding=3))

    def forward(self, x: Tensor) -> Tensor:
        x = conv1d(self.conv_pre, x)
        n = self.num_kernels
        for i, up in enumerate(self.ups):
            x = conv_transpose1d(up, F.leaky_relu(x, LRELU_SLOPE))
            xs = self.resblocks[i * n](x)
            for j in range(1, n):
                xs = xs.add_(self.resblocks[i * n + j](x))
            x = xs.div_(n)
        x = conv1d(self.conv_post, F.leaky_relu_(x, POST_SLOPE))
        return torch.tanh_(x)

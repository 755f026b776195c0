"""The VQGAN decoder's two networks run on a stream, each layer once per sample, with state between calls:
the WN stack (code features -> mel, `WNStream`) and HiFi-GAN (mel -> audio, `GeneratorStream`).

Both are non-causal, so each layer holds its output back until the inputs to its right have arrived: a
conv keeps its last 2 * padding inputs, a transposed conv its last inputs that still reach new outputs, a
residual or skip sum the inputs its other side has not caught up with. Nothing is recomputed (the chunked
decode before this redid ~50-100% of each chunk's audio and ~4x its mel as context), and the outputs
equal the networks' on the whole input up to float rounding (the same sums over other lengths).
`wn_lag_frames` and `generator_lag_samples` are how far each output trails its input.

What a layer keeps between pushes is a copy (a few samples), never a view: a view keeps its whole tensor
alive, so a sentence decoded in one push would hold every layer's output at once (gigabytes, faulted in
afresh for each request: the generator ran 3x slower inside the server). In place where the tensor is a
conv's fresh output, as modules.Generator does, for the same reason.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..convs import compute_dtype, conv1d, conv_transpose1d, join_time
from .config import GeneratorConfig, WNConfig
from .modules import LRELU_SLOPE, POST_SLOPE, WN, Generator, ResBlock1


def _resblock_lag(kernel_size: int, dilations) -> int:
    """Samples a ResBlock1's output trails its input: both convs of each pair wait for their padding."""
    return sum((kernel_size - 1) // 2 * d + (kernel_size - 1) // 2 for d in dilations)


def wn_lag_frames(config: WNConfig) -> int:
    """Frames the WN stream's output trails its input: each layer's dilated conv waits for its padding."""
    return sum((config.kernel_size - 1) // 2 * config.dilation_rate**i for i in range(config.n_layers))


def generator_lag_samples(config: GeneratorConfig) -> int:
    """Output samples the streamed audio trails the mel fed in (all of it once the stream is final)."""
    lag = 3  # conv_pre: kernel 7, in mel frames
    for u, k in zip(config.upsample_rates, config.upsample_kernel_sizes):
        lag = lag * u + (k - u) // 2  # a transposed conv holds back its padding
        lag += max(
            _resblock_lag(rk, rd) for rk, rd in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes)
        )
    return lag + 3  # conv_post: kernel 7


def _no_frames(x: Tensor, channels: int) -> Tensor:
    """An output of `channels` channels and no frames yet (a push may make none)."""
    return x.new_zeros(*x.shape[:-2], channels, 0)


class _Conv:
    """A stride-1 conv with symmetric zero padding: an output leaves once its right context is in."""

    def __init__(self, conv: nn.Conv1d):
        (k,), (d,), (self.pad,) = conv.kernel_size, conv.dilation, conv.padding
        if conv.stride != (1,) or 2 * self.pad != (k - 1) * d:
            raise ValueError("streaming needs stride-1 convs padded evenly on both sides")
        self.conv = conv
        self.held: Tensor | None = None  # inputs from max(0, next output - pad) on
        self.next = 0  # the next output's position

    def __call__(self, x: Tensor, final: bool, out_dtype: torch.dtype | None = None) -> Tensor:
        """The outputs now final, in `out_dtype` (default: x's; `conv1d`)."""
        joined = x if self.held is None else join_time(self.held, x)
        held_from = max(0, self.next - self.pad)
        # The conv pads both ends with zeros: right at the sequence's true ends, and otherwise its outputs
        # there are dropped (a few of them, cheaper than copying the input into a padded buffer).
        start = self.next - held_from
        end = joined.shape[-1] - (0 if final else self.pad)
        if end <= start:
            self.held = joined
            return _no_frames(x, self.conv.out_channels).to(out_dtype or x.dtype)
        self.next += end - start
        self.held = joined[..., max(0, self.next - self.pad) - held_from :].clone()
        y = conv1d(self.conv, joined, out_dtype)
        return y[..., start:end]


class _TransposedConv:
    """A transposed conv: output q of the unpadded result is complete once inputs up to q // stride are in."""

    def __init__(self, conv: nn.ConvTranspose1d):
        (self.stride,), (self.kernel,), (self.pad,) = conv.stride, conv.kernel_size, conv.padding
        self.conv = conv
        self.keep = math.ceil(self.kernel / self.stride) - 1  # earlier inputs that still reach new outputs
        self.held: Tensor | None = None
        self.inputs = 0  # inputs seen
        self.next = self.pad  # next unpadded output position to return

    def __call__(self, x: Tensor, final: bool) -> Tensor:
        joined = x if self.held is None else join_time(self.held, x)
        first = self.inputs + x.shape[-1] - joined.shape[-1]  # input index of joined[..., 0]
        self.inputs += x.shape[-1]
        self.held = joined[..., joined.shape[-1] - min(self.keep, joined.shape[-1]) :].clone()
        u = self.stride
        end = (self.inputs - 1) * u + self.kernel - self.pad if final else self.inputs * u
        if end <= self.next:
            return _no_frames(x, self.conv.out_channels)
        y = conv_transpose1d(self.conv, joined, padding=0)
        out = y[..., self.next - first * u : end - first * u]
        self.next = end
        return out


class _Aligned:
    """Inputs that arrive ahead of the stream they are combined with, held until it catches up."""

    def __init__(self):
        self.held: Tensor | None = None

    def add(self, x: Tensor) -> None:
        self.held = x if self.held is None or self.held.shape[-1] == 0 else join_time(self.held, x)

    def take(self, n: int) -> Tensor:
        taken, self.held = self.held[..., :n], self.held[..., n:].clone()
        return taken


class _ResBlock:
    def __init__(self, block: ResBlock1):
        self.pairs = [(_Conv(c1), _Conv(c2), _Aligned()) for c1, c2 in zip(block.convs1, block.convs2)]

    def __call__(self, x: Tensor, final: bool) -> Tensor:
        for c1, c2, residual in self.pairs:  # as ResBlock1.forward
            residual.add(x)
            xt = c1(F.leaky_relu(x, LRELU_SLOPE), final, out_dtype=compute_dtype(c1.conv))
            xt = c2(F.leaky_relu_(xt, LRELU_SLOPE), final, out_dtype=x.dtype)
            x = xt.add_(residual.take(xt.shape[-1]))
        return x


def _pointwise(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """A 1x1 conv, also of no frames (a push may make none yet)."""
    return conv(x) if x.shape[-1] else _no_frames(x, conv.out_channels)


class WNStream:
    """`push(features, final)` -> the output frames of modules.WN (without a mask) that are now final."""

    def __init__(self, wn: WN):
        self.hidden = wn.hidden_channels
        self.in_layers = [_Conv(conv) for conv in wn.in_layers]
        self.res_skip_layers = list(wn.res_skip_layers)  # 1x1 convs: per frame, nothing to wait for
        self.inputs = [_Aligned() for _ in wn.in_layers[:-1]]  # each layer's input, for its residual add
        self.skips = [_Aligned() for _ in wn.in_layers]  # each layer's skip output, summed in step
        self.out_layer = wn.out_layer

    def push(self, x: Tensor, final: bool = False) -> Tensor:
        h, last = self.hidden, len(self.in_layers) - 1
        for i, (in_layer, res_skip, skip) in enumerate(zip(self.in_layers, self.res_skip_layers, self.skips)):
            a = in_layer(x, final)
            rs = _pointwise(res_skip, torch.tanh(a[:, :h]) * torch.sigmoid(a[:, h:]))
            if i < last:  # (the last layer only feeds the skip sum)
                self.inputs[i].add(x)
                x = self.inputs[i].take(rs.shape[-1]) + rs[:, :h]
                rs = rs[:, h:]
            skip.add(rs)
        ready = min(skip.held.shape[-1] for skip in self.skips)
        total = self.skips[0].take(ready)
        for skip in self.skips[1:]:
            total = total + skip.take(ready)  # in the order WN.forward sums them
        return _pointwise(self.out_layer, total) if self.out_layer is not None else total


class GeneratorStream:
    """`push(mel frames, final)` -> the audio samples that are now final, [1, 1, n]."""

    def __init__(self, generator: Generator):
        self.conv_pre = _Conv(generator.conv_pre)
        self.ups = [_TransposedConv(up) for up in generator.ups]
        n = generator.num_kernels
        self.resblocks = [
            [_ResBlock(b) for b in generator.resblocks[i * n : (i + 1) * n]] for i in range(len(self.ups))
        ]
        self.branches = [[_Aligned() for _ in range(n)] for _ in self.ups]  # resblock outputs, summed in step
        self.conv_post = _Conv(generator.conv_post)

    def push(self, mel: Tensor, final: bool = False) -> Tensor:
        x = self.conv_pre(mel, final)
        for up, resblocks, branches in zip(self.ups, self.resblocks, self.branches):
            x = up(F.leaky_relu(x, LRELU_SLOPE), final)
            for block, branch in zip(resblocks, branches):
                branch.add(block(x, final))
            ready = min(branch.held.shape[-1] for branch in branches)
            # (the branches hold their resblocks' outputs, referenced nowhere else: summed in place, in the
            # order Generator.forward sums them)
            x = branches[0].take(ready)
            for branch in branches[1:]:
                x.add_(branch.take(ready))
            x.div_(len(branches))
        return torch.tanh_(self.conv_post(F.leaky_relu_(x, POST_SLOPE), final))

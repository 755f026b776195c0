"""Streaming codec decode: code frames in, audio out as they arrive.

The decode path is causal end to end (causal convs, causal transposed convs, window-limited causal
attention), so it can run chunk by chunk with a little state: each conv keeps its last
(kernel - stride) input samples, each transposed conv its last input steps, and the post-module
transformer the keys/values of its last `window - 1` frames. The chunks concatenated equal the
one-shot decode up to float rounding (the arithmetic is the same, only GEMM sizes differ).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...convs import conv1d, conv_transpose1d, join_time
from .convs import CausalConv, CausalTransposedConv, ConvNeXtBlock, ResidualUnit, Snake
from .model import Codec, DecoderBlock


class StreamingDecoder:
    def __init__(self, codec: Codec):
        self.codec = codec
        self.conv_state: dict[int, Tensor] = {}
        self.attention_past: list = [None] * len(codec.quantizer.post_module.layers)
        self.frames = 0

    @torch.inference_mode()
    def push(self, codes: Tensor) -> Tensor:
        """The next frames' codes [B, 1 + n, T] (or [1 + n, T]) → their audio [B, 1, T * frame_length]."""
        codes = self.codec.check_codes(codes).to(self.codec.decoder.model[0].conv.weight.device)
        quantizer = self.codec.quantizer
        semantic = codes[:, :1].clamp(max=quantizer.semantic_quantizer.codebook_size - 1)
        residual = codes[:, 1:].clamp(max=quantizer.quantizer.codebook_size - 1)
        z = quantizer.semantic_quantizer.decode(semantic) + quantizer.quantizer.decode(residual)
        z = quantizer.post_module.forward_stream(z, self.attention_past, self.frames)
        audio = self.run(self.codec.decoder.model, self.run(quantizer.upsample, z))
        self.frames += codes.size(-1)
        return audio

    def with_history(self, module: nn.Module, x: Tensor, keep: int) -> Tensor:
        """x preceded by the module's last `keep` input steps (zeros at the start, like causal padding)."""
        past = self.conv_state.get(id(module))
        if past is None:
            past = x.new_zeros(*x.shape[:-1], keep)
        joined = join_time(past, x)
        self.conv_state[id(module)] = joined[..., joined.size(-1) - keep :]
        return joined

    def conv(self, module: CausalConv, x: Tensor) -> Tensor:
        if module.stride != 1:
            raise ValueError("streaming supports stride-1 causal convs only (the decode path has no others)")
        return conv1d(module.conv, self.with_history(module, x, module.left_pad))

    def transposed_conv(self, module: CausalTransposedConv, x: Tensor) -> Tensor:
        stride, kernel = module.conv.stride[0], module.conv.kernel_size[0]
        context = math.ceil(kernel / stride) - 1  # earlier input steps that reach this chunk's outputs
        y = conv_transpose1d(module.conv, self.with_history(module, x, context))
        return y[..., context * stride : (context + x.size(-1)) * stride]

    def run(self, module: nn.Module, x: Tensor) -> Tensor:
        if isinstance(module, nn.Sequential):
            for child in module:
                x = self.run(child, x)
            return x
        if isinstance(module, CausalConv):
            return self.conv(module, x)
        if isinstance(module, CausalTransposedConv):
            return self.transposed_conv(module, x)
        if isinstance(module, ResidualUnit):
            return x + self.run(module.block, x)
        if isinstance(module, ConvNeXtBlock):
            return module.finish(x, self.conv(module.dwconv, x))
        if isinstance(module, DecoderBlock):
            return self.run(module.block, x)
        if isinstance(module, (Snake, nn.Tanh, nn.Identity)):
            return module(x)
        raise TypeError(f"no streaming rule for {type(module).__name__}")

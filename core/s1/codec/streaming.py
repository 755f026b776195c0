"""The codec chunk by chunk: code frames in, audio out (decode); audio in, codes out (encode).

Both paths are causal end to end (causal convs, causal transposed convs, window-limited causal
attention), so they can run chunk by chunk with a little state: each conv keeps its last
(kernel - stride) input samples, each transposed conv its last input steps, and each transformer the
keys/values of its last `window - 1` steps. The chunks concatenated equal the one-shot result up to
float rounding (the arithmetic is the same, only GEMM sizes differ); for the encode, whose codes are
nearest-codebook choices, that rounding could flip a near tie.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...convs import causal_conv_transpose1d, compute_dtype, conv1d, phase_taps
from .convs import CausalConv, CausalTransposedConv, ConvNeXtBlock, ResidualUnit, Snake
from .model import Codec, DecoderBlock, EncoderBlock
from .transformer import WindowLimitedTransformer


class CausalStream:
    """The state that lets the codec's causal modules run chunk by chunk (`run`), per module."""

    def __init__(self, codec: Codec):
        self.codec = codec
        self.conv_state: dict[int, Tensor] = {}
        self.attention: dict[int, tuple[list, int]] = {}  # a transformer's per-layer past and its next position

    def with_history(self, module: nn.Module, x: Tensor, keep: int, snake: Snake | None = None) -> Tensor:
        """x, or snake(x), preceded by the module's last `keep` input steps (zeros at the start, like causal
        padding), in one buffer of the module's conv's compute dtype: the snake writes into it and x is
        rounded into it once (no join, no second conversion in the conv; the same values)."""
        if keep == 0:  # (a 1x1 conv: nothing to join)
            return x if snake is None else snake(x)
        past = self.conv_state.get(id(module))
        *lead, channels, steps = x.shape
        dtype = compute_dtype(module.conv)
        joined = x.new_empty(*lead, keep + steps, channels, dtype=dtype).transpose(-1, -2)  # (time-major)
        if past is None:
            joined[..., :keep].zero_()
        else:
            joined[..., :keep].copy_(past)
        if snake is None:
            joined[..., keep:].copy_(x)
        else:
            snake(x, out=joined[..., keep:])
        self.conv_state[id(module)] = joined[..., joined.size(-1) - keep :]
        return joined

    def conv(self, module: CausalConv, x: Tensor, snake: Snake | None = None) -> Tensor:
        """module(x), or module(snake(x))."""
        # (a whole number of strides per chunk: then no chunk needs the right pad that makes a last frame whole)
        if x.size(-1) % module.stride:
            raise ValueError(f"a chunk of {x.size(-1)} steps is not a whole number of the conv's stride")
        return conv1d(module.conv, self.with_history(module, x, module.left_pad, snake), out_dtype=x.dtype)

    def transformer(self, module: WindowLimitedTransformer, x: Tensor) -> Tensor:
        past, offset = self.attention.get(id(module), ([None] * len(module.layers), 0))
        y = module.forward_stream(x, past, offset)
        self.attention[id(module)] = (past, offset + x.size(-1))
        return y

    def transposed_conv(self, module: CausalTransposedConv, x: Tensor, snake: Snake | None = None) -> Tensor:
        context = phase_taps(module.conv) - 1  # earlier input steps that reach this chunk's outputs
        joined = self.with_history(module, x, context, snake)
        return causal_conv_transpose1d(module.conv, joined, with_history=True, out_dtype=x.dtype)

    def run(self, module: nn.Module, x: Tensor) -> Tensor:
        if isinstance(module, nn.Sequential):
            children = list(module)
            i = 0
            while i < len(children):
                child, after = children[i], children[i + 1] if i + 1 < len(children) else None
                if isinstance(child, Snake) and isinstance(after, CausalConv):  # (a snake, then its conv)
                    x, i = self.conv(after, x, snake=child), i + 2
                elif isinstance(child, Snake) and isinstance(after, CausalTransposedConv):
                    x, i = self.transposed_conv(after, x, snake=child), i + 2
                else:
                    x, i = self.run(child, x), i + 1
            return x
        if isinstance(module, CausalConv):
            return self.conv(module, x)
        if isinstance(module, CausalTransposedConv):
            return self.transposed_conv(module, x)
        if isinstance(module, ResidualUnit):
            return x + self.run(module.block, x)
        if isinstance(module, ConvNeXtBlock):
            return module.finish(x, self.conv(module.dwconv, x))
        if isinstance(module, (EncoderBlock, DecoderBlock)):
            return self.run(module.block, x)
        if isinstance(module, WindowLimitedTransformer):
            return self.transformer(module, x)
        if isinstance(module, (Snake, nn.Tanh, nn.Identity)):
            return module(x)
        raise TypeError(f"no streaming rule for {type(module).__name__}")


class StreamingDecoder(CausalStream):
    @torch.inference_mode()
    def push(self, codes: Tensor) -> Tensor:
        """The next frames' codes [B, 1 + n, T] (or [1 + n, T]) → their audio [B, 1, T * frame_length]."""
        codes = self.codec.check_codes(codes).to(self.codec.device)
        quantizer = self.codec.quantizer
        z = self.run(quantizer.post_module, quantizer.embed(codes))
        return self.run(self.codec.decoder.model, self.run(quantizer.upsample, z))


class StreamingEncoder(CausalStream):
    @torch.inference_mode()
    def push(self, audio: Tensor) -> Tensor:
        """The next whole frames of audio [B, 1, T * frame_length] → their codes [B, 1 + n, T] (the last
        chunk padded as `Codec.pad_to_frames` pads the whole clip)."""
        if audio.dim() != 3 or audio.size(1) != 1 or audio.size(-1) % self.codec.frame_length:
            raise ValueError(f"audio chunks must be [B, 1, whole frames], got {tuple(audio.shape)}")
        audio = audio.to(self.codec.decoder.model[0].conv.weight)
        quantizer = self.codec.quantizer
        latent = self.run(self.codec.encoder.block, audio)
        return quantizer.quantize(self.run(quantizer.pre_module, self.run(quantizer.downsample, latent)))

"""The modded DAC (SPEC §2): causal conv encoder → down-sampled semantic + residual VQ → causal conv decoder.

Module names follow `codec.pth`. `decoder_transformer_layers` of the original config has no effect
there (built, never used, no weights), so it does not exist here.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

from ...convs import set_compute_dtype, set_packed_weights
from ..config import CodecConfig
from .convs import CausalConv, CausalTransposedConv, ResidualUnit, Snake
from .quantizer import DownsampleQuantizer
from .transformer import WindowLimitedTransformer


class EncoderBlock(nn.Module):
    def __init__(self, width: int, stride: int, transformer: WindowLimitedTransformer | None):
        super().__init__()
        half = width // 2
        self.block = nn.Sequential(
            ResidualUnit(half, 1),
            ResidualUnit(half, 3),
            ResidualUnit(half, 9),
            Snake(half),
            CausalConv(half, width, 2 * stride, stride=stride),
            transformer if transformer is not None else nn.Identity(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class DecoderBlock(nn.Module):
    def __init__(self, in_width: int, out_width: int, stride: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake(in_width),
            CausalTransposedConv(in_width, out_width, 2 * stride, stride=stride),
            ResidualUnit(out_width, 1),
            ResidualUnit(out_width, 3),
            ResidualUnit(out_width, 9),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class Encoder(nn.Module):
    def __init__(self, config: CodecConfig):
        super().__init__()
        width = config.encoder_dim
        blocks: list[nn.Module] = [CausalConv(1, width, 7)]
        for stride, n_layer in zip(config.encoder_rates, config.encoder_transformer_layers, strict=True):
            width *= 2
            transformer = WindowLimitedTransformer(config.encoder_transformer(width, n_layer)) if n_layer else None
            blocks.append(EncoderBlock(width, stride, transformer))
        blocks += [Snake(width), CausalConv(width, config.latent_dim, 3)]
        self.block = nn.Sequential(*blocks)

    def forward(self, audio: Tensor) -> Tensor:
        return self.block(audio)


class Decoder(nn.Module):
    def __init__(self, config: CodecConfig):
        super().__init__()
        width = config.decoder_dim
        layers: list[nn.Module] = [CausalConv(config.latent_dim, width, 7)]
        for i, stride in enumerate(config.decoder_rates):
            layers.append(DecoderBlock(width // 2**i, width // 2 ** (i + 1), stride))
        out_width = width // 2 ** len(config.decoder_rates)
        layers += [Snake(out_width), CausalConv(out_width, 1, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.model(z)


class Codec(nn.Module):
    def __init__(self, config: CodecConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = DownsampleQuantizer(config)
        self.decoder = Decoder(config)

    @property
    def decode_dtype(self) -> torch.dtype:
        """What the decoder's convs compute in on CPU: float32, or bfloat16 (their inputs and weights
        rounded, float32 between them, as the VQGAN's: convs.conv1d). Encode stays float32."""
        return self.__dict__.get("_decode_dtype", torch.float32)

    @decode_dtype.setter
    def decode_dtype(self, dtype: torch.dtype) -> None:
        set_compute_dtype(self.decoder, dtype)
        self.__dict__["_decode_dtype"] = dtype

    @property
    def decode_precision(self) -> str:
        """decode_dtype's name: "float32" or "bfloat16"."""
        return str(self.decode_dtype).removeprefix("torch.")

    @property
    def device(self) -> torch.device:
        return self.decoder.model[0].conv.weight.device

    @property
    def packed_convs(self) -> bool:
        """Whether decode's convs run on weights packed once for oneDNN (convs.conv1d; chosen by measuring,
        codec/packing.py): only speed changes, not a result beyond float rounding."""
        return self.__dict__.get("_packed_convs", False)

    @packed_convs.setter
    def packed_convs(self, packed: bool) -> None:
        set_packed_weights(self.quantizer.upsample, packed)
        set_packed_weights(self.decoder, packed)
        self.__dict__["_packed_convs"] = packed

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def frame_length(self) -> int:
        return self.config.frame_length

    def pad_to_frames(self, audio: Tensor) -> Tensor:
        if audio.dim() == 2:
            audio = audio.unsqueeze(1)
        if audio.dim() != 3 or audio.size(1) != 1:
            raise ValueError(f"audio must be [B, 1, N] or [B, N], got {tuple(audio.shape)}")
        length = audio.size(-1)
        if length == 0:
            raise ValueError("audio is empty")
        return nn.functional.pad(audio, (0, math.ceil(length / self.frame_length) * self.frame_length - length))

    @torch.inference_mode()
    def encode(self, audio: Tensor) -> Tensor:
        """Mono audio at `sample_rate` [B, 1, N] → codes [B, 1 + n_codebooks, ceil(N / frame_length)]."""
        audio = self.pad_to_frames(audio).to(self.decoder.model[0].conv.weight)
        return self.quantizer.encode(self.encoder(audio))

    def check_codes(self, codes: Tensor) -> Tensor:
        if codes.dim() == 2:
            codes = codes.unsqueeze(0)
        if codes.dim() != 3 or codes.size(1) != self.config.num_codebooks:
            raise ValueError(f"codes must be [B, {self.config.num_codebooks}, T], got {tuple(codes.shape)}")
        if codes.size(-1) == 0:
            raise ValueError("codes hold no frames")
        if codes.is_floating_point() or bool((codes < 0).any()):
            raise ValueError("codes must be non-negative integers")
        return codes.long()

    @torch.inference_mode()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes [B, 1 + n, T] (or [1 + n, T]) → audio [B, 1, T * frame_length] in [-1, 1]."""
        codes = self.check_codes(codes).to(self.device)
        return self.decoder(self.quantizer.decode(codes))

"""VQGAN v1: audio <-> 4 rows of discrete codes at 21.5 Hz (spec §1.3, §1.4)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..convs import set_compute_dtype, set_packed_weights
from .config import VQGANConfig
from .mel import LogMelSpectrogram
from .modules import WN, ConvDownSampler, Generator
from .quantizer import VQEncoder


class VQGAN(nn.Module):
    def __init__(self, config: VQGANConfig):
        super().__init__()
        self.config = config
        self.mel_transform = LogMelSpectrogram(config.mel)
        self.downsample = ConvDownSampler(config.downsample)
        self.mel_encoder = WN(config.mel_encoder)
        self.vq_encoder = VQEncoder(config.vq)
        self.decoder = WN(config.decoder)
        self.generator = Generator(config.generator)
        self.decode_dtype = torch.float32
        self.packed_convs = False

    @property
    def decode_dtype(self) -> torch.dtype:
        """What the generator's convs compute in: float32, or bfloat16 (AMX / AVX512-BF16 on CPU) with
        float32 between them (modules.conv1d). The WN decoder (~2% of decode) and encode stay float32."""
        return self._decode_dtype

    @decode_dtype.setter
    def decode_dtype(self, dtype: torch.dtype) -> None:
        set_compute_dtype(self.generator, dtype)
        self._decode_dtype = dtype

    @property
    def packed_convs(self) -> bool:
        """Whether decode's convs run on weights packed once for oneDNN (convs.conv1d; chosen by measuring,
        packing.py): only speed changes, never a result."""
        return self._packed_convs

    @packed_convs.setter
    def packed_convs(self, packed: bool) -> None:
        set_packed_weights(self.decoder, packed)
        set_packed_weights(self.generator, packed)
        self._packed_convs = packed

    @property
    def decode_precision(self) -> str:
        """decode_dtype's name: "float32" or "bfloat16" (what `--vqgan-precision` resolved to)."""
        return str(self.decode_dtype).removeprefix("torch.")

    @property
    def device(self) -> torch.device:
        return self.vq_encoder.conv_in.weight.device

    def feature_mask(self, num_samples: int, num_frames: int) -> Tensor:
        """[1, 1, T] float mask: 1 for the floor(N / 1024) frames fully covered by audio."""
        valid = num_samples // self.config.samples_per_code
        return (torch.arange(num_frames, device=self.device) < valid).float()[None, None]

    @torch.inference_mode()
    def encode(self, audio: Tensor) -> Tensor:
        """audio [1, 1, N] (or [N]) float32 at 22050 Hz -> codes [groups, ceil(floor(N/256)/4)] int64."""
        audio = self._check_audio(audio)
        mel = self.mel_transform(audio)
        features = self.downsample(mel)
        # Frames past floor(N/1024) are masked to 0 but still quantized (QUIRKS 4).
        mask = self.feature_mask(audio.shape[-1], features.shape[-1])
        return self.vq_encoder.encode(self.mel_encoder(features, mask))

    @torch.inference_mode()
    def decode(self, codes: Tensor | np.ndarray) -> Tensor:
        """codes [groups, T] of any integer dtype -> waveform [1, 1, 1024 * T] float32 in [-1, 1]."""
        return self.mel_to_audio(self.codes_to_mel(self.check_codes(codes)))

    def codes_to_mel(self, codes: Tensor) -> Tensor:
        """Checked codes [groups, T] -> mel [1, n_mels, 4T] float32 (the first half of decode)."""
        return self.decoder(self.codes_to_features(codes))  # all-ones mask: no multiplies

    def codes_to_features(self, codes: Tensor) -> Tensor:
        """Checked codes [groups, T] -> the WN decoder's input [1, C, 4T] (per code: nothing to wait for)."""
        x = self.vq_encoder.decode(codes)
        # Nearest-neighbour upsampling to the mel rate: each token repeated 4 times.
        return x.repeat_interleave(self.config.downsample.total_strides, dim=-1)

    def mel_to_audio(self, mel: Tensor) -> Tensor:
        """mel [1, n_mels, F] -> waveform [1, 1, 256 F] float32 (the second half of decode)."""
        return self.generator(mel)

    def _check_audio(self, audio: Tensor | np.ndarray) -> Tensor:
        audio = torch.as_tensor(audio)
        if not audio.is_floating_point():
            raise ValueError(f"audio must be floating point, got {audio.dtype}")
        if audio.dim() > 3 or audio.numel() != audio.shape[-1]:
            raise ValueError(f"audio must be mono with shape [1, 1, N] or [N], got {tuple(audio.shape)}")
        minimum = self.config.samples_per_code
        if audio.shape[-1] < minimum:
            raise ValueError(f"audio too short: {audio.shape[-1]} samples, need at least {minimum}")
        return audio.reshape(1, 1, -1).to(self.device, torch.float32)

    def check_codes(self, codes: Tensor | np.ndarray) -> Tensor:
        codes = torch.as_tensor(codes)
        groups, size = self.config.vq.codebook_groups, self.config.vq.codebook_size
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"codes must be integers, got {codes.dtype}")
        if codes.dim() != 2 or codes.shape[0] != groups or codes.shape[1] == 0:
            raise ValueError(f"codes must be of shape [{groups}, T] with T >= 1, got shape {tuple(codes.shape)}")
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"code value {bad} out of range: the codebooks have {size} entries (0..{size - 1})")
        return codes.to(self.device, torch.int64)

"""Log-mel front end of the VQGAN encoder (spec §1.1).

The window and the mel filterbank are buffers loaded from the checkpoint
(`mel_transform.spectrogram.window`, `mel_transform.mel_scale.fb`) so the features match
the original bit for bit; `hann_window` / `slaney_mel_filterbank` are the fallback for a
checkpoint without them (and the init values of a freshly built model).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import MelConfig


def hann_window(win_length: int) -> Tensor:
    return torch.hann_window(win_length, periodic=True, dtype=torch.float32)


def _hz_to_mel(f: Tensor) -> Tensor:
    # Slaney scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above.
    logstep = math.log(6.4) / 27.0
    return torch.where(f < 1000.0, 3.0 * f / 200.0, 15.0 + torch.log(f.clamp(min=1e-10) / 1000.0) / logstep)


def _mel_to_hz(m: Tensor) -> Tensor:
    logstep = math.log(6.4) / 27.0
    return torch.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * torch.exp(logstep * (m - 15.0)))


def slaney_mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> Tensor:
    """[n_fft // 2 + 1, n_mels] triangular filters, Slaney mel scale and area normalisation."""
    bin_freqs = torch.linspace(0.0, float(sample_rate // 2), n_fft // 2 + 1, dtype=torch.float64)
    mel_edges = torch.linspace(
        _hz_to_mel(torch.tensor(float(f_min), dtype=torch.float64)).item(),
        _hz_to_mel(torch.tensor(float(f_max), dtype=torch.float64)).item(),
        n_mels + 2,
        dtype=torch.float64,
    )
    hz_edges = _mel_to_hz(mel_edges)
    widths = hz_edges[1:] - hz_edges[:-1]
    slopes = hz_edges[None, :] - bin_freqs[:, None]  # [bins, n_mels + 2]
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    fb = torch.clamp(torch.minimum(down, up), min=0.0)
    fb = fb * (2.0 / (hz_edges[2:] - hz_edges[:-2]))[None, :]
    return fb.to(torch.float32)


class LogMelSpectrogram(nn.Module):
    def __init__(self, config: MelConfig):
        super().__init__()
        self.config = config
        c = config
        # Built on CPU even under a meta-device context: the loader may keep these values.
        with torch.device("cpu"):
            self.register_buffer("window", hann_window(c.win_length))
            self.register_buffer("fb", slaney_mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.f_max))

    def linear(self, audio: Tensor) -> Tensor:
        """[B, 1, N] or [B, N] -> magnitude spectrogram [B, n_fft // 2 + 1, floor(N / hop)]."""
        c = self.config
        if audio.dim() == 3:
            audio = audio.squeeze(1)
        pad_left, pad_right = (c.win_length - c.hop_length) // 2, (c.win_length - c.hop_length + 1) // 2
        audio = F.pad(audio.unsqueeze(1), (pad_left, pad_right), mode="reflect").squeeze(1)
        spec = torch.stft(
            audio,
            c.n_fft,
            hop_length=c.hop_length,
            win_length=c.win_length,
            window=self.window,
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        # sqrt(re² + im² + 1e-6): the epsilon sits inside the root, as in the original.
        return torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-6)

    def forward(self, audio: Tensor) -> Tensor:
        """[B, 1, N] float32 -> log-mel [B, n_mels, floor(N / hop)]."""
        spec = self.linear(audio)
        mel = torch.matmul(spec.transpose(-1, -2), self.fb).transpose(-1, -2)
        return torch.log(torch.clamp(mel, min=1e-5))

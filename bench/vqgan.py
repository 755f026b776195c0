"""VQGAN encode (audio -> codes) and decode (codes -> audio) time for a clip of given length."""

from __future__ import annotations

import torch

from core.vqgan.model import VQGAN

from .measure import median_runs, timed


def test_audio(seconds: float, sample_rate: int, seed: int = 0) -> torch.Tensor:
    """Quiet noise: the values do not change speed, the length does."""
    return 0.1 * torch.randn(int(seconds * sample_rate), generator=torch.Generator().manual_seed(seed))


def bench_vqgan(vqgan: VQGAN, seconds: float, runs: int) -> dict:
    cfg = vqgan.config
    device = vqgan.device
    audio = test_audio(seconds, cfg.sample_rate).to(device)
    frames = round(seconds * cfg.sample_rate / cfg.samples_per_code)  # 215 for 10 s
    codes = torch.randint(
        0, cfg.vq.codebook_size, (cfg.vq.codebook_groups, frames), generator=torch.Generator().manual_seed(0)
    ).to(device)

    def once():
        encode_s, _ = timed(lambda: vqgan.encode(audio), device)
        decode_s, _ = timed(lambda: vqgan.decode(codes), device)
        return dict(encode_s=encode_s, decode_s=decode_s)

    result = median_runs(once, runs)
    return dict(
        audio_s=seconds,
        codes=frames,
        encode_s=round(result["encode_s"], 3),
        decode_s=round(result["decode_s"], 3),
        decode_rtf=round(result["decode_s"] / seconds, 3),
    )

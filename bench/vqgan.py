"""VQGAN encode (audio -> codes) and decode (codes -> audio) time for a clip of given length; decode
also in bfloat16 (`--vqgan-precision bfloat16`) with its SNR against the float32 audio."""

from __future__ import annotations

import math

import torch

from core.vqgan.model import VQGAN

from .measure import median_runs, timed


def test_audio(seconds: float, sample_rate: int, seed: int = 0) -> torch.Tensor:
    """Quiet noise: the values do not change speed, the length does."""
    return 0.1 * torch.randn(int(seconds * sample_rate), generator=torch.Generator().manual_seed(seed))


def snr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    """10 log10(signal power / power of the difference)."""
    reference, other = reference.double().flatten(), other.double().flatten()
    noise = float(((other - reference) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((reference**2).sum()) / noise)


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

    chosen = vqgan.decode_dtype  # (the precision "auto" chose for the other parts, put back afterwards)
    try:
        vqgan.decode_dtype = torch.float32
        result = median_runs(once, runs)
        reference = vqgan.decode(codes)
        vqgan.decode_dtype = torch.bfloat16
        bf16 = median_runs(lambda: {"decode_bf16_s": timed(lambda: vqgan.decode(codes), device)[0]}, runs)
        snr = snr_db(reference, vqgan.decode(codes))
    finally:
        vqgan.decode_dtype = chosen
    return dict(
        audio_s=seconds,
        codes=frames,
        encode_s=round(result["encode_s"], 3),
        decode_s=round(result["decode_s"], 3),
        decode_rtf=round(result["decode_s"] / seconds, 3),
        decode_bf16_s=round(bf16["decode_bf16_s"], 3),
        bf16_speedup=round(result["decode_s"] / bf16["decode_bf16_s"], 2),
        bf16_snr_db=round(snr, 1),
    )

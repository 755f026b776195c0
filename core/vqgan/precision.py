"""The VQGAN's decode precision asked for as "auto" (the default): bfloat16 where it is measured at least
MIN_SPEEDUP times faster than float32 on this machine, else float32.

bfloat16 decode (modules.conv1d: the generator's convs round their input and weight, float32 in between)
is within 42 dB SNR of float32 audio on the official-size random VQGAN and 52 dB on the parity one,
above the 40 dB bar for using it unasked. Its speed depends on the CPU (an AMD EPYC with AVX512-BF16:
1.8x; an AVX2-only CPU emulates it, many times slower), so it is timed here on the model's own
generator, once per machine and generator shape, and kept in ~/.cache/fishtts/vqgan_precision.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import torch

from ..tuning import best_times, cpu_has_fast_bfloat16, measured_choice
from .model import VQGAN

log = logging.getLogger(__name__)

AUTO = "auto"
VQGAN_PRECISIONS = (AUTO, "float32", "bfloat16")  # of decode; encode is float32
DEFAULT_VQGAN_PRECISION = AUTO  # the CLI's, the server's and the engine's
MIN_SPEEDUP = 1.5  # bfloat16's speed-up over float32 that makes it the choice (with its SNR above 40 dB)
PROBE_CODES = 16  # codes (0.74 s of audio) the generator decodes in each timing
RUNS = 3  # timings per precision (the best counts), taken in turns after a warm-up of each
METHOD = 1  # how the timings are taken: a choice cached by another method is measured again
CACHE_NAME = "vqgan_precision.json"


def check_precision(precision: str, what: str = "VQGAN") -> None:
    """A ValueError for a decode precision that is not one of VQGAN_PRECISIONS (`what`: the codec it is for)."""
    if precision not in VQGAN_PRECISIONS:
        raise ValueError(f"unknown {what} precision {precision!r} (use one of: {', '.join(VQGAN_PRECISIONS)})")


def resolve_precision(vqgan: VQGAN, precision: str) -> str:
    """The precision to decode in, float32 or bfloat16: `precision` itself, or what "auto" chooses for
    this VQGAN on this machine."""
    check_precision(precision)
    if precision != AUTO:
        return precision
    if vqgan.device.type != "cpu" or not cpu_has_fast_bfloat16():
        return "float32"  # emulated bfloat16 is far slower; off the CPU nothing has been measured

    def measure() -> str:
        speedup = bfloat16_speedup(vqgan)
        chosen = "bfloat16" if speedup >= MIN_SPEEDUP else "float32"
        log.info("VQGAN decode precision: %s (bfloat16 measured %.2fx float32 here)", chosen, speedup)
        return chosen

    key = [f"method={METHOD}", generator_shape(vqgan)]
    return measured_choice(CACHE_NAME, key, ("float32", "bfloat16"), measure)


def generator_shape(vqgan: VQGAN) -> str:
    config = dataclasses.asdict(vqgan.config.generator)
    return hashlib.sha1(repr(sorted(config.items())).encode()).hexdigest()[:12]


@torch.inference_mode()
def bfloat16_speedup(vqgan: VQGAN) -> float:
    """float32's time over bfloat16's for the generator (~98% of decode) on PROBE_CODES codes of mel."""
    frames = PROBE_CODES * vqgan.config.downsample.total_strides
    mel = torch.randn(1, vqgan.config.generator.initial_channel, frames, generator=torch.Generator().manual_seed(0))
    mel = mel.to(vqgan.device)
    chosen = vqgan.decode_dtype

    def decode_in(dtype: torch.dtype) -> None:
        vqgan.decode_dtype = dtype

    try:
        best = best_times((torch.float32, torch.bfloat16), decode_in, lambda: vqgan.mel_to_audio(mel), RUNS)
    finally:
        vqgan.decode_dtype = chosen
    return best[torch.float32] / best[torch.bfloat16]

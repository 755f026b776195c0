"""End to end: a reference-prompted sentence -> audio, through the engine's own steps.

Encode a reference clip to codes, build the prompt (text front end included), generate a fixed
number of frames (stops ignored, so every format produces the same amount of audio), decode.
RTF = wall seconds / seconds of audio produced.
"""

from __future__ import annotations

import time
import zlib

import torch

from core.engine import GenerationRequest, TTSEngine
from core.lm import frames_to_codes, generate
from core.lm.quantize import is_quantized

from .lm import static_cache_for
from .measure import median_runs
from .vqgan import test_audio

REFERENCE_TEXT = "This is the transcript of the reference clip, about ten seconds of a calm speaking voice."
TEXT = "The benchmark speaks one ordinary sentence in the voice of the reference clip."


class SyntheticTokenizer:
    """Stands in for the real tokenizer (not downloaded here): one id per whitespace-separated piece,
    which is how the phone tokens of a g2p prompt tokenize, so prompt lengths are realistic."""

    pad_token_id = 0
    eos_token_id = 2

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        return [3 + zlib.crc32(piece.encode()) % (self.vocab_size - 3) for piece in text.split()]


def bench_e2e(engine: TTSEngine, reference_seconds: float, frames: int, runs: int) -> dict:
    """Medians of: reference encode, LM generation, decode, total; and RTF. `engine.lm` is the format measured."""
    lm, vqgan = engine.lm, engine.vqgan
    reference = test_audio(reference_seconds, vqgan.config.sample_rate).numpy()
    info = {}

    def once():
        start = time.perf_counter()
        ref_codes = engine.encode_reference(reference)
        encoded = time.perf_counter()
        request = GenerationRequest(text=TEXT, prompt_text=REFERENCE_TEXT, prompt_tokens=ref_codes, order="en")
        prompt = engine.encode_prompt(request)
        lm.clear_caches()
        # frames + 1: the last generated frame is the stop/budget frame, dropped by frames_to_codes.
        out = generate(lm, prompt, max_new_tokens=frames + 1, eos_token_id=engine.tokenizer.eos_token_id,
                       params=request.sampling, code_limit=engine.codebook_size, ignore_stop=True,
                       fast_sampling=is_quantized(lm), static_cache=static_cache_for(lm))
        # With stops ignored, random weights can emit the end value (code -1) mid-sequence; the
        # VQGAN's cost does not depend on code values, so map it to a valid one.
        codes = frames_to_codes(out[0]).clamp(min=0)
        generated = time.perf_counter()
        audio = engine.decode_codes(codes)
        done = time.perf_counter()
        info.update(prompt_tokens=prompt.shape[1], codes=codes.shape[1], audio_s=len(audio) / vqgan.config.sample_rate)
        return dict(encode_s=encoded - start, lm_s=generated - encoded, decode_s=done - generated, total_s=done - start)

    result = median_runs(once, runs)
    return dict(reference_s=reference_seconds, **info, **{k: round(v, 3) for k, v in result.items()},
                rtf=round(result["total_s"] / info["audio_s"], 3))


def make_engine(lm: torch.nn.Module, vqgan: torch.nn.Module, device: torch.device) -> TTSEngine:
    return TTSEngine(lm=lm, tokenizer=SyntheticTokenizer(lm.config.vocab_size), vqgan=vqgan, device=device)

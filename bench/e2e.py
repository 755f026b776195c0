"""End to end: a reference-prompted sentence -> audio, through the engine's own path.

Encode a reference clip to codes, then `TTSEngine.synthesize` (text front end, the batch scheduler,
the chunked VQGAN decoder) with a fixed number of frames (stops ignored, so every format produces the
same amount of audio). RTF = wall seconds / seconds of audio produced. The LM and decode parts are
also timed alone (generate_codes, then a one-shot decode of its codes) for the breakdown.
"""

from __future__ import annotations

import time
import zlib

import torch

from core.engine import TTSEngine
from core.request import Reference, SynthesisRequest

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


def reference_codes(engine: TTSEngine, seconds: float):
    return engine.encode_reference(test_audio(seconds, engine.info.sample_rate).numpy())


def bench_e2e(engine: TTSEngine, reference_seconds: float, frames: int, runs: int) -> dict:
    """Medians of: reference encode, synthesis, total; and RTF. `engine.lm` is the format measured."""
    reference = test_audio(reference_seconds, engine.info.sample_rate).numpy()
    info = {}

    def once():
        start = time.perf_counter()
        codes = engine.encode_reference(reference)
        encoded = time.perf_counter()
        # frames + 1: the last generated frame is the stop/budget frame, which is not audio
        request = SynthesisRequest(
            text=TEXT,
            transcript=REFERENCE_TEXT,
            reference=Reference("codes", codes=codes),
            order="en",
            max_frames=frames + 1,
            seed=1,
        )
        audio = engine.synthesize(request, ignore_stop=True)
        done = time.perf_counter()
        generated = engine.generate_codes(request, ignore_stop=True)[0]
        lm_done = time.perf_counter()
        engine.decode_codes(generated)
        decode_done = time.perf_counter()
        info.update(
            prompt_tokens=engine.encode_prompt(request).shape[1],
            codes=generated.shape[1],
            audio_s=audio.size / engine.info.sample_rate,
        )
        return dict(
            encode_s=encoded - start,
            synthesize_s=done - encoded,
            total_s=done - start,
            lm_s=lm_done - done,
            decode_s=decode_done - lm_done,
        )

    result = median_runs(once, runs)
    return dict(
        reference_s=reference_seconds,
        **info,
        **{k: round(v, 3) for k, v in result.items()},
        rtf=round(result["total_s"] / info["audio_s"], 3),
    )


def make_engine(lm: torch.nn.Module, vqgan: torch.nn.Module, device: torch.device) -> TTSEngine:
    return TTSEngine(lm=lm, tokenizer=SyntheticTokenizer(lm.config.vocab_size), vqgan=vqgan, device=device)

"""Streaming: time to first audio and total time for a ~100- and a ~300-character text, streamed and not.

Both go through the engine's real path (text split into segments, the batch scheduler, the chunked
VQGAN decoder); random weights never stop, so every segment runs a fixed number of frames: its
length at an ordinary English speaking rate. Starvation is measured as if playback began with the
first chunk: the largest delay by which a chunk arrived after the listener would have reached it
(0 = the stream stayed ahead of playback).
"""

from __future__ import annotations

import math
import time

from core.engine import TTSEngine
from core.request import Reference, SynthesisRequest
from core.text.split import split_text

from .measure import median_runs

TEXTS = {
    100: "The stream starts with the first words, while the rest of this sentence is still being generated.",
    300: (
        "Streaming synthesis sends the first audio long before the text is finished. Each sentence is generated "
        "in the voice of the reference clip, and its sound is decoded in chunks that join without a gap. The "
        "listener hears the beginning while the model is still working on the end of the paragraph."
    ),
}
FRAMES_PER_CHAR = 21.5 / 14.5  # frames per second of audio / characters per second of ordinary English speech


def request_for(text: str, reference_text: str, reference_codes) -> SynthesisRequest:
    longest = max(len(segment) for segment in split_text(text))
    frames = math.ceil(longest * FRAMES_PER_CHAR)
    return SynthesisRequest(
        text=text,
        transcript=reference_text,
        reference=Reference("codes", codes=reference_codes),
        order="en",
        max_frames=frames + 1,
        seed=1,
    )


def bench_streaming(engine: TTSEngine, reference_text: str, reference_codes, runs: int) -> list[dict]:
    rows = []
    sample_rate = engine.info.sample_rate
    for chars, text in TEXTS.items():
        request = request_for(text, reference_text, reference_codes)
        info = {}

        def once():
            start = time.perf_counter()
            stream = engine.stream(request, ignore_stop=True)
            first, played, stall = None, 0.0, 0.0
            for chunk in stream:
                now = time.perf_counter() - start
                if first is None:
                    first = now
                stall = max(stall, now - (first + played))  # arrived after playback reached it
                played += chunk.size / sample_rate
            streamed = time.perf_counter() - start
            start = time.perf_counter()
            audio = engine.synthesize(request, ignore_stop=True)
            whole = time.perf_counter() - start
            info.update(segments=len(stream.segments), audio_s=round(audio.size / sample_rate, 2))
            return dict(first_audio_s=first, stream_total_s=streamed, whole_s=whole, stall_s=stall)

        result = median_runs(once, runs)
        rows.append(
            dict(
                chars=len(text),
                **info,
                **{k: round(v, 3) for k, v in result.items()},
                first_audio_fraction=round(result["first_audio_s"] / result["whole_s"], 3),
                rtf=round(result["whole_s"] / info["audio_s"], 3),
            )
        )
    return rows

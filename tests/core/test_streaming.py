"""Streaming synthesis: chunked VQGAN decoding equals the one-shot decode, a stream's chunks are the
non-streamed audio, long texts stream segment by segment in order, and cancelling frees the model."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from core.request import SynthesisRequest
from core.speech import JOIN_FADE_SECONDS, _fade
from core.text.split import split_text
from core.vqgan import load_vqgan, streaming
from core.vqgan.config import VQGANConfig
from core.vqgan.streaming import StreamingDecoder, generator_context_frames, mel_context_tokens
from tests.paths import PARITY
from tests.tolerances import longest_reduction, network_atol


@pytest.fixture(scope="module")
def vqgan():
    return load_vqgan(PARITY / "vqgan_state_dict.pt", str(PARITY / "vqgan_config.json"))


def stream_decode(vqgan, codes: torch.Tensor, schedule, step: int) -> list[np.ndarray]:
    decoder = StreamingDecoder(vqgan, schedule)
    chunks = []
    for start in range(0, codes.shape[1], step):
        decoder.push(codes[:, start : start + step])
        chunks += decoder.chunks()
    return chunks + decoder.finish()


def test_official_receptive_fields():
    """The WN decoder reaches 63 mel frames (16 codes) each way; HiFi-GAN about 16 mel frames."""
    config = VQGANConfig()
    assert mel_context_tokens(config) == 16
    assert generator_context_frames(config) == 17


@pytest.mark.parametrize("schedule", [(8, 16, 32), (1,), (5, 11), (64,)])
@pytest.mark.parametrize("step", [1, 7, 1000])
def test_chunked_decode_equals_the_one_shot_decode(vqgan, schedule, step):
    codes = torch.randint(0, 160, (4, 150), generator=torch.Generator().manual_seed(0))
    expected = vqgan.decode(codes).reshape(-1).numpy()
    chunks = stream_decode(vqgan, codes, schedule, step)
    sizes = [len(c) // 1024 for c in chunks]
    assert sizes[: len(schedule)] == list(schedule)[: len(sizes)] and sum(sizes) == 150
    audio = np.concatenate(chunks)
    assert audio.shape == expected.shape
    # float rounding of the same sums over other lengths
    assert np.abs(audio - expected).max() <= network_atol(expected, longest_reduction(vqgan))


def test_chunks_do_not_depend_on_how_the_codes_arrive(vqgan):
    codes = torch.randint(0, 160, (4, 90), generator=torch.Generator().manual_seed(1))
    runs = [np.concatenate(stream_decode(vqgan, codes, (8, 16, 32), step)) for step in (1, 3, 90)]
    assert all(np.array_equal(runs[0], other) for other in runs[1:])


def test_a_context_shorter_than_the_receptive_field_would_change_the_audio(vqgan, monkeypatch):
    """What the contexts are for: with too little, chunk edges differ from the one-shot decode."""
    codes = torch.randint(0, 160, (4, 80), generator=torch.Generator().manual_seed(2))
    expected = vqgan.decode(codes).reshape(-1).numpy()
    exact = np.concatenate(stream_decode(vqgan, codes, (16,), 1))
    monkeypatch.setattr(streaming, "mel_context_tokens", lambda config: 1)
    monkeypatch.setattr(streaming, "generator_context_frames", lambda config: 1)
    blind = np.concatenate(stream_decode(vqgan, codes, (16,), 1))
    rounding = network_atol(expected, longest_reduction(vqgan))
    assert np.abs(exact - expected).max() <= rounding and np.abs(blind - expected).max() > 10 * rounding


def test_chunks_become_ready_only_with_enough_lookahead(vqgan):
    decoder = StreamingDecoder(vqgan, (8,))
    codes = torch.randint(0, 160, (4, 200), generator=torch.Generator().manual_seed(3))
    pushed = 0
    while not decoder.chunk_ready():
        decoder.push(codes[:, pushed : pushed + 1])
        pushed += 1
    # 8 codes of audio, the generator's reach after them, rounded up to the mel block grid, the WN's reach
    mel_end = -(-(8 + decoder.lookahead_tokens) // streaming.MEL_BLOCK_TOKENS) * streaming.MEL_BLOCK_TOKENS
    assert pushed == mel_end + decoder.mel_context
    assert [len(c) for c in decoder.chunks()] == [8 * 1024]


def test_stream_chunks_are_the_non_streamed_audio(tiny_engine):
    request = SynthesisRequest(text="hello world. this is a test of streaming!", use_g2p=False, max_frames=80, seed=5)
    stream = tiny_engine.stream(request)
    chunks = list(stream)
    assert len(chunks) >= 2 and stream.time_to_first_audio is not None
    # Both within float rounding of decoding the generated codes in one piece; the non-streamed audio
    # comes in larger chunks (the same frames: the same seed and scheduler).
    codes = tiny_engine.generate_codes(request)[0]
    one_shot = tiny_engine.decode_codes(codes)
    atol = network_atol(one_shot, longest_reduction(tiny_engine.family.vqgan))
    whole = tiny_engine.stream(request, streamed=False)
    whole_chunks = list(whole)
    assert len(whole_chunks) < len(chunks)
    for audio in (np.concatenate(chunks), np.concatenate(whole_chunks), tiny_engine.synthesize(request)):
        assert audio.shape == one_shot.shape and np.abs(audio - one_shot).max() <= atol


def test_a_long_text_streams_its_segments_in_order(tiny_engine):
    sentences = [f"sentence number {word} is here." for word in ("one", "two", "three", "four", "five", "six")]
    text = " ".join(sentences)
    request = SynthesisRequest(text=text, use_g2p=False, max_frames=40, seed=11)
    segments = split_text(text, 40)
    assert len(segments) >= 5
    stream = tiny_engine.stream(request, max_segment_weight=40)
    assert len(stream.segments) == len(segments)
    audio = np.concatenate(list(stream))
    # each segment alone, with the seed the stream gives it, faded where segments meet
    fade = int(JOIN_FADE_SECONDS * 22050)
    parts = []
    for i, segment in enumerate(segments):
        part = tiny_engine.synthesize(SynthesisRequest(text=segment, use_g2p=False, max_frames=40, seed=11 + i))
        if i > 0:
            part = _fade(part, fade, rising=True)
        if i < len(segments) - 1:
            part = _fade(part, fade, rising=False)
        parts.append(part)
    # (synthesize decodes in larger chunks than the stream: the same within float rounding)
    expected = np.concatenate(parts)
    atol = network_atol(expected, longest_reduction(tiny_engine.family.vqgan))
    assert audio.shape == expected.shape and np.abs(audio - expected).max() <= atol


def test_cancelling_a_stream_frees_the_model_within_a_second(tiny_engine):
    request = SynthesisRequest(text="a long one. " * 12, use_g2p=False, max_frames=0, seed=1)
    stream = tiny_engine.stream(request, max_segment_weight=30)
    iterator = iter(stream)
    next(iterator)
    iterator.close()  # what a client disconnect does
    # A full batch of fresh sequences gets its slots (and finishes) within the second: the cancelled
    # stream's sequences left the batch.
    started = time.monotonic()
    codes = tiny_engine.generate_codes(
        SynthesisRequest(text="next", use_g2p=False, max_frames=5, seed=1), num_samples=tiny_engine.max_batch_size
    )
    assert time.monotonic() - started < 1.0
    assert len(codes) == tiny_engine.max_batch_size and codes[0].shape[0] == 4


def test_fade_is_a_smooth_ramp():
    chunk = np.ones(1000, dtype=np.float32)
    rising, falling = _fade(chunk, 100, rising=True), _fade(chunk, 100, rising=False)
    assert rising[0] == 0 and rising[99] == pytest.approx(1) and np.all(np.diff(rising[:100]) >= 0)
    assert falling[-1] == 0 and np.all(rising[100:] == 1) and np.all(falling[:900] == 1)
    assert np.all(chunk == 1)  # not modified in place

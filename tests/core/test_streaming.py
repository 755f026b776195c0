"""Streaming synthesis: chunked VQGAN decoding equals the one-shot decode, a stream's chunks are the
non-streamed audio, long texts stream segment by segment in order, and cancelling frees the model."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from core.engine import Cancelled
from core.request import SynthesisRequest
from core.speech import JOIN_FADE_SECONDS, _fade
from core.text.split import split_text
from core.vqgan import load_vqgan, streaming
from core.vqgan.config import VQGANConfig
from core.vqgan.decoder_stream import GeneratorStream, WNStream, generator_lag_samples, wn_lag_frames
from core.vqgan.streaming import StreamingDecoder, generator_lookahead_frames
from tests.helpers import frames_beside, load_tiny_engine
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


def test_official_lags():
    """The WN stack's mel trails its input by sum(dilation * (kernel - 1) / 2) = 1 + 2 + ... + 32 = 63
    frames; HiFi-GAN's audio trails the mel by 3258 samples: 3 frames (conv_pre) * 256 + 4 * 32 + 60 * 32
    (first upsampling: padding, widest ResBlock) + 4 * 4 + 60 * 4 + 1 * 2 + 60 * 2 + 1 + 60 + 3 (conv_post)
    = 12.7 frames."""
    config = VQGANConfig()
    assert wn_lag_frames(config.decoder) == 63
    assert generator_lag_samples(config.generator) == 3258
    assert generator_lookahead_frames(config) == 13


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


def test_a_generator_lookahead_too_short_is_an_error_not_wrong_audio(vqgan, monkeypatch):
    monkeypatch.setattr(streaming, "generator_lookahead_frames", lambda config: 1)
    codes = torch.randint(0, 160, (4, 80), generator=torch.Generator().manual_seed(2))
    with pytest.raises(RuntimeError, match="less audio"):
        stream_decode(vqgan, codes, (16,), 1)


def push_in_pieces(stream, x: torch.Tensor, pieces, out_per_in: int, lag: int) -> torch.Tensor:
    """Push x [1, C, T] in pieces; each push must return exactly what no later input can change."""
    outs, fed = [], 0
    with torch.inference_mode():
        for i, n in enumerate(pieces):
            final = i == len(pieces) - 1
            outs.append(stream.push(x[..., fed : fed + n], final))
            fed += n
            returned = sum(o.shape[-1] for o in outs)
            assert returned == (fed * out_per_in if final else max(0, fed * out_per_in - lag))
    return torch.cat(outs, dim=-1)


PIECES = [(1,) * 40, (3, 17, 1, 9, 10), (40,)]


@pytest.mark.parametrize("pieces", PIECES)
def test_generator_stream_equals_the_generator_and_trails_by_its_lag(vqgan, pieces):
    """Each push returns exactly the samples no later frame can change (the lag is tight, not just
    enough), and together they are the generator's output for the whole mel."""
    generator = vqgan.generator
    hop, lag = int(np.prod(vqgan.config.generator.upsample_rates)), generator_lag_samples(vqgan.config.generator)
    mel = torch.randn(1, vqgan.config.mel.n_mels, sum(pieces), generator=torch.Generator().manual_seed(4))
    audio = push_in_pieces(GeneratorStream(generator), mel, pieces, hop, lag)
    with torch.inference_mode():
        expected = generator(mel)
    assert audio.shape == expected.shape
    assert float((audio - expected).abs().max()) <= network_atol(expected, longest_reduction(generator))


@pytest.mark.parametrize("pieces", PIECES)
def test_wn_stream_equals_the_wn_stack_and_trails_by_its_lag(vqgan, pieces):
    wn = vqgan.decoder
    x = torch.randn(1, wn.hidden_channels, sum(pieces), generator=torch.Generator().manual_seed(5))
    mel = push_in_pieces(WNStream(wn), x, pieces, 1, wn_lag_frames(vqgan.config.decoder))
    with torch.inference_mode():
        expected = wn(x)
    assert mel.shape == expected.shape
    assert float((mel - expected).abs().max()) <= network_atol(expected, longest_reduction(wn))


def test_chunks_become_ready_only_with_enough_lookahead(vqgan):
    decoder = StreamingDecoder(vqgan, (8,))
    codes = torch.randint(0, 160, (4, 200), generator=torch.Generator().manual_seed(3))
    pushed = 0
    while not decoder.chunk_ready():
        decoder.push(codes[:, pushed : pushed + 1])
        pushed += 1
    # 8 codes of audio and the generator's lookahead in mel frames, plus the WN's lag: not one code more
    frames = 8 * 4 + generator_lookahead_frames(vqgan.config) + wn_lag_frames(vqgan.config.decoder)
    assert pushed == -(-frames // 4)
    assert [len(c) for c in decoder.chunks()] == [8 * 1024]


def test_stream_chunks_are_the_non_streamed_audio(tiny_engine):
    request = SynthesisRequest(text="hello world. this is a test of streaming!", use_g2p=False, max_frames=80, seed=5)
    stream = tiny_engine.stream(request)
    chunks = list(stream)
    assert len(chunks) >= 2 and stream.time_to_first_audio is not None
    # Both within float rounding of decoding the generated codes in one piece; the non-streamed audio
    # comes in larger chunks (the same frames: the same seed and scheduler).
    codes = tiny_engine.generate_codes(request)[0]
    one_shot = tiny_engine.family.decode(codes)
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


def test_streamed_the_first_segment_starts_alone_until_its_first_audio(tiny_engine):
    """A second segment's prefill would delay the first audio: it joins only after the first audio is out
    (once that is far enough ahead of playback or behind it, or the first segment is generated); not
    streamed, both start together."""
    text = "sentence number one is here. sentence number two is here. sentence number three is here."
    request = SynthesisRequest(text=text, use_g2p=False, max_frames=60, seed=3)
    for streamed in (True, False):
        snapshots, holder = [], []

        def progress(snapshots=snapshots, holder=holder):
            if holder:
                first, second = holder[0].segments[:2]
                snapshots.append((second.sequence.steps, first.decoder.emitted, first.generated))

        stream = tiny_engine.stream(request, max_segment_weight=30, progress=progress, streamed=streamed)
        holder.append(stream)
        assert len(stream.segments) >= 3
        list(stream)
        early = [s for s in snapshots if s[0] > 0 and s[1] == 0 and not s[2]]  # the second ran before the first audio
        assert snapshots[-1][0] > 0
        assert (not early) if streamed else early


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


def test_a_whole_synthesis_cancelled_through_its_stream_stops_and_frees_the_model(tiny_engine):
    """(what the server does when the client of a non-streamed request leaves)"""
    request = SynthesisRequest(text="a long one. " * 12, use_g2p=False, max_frames=0, seed=1)
    started = time.monotonic()
    with pytest.raises(Cancelled):
        tiny_engine.synthesize(request, on_stream=lambda stream: stream.cancel())
    codes = tiny_engine.generate_codes(
        SynthesisRequest(text="next", use_g2p=False, max_frames=5, seed=1), num_samples=tiny_engine.max_batch_size
    )
    assert time.monotonic() - started < 2.0 and len(codes) == tiny_engine.max_batch_size


def test_a_closed_engine_refuses_work_instead_of_starting_again(tiny_checkpoints):
    """(a server stopping closes its engines so its workers return: none may start a new scheduler)"""
    engine = load_tiny_engine(tiny_checkpoints)
    request = SynthesisRequest(text="hi", use_g2p=False, max_frames=5, seed=1)
    assert engine.synthesize(request).size > 0
    engine.close()
    with pytest.raises(RuntimeError, match="unloaded"):
        engine.synthesize(request)


def test_a_closed_codec_only_engine_refuses_work_too(tiny_checkpoints):
    """(an engine without an LM runs its codec under its lock, not a scheduler: close() had not stopped it)"""
    from core.engine import TTSEngine

    engine = TTSEngine.load(
        lm_checkpoint=None,
        vqgan_checkpoint=tiny_checkpoints["vqgan"],
        vqgan_config=str(tiny_checkpoints["vqgan_config"]),
        device="cpu",
        vqgan_precision="float32",
    )
    codes = np.zeros((4, 10), dtype=np.int64)
    assert engine.decode_codes(codes).size > 0
    engine.close()
    with pytest.raises(RuntimeError, match="unloaded"):
        engine.decode_codes(codes)


def test_a_long_decode_is_chunks_between_the_generation_steps(tiny_engine):
    """A /v1/vqgan/decode of minutes of codes was one scheduler task: every generation on the model
    stood still until it was done. Now each chunk is a task, and a step runs between two."""
    codes = torch.randint(0, 160, (4, 24 * streaming.WHOLE_SCHEDULE[-1]), generator=torch.Generator().manual_seed(1))
    request = SynthesisRequest(text="hello world", use_g2p=False, max_frames=40, seed=2)
    audio, frames = frames_beside(tiny_engine, lambda: tiny_engine.decode_codes(codes), request)
    assert frames >= 20  # 24 chunks, a step before each (one task: the prefill and a step, 2 frames)
    one_piece = tiny_engine.family.decode(codes)
    atol = network_atol(one_piece, longest_reduction(tiny_engine.family.vqgan))
    assert audio.shape == one_piece.shape and np.abs(audio - one_piece).max() <= atol


def test_every_segment_of_a_stream_decodes_between_the_chunks_of_codec_requests(tiny_engine):
    """Codec chunks ran at priority 0 and a stream's segment i decodes at priority i (lower first), so
    beside two clients' long decodes segments 1, 2, ... decoded nothing until the decodes were done."""
    chunk = streaming.WHOLE_SCHEDULE[-1]
    codes = torch.randint(0, 160, (4, 100 * chunk), generator=torch.Generator().manual_seed(1))
    text = " ".join(f"sentence number {word} is here." for word in ("one", "two", "three", "four"))
    request = SynthesisRequest(text=text, use_g2p=False, max_frames=12, seed=11)
    ended = {}

    def decode(name: str) -> None:
        tiny_engine.decode_codes(codes)
        ended[name] = time.monotonic()

    decodes = [threading.Thread(target=decode, args=(f"decode {i}",)) for i in range(2)]
    for thread in decodes:
        thread.start()
    stream = tiny_engine.stream(request, max_segment_weight=40, ignore_stop=True)
    chunks = list(stream)
    ended["stream"] = time.monotonic()
    for thread in decodes:
        thread.join(120)
    assert len(stream.segments) == 4 and len(chunks) >= 4
    assert ended["stream"] < min(ended["decode 0"], ended["decode 1"]), ended


def test_a_decode_stops_between_its_chunks(tiny_engine):
    codes = torch.randint(0, 160, (4, 4 * streaming.WHOLE_SCHEDULE[-1]), generator=torch.Generator().manual_seed(1))
    asked = []
    with pytest.raises(Cancelled):
        tiny_engine.decode_codes(codes, stop=lambda: asked.append(1) or len(asked) > 2)
    assert len(asked) == 3  # two chunks decoded, the third not started
    with pytest.raises(ValueError, match="T >= 1"):
        tiny_engine.decode_codes(np.zeros((4, 0), dtype=np.int64))


def test_fade_is_a_smooth_ramp():
    chunk = np.ones(1000, dtype=np.float32)
    rising, falling = _fade(chunk, 100, rising=True), _fade(chunk, 100, rising=False)
    assert rising[0] == 0 and rising[99] == pytest.approx(1) and np.all(np.diff(rising[:100]) >= 0)
    assert falling[-1] == 0 and np.all(rising[100:] == 1) and np.all(falling[:900] == 1)
    assert np.all(chunk == 1)  # not modified in place


def test_a_progress_callback_that_calls_the_engine_is_refused_not_a_hang(tiny_checkpoints):
    """`progress` runs on the scheduler's thread: a generation started there and waited for could never run,
    and the engine hung for good (every later request, `close()`, the interpreter's exit)."""
    engine = load_tiny_engine(tiny_checkpoints)
    request = SynthesisRequest("hi there", max_frames=4, seed=1, use_g2p=False)
    errors = []

    def calls_back() -> None:
        engine.synthesize(request)

    def outer() -> None:
        try:
            engine.generate_codes(request, progress=calls_back)
        except RuntimeError as exc:
            errors.append(exc)

    try:
        worker = threading.Thread(target=outer, daemon=True)
        worker.start()
        worker.join(60)
        assert not worker.is_alive(), "the engine hung"
        assert len(errors) == 1 and "inside its own callback" in str(errors[0])
        assert engine.synthesize(request).size > 0  # and it still works
    finally:
        if not worker.is_alive():  # (a hung scheduler would hang its close too)
            engine.close()


def test_a_whole_synthesis_whose_on_stream_fails_stops_its_stream(tiny_engine):
    """An error in `on_stream` (or a Ctrl-C before the stream was read) left the stream generating to its
    end, holding its batch slot."""
    streams = []

    def fails(stream) -> None:
        streams.append(stream)
        raise KeyError("the caller's bug")

    with pytest.raises(KeyError):
        tiny_engine.synthesize(SynthesisRequest("hi there", max_frames=200, seed=1, use_g2p=False), on_stream=fails)
    with pytest.raises(Cancelled):
        list(streams[0])


def test_an_engine_used_in_a_with_block_is_closed_at_its_end(tiny_checkpoints):
    with load_tiny_engine(tiny_checkpoints) as engine:
        assert engine.synthesize(SynthesisRequest("hi there", max_frames=4, seed=1, use_g2p=False)).size > 0
        scheduler = engine.scheduler
    assert not scheduler._thread.is_alive()  # (dropped without close, the thread kept the model)
    with pytest.raises(RuntimeError, match="unloaded"):
        engine.synthesize(SynthesisRequest("hi there", max_frames=4, seed=1, use_g2p=False))

"""The door into the engine: the request type's rules, reference checks naming their field, the
engine's info, and the front end reading exactly what the engine reads."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from core.frontend import prompt_string, read_piece, read_text
from core.reference import MIN_REFERENCE_SECONDS, prepare_reference
from core.request import DEFAULT_ORDER, DEFAULT_SAMPLING, Reference, SamplingParams, SynthesisRequest


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"text": "  "}, "text"),
        ({"order": "zh,zh"}, "order"),
        ({"order": "fr"}, "order"),
        ({"max_frames": -1}, "max_new_tokens"),
        ({"output_format": "aiff"}, "format"),
        ({"output_format": "mp3", "streaming": True}, "format"),
        ({"reference": Reference("reference_audio", audio=b"RIFF")}, "reference_audio"),
        # (Python callers: an AttributeError, an overflow deep in torch, or a float count)
        ({"text": 123}, "text"),
        ({"transcript": b"hi"}, "transcript"),
        ({"max_frames": 1.5}, "max_new_tokens"),
        ({"seed": 2**64}, "seed"),
        ({"seed": -1}, "seed"),
        ({"seed": True}, "seed"),
        ({"order": None}, "order"),
        ({"order": ["en"]}, "order"),
        ({"reference": "voice.wav"}, "reference"),
        ({"sampling": {"temperature": 0.5}}, "sampling"),
        ({"use_g2p": "no"}, "use_g2p"),  # (a non-empty string was true)
        ({"code_mask": "no"}, "code_mask"),
        # a lone surrogate (bytes the command line could not decode): the tokenizer's bare TypeError for a speaker
        ({"text": "hello \udcff"}, "text"),
        ({"transcript": "\ud800 hi"}, "transcript"),
        ({"speaker": "\udcff"}, "speaker"),
    ],
)
def test_a_bad_request_is_a_value_error_naming_its_field(fields, field):
    with pytest.raises(ValueError, match=f"^{field}: "):
        SynthesisRequest(**{"text": "hello", **fields})


@pytest.mark.parametrize(
    "fields, field",
    [({"temperature": "0.7"}, "temperature"), ({"top_k": 2.5}, "top_k"), ({"top_k": True}, "top_k")],
)
def test_bad_sampling_values_name_their_field(fields, field):
    """(a string failed with Python's TypeError; a fractional top_k inside torch, on the scheduler's thread)"""
    with pytest.raises(ValueError, match=f"^{field} must be a"):
        SamplingParams(**fields)


@pytest.mark.parametrize("audio", [torch.zeros(22050), [0.0] * 22050])
def test_reference_audio_of_another_type_names_its_field(audio):
    with pytest.raises(ValueError, match="^clip: audio must be encoded bytes, a file path or a numpy array"):
        Reference("clip", audio=audio)


def test_numpy_integers_are_plain_ints_in_a_request():
    request = SynthesisRequest(text="hello", seed=np.int64(2**63 - 1), max_frames=np.int32(8))
    assert type(request.seed) is int and type(request.max_frames) is int  # (seed + i must not wrap in int64)


def test_defaults_are_the_originals():
    request = SynthesisRequest(text="hello")
    assert request.sampling == DEFAULT_SAMPLING and request.order == DEFAULT_ORDER == "zh,jp,en"
    assert (DEFAULT_SAMPLING.temperature, DEFAULT_SAMPLING.top_p, DEFAULT_SAMPLING.repetition_penalty) == (
        0.7,
        0.5,
        1.5,
    )
    with pytest.raises(ValueError, match="exactly one"):
        Reference("voice")


def test_engine_info_describes_the_loaded_models(tiny_engine):
    info = tiny_engine.info
    assert (info.family, info.device, info.precision, info.quantize) == ("fish-speech-v0.2", "cpu", "float32", "none")
    assert (info.context, info.num_codebooks, info.codebook_size) == (256, 4, 160)
    assert info.sample_rate == 22050 and info.frame_rate == pytest.approx(22050 / 1024) and info.phonemes


@pytest.mark.parametrize(
    "reference, message",
    [
        (Reference("voice", codes=np.full((4, 5), 160)), "voice: codes must have shape [4, T] with values in 0..159"),
        (Reference("voice", codes=np.zeros((3, 5), dtype=np.int64)), "voice: codes must have shape [4, T]"),
        (Reference("voice", codes=np.zeros((4, 5), dtype=np.float32)), "voice: codes must be a 2-D integer array"),
        (Reference("clip", audio=b"not audio at all"), "clip: audio data is not a readable audio file"),
        (
            Reference("clip", audio=np.zeros(1000, np.float32), min_seconds=MIN_REFERENCE_SECONDS),
            "clip: the reference clip is 0.045 s long",
        ),
        (
            Reference("clip", audio=np.zeros(22050 * 3, np.float32), max_seconds=2),
            "clip: the reference clip is 3.0 s long",
        ),
        (Reference("clip", audio=np.full(22050, np.nan, np.float32)), "clip: the clip contains NaN"),  # (as a file's)
        # (int16 PCM was read as floats 32767x too loud: another voice, no error)
        (Reference("clip", audio=np.zeros(22050, np.int16)), "clip: samples must be floating point"),
        (Reference("clip", audio=np.zeros((2, 22050), np.float32)), "clip: expected non-empty mono samples"),
    ],
)
def test_reference_problems_name_the_field(tiny_engine, reference, message):
    with pytest.raises(ValueError) as error:
        prepare_reference(tiny_engine, reference)
    assert str(error.value).startswith(message)


def test_reference_codes_files_are_checked_without_unpickling(tiny_engine, tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "long.npy", np.zeros((4, 100), dtype=np.int64))
    with pytest.raises(ValueError, match="^prompt_tokens: not a .npy array of codes"):
        prepare_reference(tiny_engine, Reference("prompt_tokens", codes=tmp_path / "objects.npy"))
    with pytest.raises(ValueError, match="^prompt_tokens: 100 frames of codes; 1 to 44 are accepted"):
        prepare_reference(tiny_engine, Reference("prompt_tokens", codes=tmp_path / "long.npy", max_seconds=2))
    audio = np.sin(np.arange(22050, dtype=np.float32) / 10)
    prepared = prepare_reference(tiny_engine, Reference("clip", audio=audio, min_seconds=MIN_REFERENCE_SECONDS))
    assert prepared.codes.shape[0] == 4 and prepared.audio is not None


def test_a_codes_file_of_unsigned_integers_decodes_like_a_signed_one(tiny_engine, tmp_path):
    """(The CLI's `vqgan -i codes.npy` gave torch's '"min_all" not implemented for UInt64')"""
    from core.reference import read_codes_file

    codes = np.random.default_rng(0).integers(0, 100, size=(4, 6))
    np.save(tmp_path / "unsigned.npy", codes.astype(np.uint64))
    read = read_codes_file(tmp_path / "unsigned.npy", "codes")
    assert read.dtype == np.int64 and np.array_equal(read, codes)
    np.testing.assert_array_equal(tiny_engine.decode_codes(read), tiny_engine.decode_codes(codes))
    np.save(tmp_path / "huge.npy", np.full((4, 6), 2**63, np.uint64))
    with pytest.raises(ValueError, match="^codes: codes out of range"):
        read_codes_file(tmp_path / "huge.npy", "codes")


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint8, np.int32])
def test_reference_codes_of_any_integer_type_are_the_same_prompt(tiny_engine, dtype):
    """(int8 codes past 125 wrapped around when the prompt added each codebook's offset in their own type:
    a wrong voice, silently)"""
    codes = np.full((4, 5), 127)
    request = SynthesisRequest(text="hi", use_g2p=False, max_frames=4, transcript="a clip")
    prompts = [
        tiny_engine.encode_prompt(dataclasses.replace(request, reference=Reference("codes", codes=codes.astype(t))))
        for t in (np.int64, dtype)
    ]
    assert torch.equal(*prompts)


def test_the_engine_reads_what_the_front_end_shows(tiny_engine):
    """Without a model the front end gives the pieces for a large context; the engine, whose tiny
    model has 256 positions, splits a piece whose prompt would leave less than half for audio."""
    text = "First sentence here. Second one follows. " * 6
    request = SynthesisRequest(text=text, transcript="the reference says this", use_g2p=False)
    shown = read_text(text, "the reference says this", use_g2p=False)
    assert len(shown) == 2 and all(piece.prompt.startswith("[INST] the reference says this") for piece in shown)
    read = tiny_engine.read_text(request)
    assert len(read) > len(shown)  # split further for the small context
    assert "".join(piece.text for piece in read).replace(" ", "") == text.replace(" ", "")
    assert all(piece.prompt == prompt_string(piece.text, "the reference says this", use_g2p=False) for piece in read)
    assert tiny_engine.read_text(SynthesisRequest(text="short", use_g2p=False)) == read_text("short", use_g2p=False)


@pytest.mark.parametrize(
    "transcript,text",
    [
        ("the reference says this " * 4, "This is a sentence. " * 9),  # was read letter by letter
        ("今天天气很好，我们去公园散步吧。" * 62, "This is a sentence. " * 50),  # was minutes of g2p
    ],
)
def test_a_long_transcript_does_not_split_the_text_letter_by_letter(tiny_engine, monkeypatch, transcript, text):
    """The tiny model's 256 positions: half for audio, 40 for the clip's frames, the rest for the prompt.
    Pieces are cut no finer than a few words, and not at all where the transcript alone takes the room."""
    import core.frontend as frontend
    from core.text.split import MIN_PIECE_WEIGHT, split_text, text_weight

    reads = []
    monkeypatch.setattr(frontend, "read_piece", lambda *a, **k: reads.append(a[0]) or read_piece(*a, **k))
    pieces = tiny_engine.read_text(SynthesisRequest(text=text, transcript=transcript, use_g2p=False), 40)
    assert min(text_weight(piece.text) for piece in pieces) >= MIN_PIECE_WEIGHT
    assert len(reads) <= 2 * len(split_text(text)) * 8  # (halving 180 to 22: at most 8 pieces a piece)
    assert "".join(piece.text for piece in pieces).replace(" ", "") == text.replace(" ", "")


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.uint64, ">i8"])
def test_codes_of_any_integer_type_or_layout_decode_alike(tiny_engine, dtype):
    """(unsigned codes failed inside torch, which has no comparisons for them; a view with negative strides,
    or big-endian codes, failed in torch.as_tensor)"""
    codes = np.random.default_rng(0).integers(0, 160, size=(4, 12))
    expected = tiny_engine.decode_codes(codes)
    np.testing.assert_array_equal(tiny_engine.decode_codes(codes.astype(dtype)), expected)
    backwards = np.ascontiguousarray(codes[:, ::-1])[:, ::-1]  # the same codes, read backwards in memory
    np.testing.assert_array_equal(tiny_engine.decode_codes(backwards), expected)
    reference = prepare_reference(tiny_engine, Reference("voice", codes=backwards)).codes
    np.testing.assert_array_equal(reference, codes)


def test_the_engine_refuses_integer_samples_and_batches_of_codes_naming_them(tiny_engine):
    with pytest.raises(ValueError, match="^audio: samples must be floating point"):
        tiny_engine.encode_reference(np.zeros(22050, np.int16))
    with pytest.raises(ValueError, match=r"^codes must be \[codebooks, T\]"):
        tiny_engine.decode_codes(np.zeros((2, 4, 12), np.int64))
    for size in (2.5, True):
        with pytest.raises(ValueError, match="^max_batch_size must be"):
            type(tiny_engine)(family=tiny_engine.family, max_batch_size=size)

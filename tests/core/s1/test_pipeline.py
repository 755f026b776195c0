"""S1Model: one folder → reference encode → generate → decode, end to end on the parity checkpoint."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from core.s1 import Reference, S1Model, SamplingSettings

from .support import (
    GENERATION_CASES,
    MAX_NEW_FRAMES,
    REF_TEXT,
    S1_CHECKPOINT,
    TARGET_TEXT,
    codec_cases,
    dual_ar_cases,
)


@pytest.fixture(scope="module")
def model():
    return S1Model.from_folder(S1_CHECKPOINT, device="cpu")


def test_reference_encode_from_samples_and_from_a_wav_file(model):
    cases = codec_cases()
    codes = model.encode_reference(cases["signal"], sample_rate=model.sample_rate)
    np.testing.assert_array_equal(codes.numpy(), cases["codes"][0])
    wav = io.BytesIO()
    sf.write(wav, cases["signal"], model.sample_rate, format="WAV", subtype="FLOAT")
    np.testing.assert_array_equal(model.encode_reference(wav.getvalue()).numpy(), cases["codes"][0])
    resampled = model.encode_reference(np.repeat(cases["signal"], 2), sample_rate=2 * model.sample_rate)
    assert resampled.shape == codes.shape  # resampled to the codec rate first


def test_synthesize_with_a_reference_gives_the_original_codes_and_their_audio(model):
    cases = dual_ar_cases()
    reference = Reference(torch.from_numpy(cases["ref_codes"]), REF_TEXT)
    _, temperature, top_p, penalty = GENERATION_CASES["greedy"]
    result = model.synthesize(TARGET_TEXT, [reference], SamplingSettings(temperature, top_p, penalty), MAX_NEW_FRAMES)
    np.testing.assert_array_equal(result.codes.numpy(), cases["gen_greedy_codes"])
    assert result.stopped and result.sample_rate == 16000
    assert result.audio.dtype == np.float32 and result.audio.size == result.codes.size(1) * model.frame_length
    np.testing.assert_array_equal(result.audio, model.decode(result.codes))


def test_seed_reproduces_the_original_sampled_frames(model):
    cases = dual_ar_cases()
    reference = Reference(torch.from_numpy(cases["ref_codes"]), REF_TEXT)
    seed, temperature, top_p, penalty = GENERATION_CASES["sample_seed42_cli"]
    result = model.generate(
        TARGET_TEXT, [reference], SamplingSettings(temperature, top_p, penalty), MAX_NEW_FRAMES, seed=seed
    )
    np.testing.assert_array_equal(result.frames.numpy(), cases["gen_sample_seed42_cli_tokens"])


def test_bad_requests_are_clear_errors(model, tmp_path):
    with pytest.raises(ValueError, match="text is empty"):
        model.synthesize("  ")
    with pytest.raises(ValueError, match="sample_rate is required"):
        model.encode_reference(np.zeros(100, dtype=np.float32))
    with pytest.raises(ValueError, match="mono samples"):
        model.encode_reference(np.zeros((100, 2), dtype=np.float32), sample_rate=16000)
    with pytest.raises(ValueError, match="mono samples"):
        model.encode_reference(np.full(100, np.nan, dtype=np.float32), sample_rate=16000)
    with pytest.raises(FileNotFoundError, match="folder not found"):
        S1Model.from_folder(tmp_path / "nothing")

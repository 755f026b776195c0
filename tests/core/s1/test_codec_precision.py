"""The S1 codec's decode in bfloat16 on CPU (`--vqgan-precision bfloat16`): close to float32 audio (SNR),
streamed as whole, encode untouched; "auto" stays float32 on CPU; the engine and CLI take the option."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.engine import TTSEngine
from core.s1 import S1Model
from core.s1.codec.chunks import ChunkedDecoder
from tests.tolerances import MIN_SNR_DB, snr_db

from .support import S1_CHECKPOINT, codec_cases


@pytest.fixture(scope="module")
def model():
    return S1Model.from_folder(S1_CHECKPOINT, device="cpu")


@pytest.fixture
def bfloat16(model):
    model.codec_precision = "bfloat16"
    yield model
    model.codec_precision = "auto"


def test_auto_is_float32_on_cpu(model):
    assert model.codec_precision == "float32" and model.codec.decode_dtype == torch.float32


def test_bfloat16_decode_is_close_to_float32_and_streams_the_same(model):
    codes = torch.from_numpy(codec_cases()["codes"][0])
    reference = model.decode(codes)
    model.codec_precision = "bfloat16"
    try:
        assert model.codec_precision == "bfloat16"
        whole = model.decode(codes)
        decoder = ChunkedDecoder(model.codec, autocast=False)
        for start in range(0, codes.shape[1], 5):
            decoder.push(codes[:, start : start + 5])
        streamed = np.concatenate(decoder.chunks(final=True)).reshape(-1)
    finally:
        model.codec_precision = "auto"
    assert whole.shape == reference.shape and snr_db(reference, whole) >= MIN_SNR_DB  # measured 42.1 dB
    assert streamed.shape == reference.shape and snr_db(reference, streamed) >= MIN_SNR_DB
    assert not np.array_equal(whole, reference)  # it did decode in bfloat16


def test_bfloat16_leaves_the_encode_in_float32(model, bfloat16):
    cases = codec_cases()
    codes = bfloat16.encode_reference(cases["signal"], sample_rate=bfloat16.sample_rate)
    np.testing.assert_array_equal(codes.numpy(), cases["codes"][0])


def test_an_unknown_codec_precision_is_a_clear_error():
    with pytest.raises(ValueError, match="float8.*auto, float32, bfloat16"):
        S1Model.from_folder(S1_CHECKPOINT, device="cpu", codec_precision="float8")


def test_the_engine_takes_the_codecs_precision():
    engine = TTSEngine.load_s1(S1_CHECKPOINT, device="cpu", vqgan_precision="bfloat16")
    try:
        assert engine.info.vqgan_precision == "bfloat16" and engine.family.codec.decode_dtype == torch.bfloat16
    finally:
        engine.close()

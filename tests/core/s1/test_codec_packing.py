"""The S1 codec's decode on conv weights packed once for oneDNN (core/s1/codec/packing.py): the original's
audio, whole and streamed, and the model's choice per precision (the choice itself: test_conv_packing.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.s1 import S1Model
from core.s1.codec import packing
from core.s1.codec.streaming import StreamingDecoder
from core.s1.load import load_codec
from tests.helpers import set_packing_speedup
from tests.tolerances import MIN_SNR_DB, snr_db

from .support import S1_CHECKPOINT, assert_close, codec_cases

onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.fixture
def codec():
    return load_codec(S1_CHECKPOINT / "codec.pth")


def decode_convs(codec) -> list[torch.nn.Module]:
    """The convs a decode runs: the decoder's and the quantizer's upsampling, the transposed ones as their
    phase convs (convs.causal_conv_transpose1d)."""
    modules = [*codec.quantizer.upsample.modules(), *codec.decoder.modules()]
    plain = [m for m in modules if isinstance(m, torch.nn.Conv1d)]
    return plain + [m.__dict__["_phase_conv"][2] for m in modules if isinstance(m, torch.nn.ConvTranspose1d)]


def streamed(codec, codes, chunks) -> torch.Tensor:
    stream, pieces, start = StreamingDecoder(codec), [], 0
    for size in chunks:
        pieces.append(stream.push(codes[..., start : start + size]))
        start += size
    return torch.cat(pieces, dim=-1)


@onednn
def test_packed_weights_decode_the_originals_audio_whole_and_streamed(codec):
    cases = codec_cases()
    codes = torch.from_numpy(cases["codes"])
    codec.packed_convs = True
    whole = codec.decode(codes)
    assert_close(whole, cases["recon_audio"])
    assert_close(streamed(codec, codes, [5, 3, 8, codes.size(-1) - 16]), whole.numpy())
    ran = decode_convs(codec)
    assert len(ran) > 20 and all("_packed_weight" in conv.__dict__ for conv in ran)  # each ran on its packed weight
    assert not any("_packed_weight" in m.__dict__ for m in codec.encoder.modules())  # encode is untouched


@onednn
def test_packed_bfloat16_decode_is_close_to_float32(codec):
    codes = torch.from_numpy(codec_cases()["codes"])
    reference = codec.decode(codes).numpy()
    codec.decode_dtype, codec.packed_convs = torch.bfloat16, True
    packed = codec.decode(codes).numpy()
    assert snr_db(reference, packed) >= MIN_SNR_DB and not np.array_equal(packed, reference)


@pytest.fixture
def measured(monkeypatch, tmp_path):
    """An empty cache, and packing's speed-up as the test sets it."""
    return set_packing_speedup(monkeypatch, tmp_path, packing)


def test_the_model_sets_the_measured_choice_per_precision(measured):
    measured.value = 2.0
    model = S1Model.from_folder(S1_CHECKPOINT, device="cpu")
    assert model.codec.packed_convs is True and len(measured.timings) == 1
    measured.value = 0.5
    model.codec_precision = "bfloat16"
    assert model.codec.packed_convs is False and len(measured.timings) == 2

"""The VQGAN against golden outputs of the original code (tests/data/parity, cases 1-3).

Tolerances are those of the parity README: float32 on CPU, indices exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.audio import load_audio
from core.vqgan import load_vqgan, load_vqgan_config
from core.vqgan.config import MelConfig
from core.vqgan.mel import LogMelSpectrogram, hann_window, slaney_mel_filterbank
from tests.paths import PARITY
from tests.tolerances import longest_reduction, network_atol


def golden(name: str) -> dict[str, np.ndarray]:
    with np.load(PARITY / name) as z:
        return {k: z[k] for k in z.files}


def close(actual: torch.Tensor, expected: np.ndarray, atol: float, rtol: float = 0.0) -> float:
    """Assert closeness and return the max abs diff (for the log when a test fails)."""
    actual = actual.detach().numpy()
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, atol=atol, rtol=rtol)
    return float(np.abs(actual - expected).max())


@pytest.fixture(scope="module")
def model():
    return load_vqgan(PARITY / "vqgan_state_dict.pt", str(PARITY / "vqgan_config.json"))


# -- case 1: mel front end ------------------------------------------------------------------------


def test_computed_window_and_filterbank_match_the_stored_ones():
    case = golden("case1_mel.npz")
    c = MelConfig()
    close(hann_window(c.win_length), case["window"], atol=1e-6)
    close(slaney_mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.f_max), case["mel_fb"], atol=1e-6)


def close_log_spectrum(actual_log: torch.Tensor, expected_log: np.ndarray, n_fft: int) -> None:
    """Compare log(clamp(S, 1e-5)) spectrograms where the error lives: in S itself, against its largest value.

    A float32 FFT's rounding error is relative to the largest magnitude (about eps * log2(n_fft) of it,
    whichever SIMD path sums it), not to each bin; the log turns an absolute error d at a quiet bin S
    into d / S, so a fixed tolerance on log values fails on quiet bins (6e-4 at log S = -5.4 on an
    AVX-512/AMX Xeon, where S differed by 5e-7 of its maximum). Bound |S - S'| by 8x that error.
    """
    actual, expected = torch.exp(actual_log.double()).numpy(), np.exp(expected_log.astype(np.float64))
    tolerance = 8 * np.finfo(np.float32).eps * np.log2(n_fft) * expected.max()
    np.testing.assert_allclose(actual, expected, atol=tolerance, rtol=0)


def test_log_mel_with_checkpoint_buffers_matches_original(model):
    case = golden("case1_mel.npz")
    audio = torch.from_numpy(case["audio"])[None, None]
    n_fft = model.mel_transform.config.n_fft
    close_log_spectrum(model.mel_transform(audio), case["mel"], n_fft)
    log_linear = torch.log(torch.clamp(model.mel_transform.linear(audio), min=1e-5))
    close_log_spectrum(log_linear, case["log_linear"], n_fft)


def test_log_mel_with_computed_fallback_buffers_matches_original():
    case = golden("case1_mel.npz")
    mel = LogMelSpectrogram(MelConfig())(torch.from_numpy(case["audio"])[None, None])
    close_log_spectrum(mel, case["mel"], MelConfig().n_fft)


def test_test_signal_wav_loads_to_the_golden_samples():
    audio = load_audio(PARITY / "test_signal.wav")
    np.testing.assert_array_equal(audio, golden("case1_mel.npz")["audio"])


# -- case 2: encode ---------------------------------------------------------------------------


def close_network(model, actual: torch.Tensor, expected: np.ndarray) -> float:
    """A network's output, within the rounding of its sums at the output's scale (tests/tolerances.py)."""
    return close(actual, expected, atol=network_atol(expected, longest_reduction(model)))


def test_encode_intermediates_match_original(model):
    case = golden("case2_encode.npz")
    t = {k: torch.from_numpy(v) for k, v in case.items()}
    audio = t["audio"][None, None]
    with torch.inference_mode():
        close_log_spectrum(model.mel_transform(audio), case["mel"], model.mel_transform.config.n_fft)
        close_network(model, model.downsample(t["mel"]), case["downsampled"])
        mask = model.feature_mask(audio.shape[-1], t["downsampled"].shape[-1])
        close(mask, case["feature_masks"], atol=0)
        assert int(mask.sum()) == int(case["feature_lengths"][0])
        close_network(model, model.mel_encoder(t["downsampled"], t["feature_masks"]), case["mel_encoder_out"])
        close_network(model, model.vq_encoder.conv_in(t["mel_encoder_out"]), case["vq_conv_in_out"])
        indices = model.vq_encoder.vq.encode(t["vq_conv_in_out"][0].T)
        np.testing.assert_array_equal(indices.numpy(), case["indices"])
        quantized = model.vq_encoder.conv_out(model.vq_encoder.vq.decode(indices).T[None]) * t["feature_masks"]
        close_network(model, quantized, case["vq_encoder_out"])


def test_encode_gives_the_original_indices(model):
    case = golden("case2_encode.npz")
    codes = model.encode(torch.from_numpy(case["audio"])[None, None])
    assert codes.dtype == torch.int64
    np.testing.assert_array_equal(codes.numpy(), case["indices"])


def test_encode_emits_ceil_of_quarter_mel_frames(model):
    # QUIRKS 4: T = ceil(floor(N / 256) / 4), not floor(N / 1024).
    for n in (1024, 1024 + 256, 44100, 5000):
        codes = model.encode(torch.zeros(1, 1, n).uniform_(-0.5, 0.5))
        assert codes.shape == (4, -(-(n // 256) // 4))


# -- case 3: decode ---------------------------------------------------------------------------


@pytest.mark.parametrize("sub", ["from_case2", "random"])
def test_decode_matches_original(model, sub):
    case = golden("case3_decode.npz")
    codes = torch.from_numpy(case[f"{sub}_indices"])
    with torch.inference_mode():
        vq = model.vq_encoder.decode(codes)
        close_network(model, vq, case[f"{sub}_vq_decode"])
        mels = model.decoder(vq.repeat_interleave(4, dim=-1), torch.ones(1, 1, 4 * codes.shape[1]))
        close_network(model, mels, case[f"{sub}_decoded_mels"])
    audio = model.decode(codes)
    assert audio.dtype == torch.float32
    close_network(model, audio, case[f"{sub}_audio"])


def test_decode_accepts_any_integer_dtype(model):
    codes = golden("case3_decode.npz")["random_indices"]
    expected = model.decode(codes)
    for dtype in (np.int32, np.int16, np.uint8):
        assert torch.equal(model.decode(codes.astype(dtype)), expected)
    assert torch.equal(model.decode(torch.from_numpy(codes).int()), expected)


def test_parity_config_json_is_the_small_architecture():
    config = load_vqgan_config(str(PARITY / "vqgan_config.json"))
    assert config.downsample.dims == (80, 64, 32)
    assert config.mel_encoder.n_layers == 2 and config.decoder.out_channels == 80
    assert config.generator.resblock_kernel_sizes == (3, 7)

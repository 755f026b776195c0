"""`--vqgan-precision bfloat16`: decode in bfloat16 stays close to float32 audio (SNR), streams the same
way, and is plumbed through the engine, the CLI and the server's load options."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from core.vqgan import load_vqgan
from core.vqgan.streaming import StreamingDecoder
from tests.helpers import run_cli
from tests.paths import PARITY

CONFIG = str(PARITY / "vqgan_config.json")
# bfloat16 keeps 8 significant bits (relative rounding 2^-9, about -54 dB per operation); through the
# decoder's ~30 convolution layers the errors add up to about -50 dB on the parity model (-38 dB on
# official-size random weights). 30 dB: the audio is the same to the ear, and a broken cast fails.
MIN_SNR_DB = 30


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    noise = float(((other.astype(np.float64) - reference) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((reference.astype(np.float64) ** 2).sum()) / noise)


@pytest.fixture(scope="module")
def codes():
    return torch.from_numpy(np.load(PARITY / "case3_decode.npz")["from_case2_indices"])


def test_bfloat16_decode_is_close_to_float32(codes):
    reference = load_vqgan(PARITY / "vqgan_state_dict.pt", CONFIG).decode(codes).numpy()
    vqgan = load_vqgan(PARITY / "vqgan_state_dict.pt", CONFIG, precision="bfloat16")
    audio = vqgan.decode(codes)
    assert audio.dtype == torch.float32 and audio.shape == reference.shape
    assert not np.array_equal(audio.numpy(), reference)  # it did run in bfloat16
    assert snr_db(reference, audio.numpy()) >= MIN_SNR_DB


def test_bfloat16_encode_stays_float32():
    float32 = load_vqgan(PARITY / "vqgan_state_dict.pt", CONFIG)
    bfloat16 = load_vqgan(PARITY / "vqgan_state_dict.pt", CONFIG, precision="bfloat16")
    audio, _ = sf.read(PARITY / "test_signal.wav", dtype="float32")
    assert torch.equal(float32.encode(torch.from_numpy(audio)), bfloat16.encode(torch.from_numpy(audio)))


def test_bfloat16_streaming_decode_is_close_to_float32(codes):
    vqgan = load_vqgan(PARITY / "vqgan_state_dict.pt", CONFIG, precision="bfloat16")
    decoder = StreamingDecoder(vqgan)
    decoder.push(codes)
    streamed = np.concatenate(decoder.finish())
    reference = load_vqgan(PARITY / "vqgan_state_dict.pt", CONFIG).decode(codes).reshape(-1).numpy()
    assert streamed.shape == reference.shape and snr_db(reference, streamed) >= MIN_SNR_DB


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(ValueError, match="bfloat16"):
        load_vqgan(PARITY / "vqgan_state_dict.pt", CONFIG, precision="float8")


def test_cli_vqgan_precision_option(tiny_checkpoints, tmp_path, codes):
    np.save(tmp_path / "codes.npy", codes.numpy())
    result = run_cli(
        [
            "vqgan",
            "-i",
            tmp_path / "codes.npy",
            "-o",
            tmp_path / "out.wav",
            "--vqgan-precision",
            "bfloat16",
            "--checkpoint-path",
            tiny_checkpoints["vqgan"],
            "--config-name",
            tiny_checkpoints["vqgan_config"],
            "--device",
            "cpu",
        ]
    )
    assert result.returncode == 0, result.stderr
    audio, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    assert audio.size == codes.shape[1] * 1024
    bad = run_cli(["vqgan", "-i", tmp_path / "codes.npy", "--vqgan-precision", "float8"])
    assert bad.returncode == 2 and "float8" in bad.stderr

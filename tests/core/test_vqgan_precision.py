"""`--vqgan-precision bfloat16`: decode in bfloat16 stays close to float32 audio (SNR), streams the same
way, and is plumbed through the engine, the CLI and the server's load options; "auto" picks it where it
measures faster."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from core import tuning
from core.vqgan import load_vqgan, precision
from core.vqgan.streaming import StreamingDecoder
from tests.helpers import run_cli, set_speedup
from tests.paths import PARITY
from tests.tolerances import MIN_SNR_DB, snr_db

CONFIG = str(PARITY / "vqgan_config.json")


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


def test_a_bfloat16_resblock_rounds_only_each_convs_input_and_weight():
    """Between a resblock's two convs the activations stay bfloat16 (no float32 round trip), and the result
    is still the float32-between-convs formula: each conv's input and weight rounded once, nothing else
    (a leaky ReLU or residual sum in bfloat16 would be off by ~2^-9 of a value, far past the bound)."""
    vqgan = load_vqgan(PARITY / "vqgan_state_dict.pt", CONFIG, precision="bfloat16")
    block = vqgan.generator.resblocks[4]
    x = torch.randn(1, block.convs1[0].in_channels, 300, generator=torch.Generator().manual_seed(3))

    def conv(c, h):  # rounds input and weight, sums in float32, returns float32
        w = c.weight.to(torch.bfloat16)
        return F.conv1d(h.to(torch.bfloat16), w, c.bias.to(torch.bfloat16), 1, c.padding, c.dilation).float()

    expected = x
    for c1, c2 in zip(block.convs1, block.convs2, strict=True):
        h = conv(c1, F.leaky_relu(expected, 0.1))
        expected = conv(c2, F.leaky_relu(h, 0.1)) + expected
    with torch.inference_mode():
        got = block(x)
    assert got.dtype == torch.float32
    # oneDNN's and torch's convs may sum in other orders: bound by float32 sums of the rounded products
    bound = 8 * torch.finfo(torch.float32).eps * math.sqrt(block.convs1[0].in_channels * 11) * expected.abs().max()
    assert (got - expected).abs().max() <= bound


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


@pytest.fixture
def vqgan():
    return load_vqgan(PARITY / "vqgan_state_dict.pt", CONFIG)


@pytest.fixture
def measured(monkeypatch, tmp_path):
    """A CPU with native bfloat16, an empty cache, and bfloat16's speed-up as the test sets it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(precision, "cpu_has_fast_bfloat16", lambda: True)
    return set_speedup(monkeypatch, precision, "bfloat16_speedup")


@pytest.mark.parametrize(("speedup", "chosen"), [(2.0, "bfloat16"), (1.2, "float32")])
def test_auto_takes_bfloat16_only_where_it_measures_fast_enough_and_remembers(vqgan, measured, speedup, chosen):
    measured.value = speedup
    assert precision.resolve_precision(vqgan, "auto") == chosen
    assert precision.resolve_precision(vqgan, "auto") == chosen
    assert len(measured.timings) == 1  # the second came from the cache
    assert precision.resolve_precision(vqgan, "float32") == "float32"  # asked for: never measured


def test_auto_measures_again_over_a_corrupt_cache(vqgan, measured):
    tuning.cache_file(precision.CACHE_NAME).parent.mkdir(parents=True)
    tuning.cache_file(precision.CACHE_NAME).write_text("{not json")
    measured.value = 2.0
    assert precision.resolve_precision(vqgan, "auto") == "bfloat16" and len(measured.timings) == 1


def test_auto_is_float32_without_native_bfloat16(vqgan, measured, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_fast_bfloat16", lambda: False)
    measured.value = 100.0
    assert precision.resolve_precision(vqgan, "auto") == "float32" and not measured.timings


def test_the_speedup_is_timed_on_the_models_generator_and_leaves_its_precision(vqgan):
    vqgan.decode_dtype = torch.bfloat16
    assert 0 < precision.bfloat16_speedup(vqgan) < math.inf
    assert vqgan.decode_dtype == torch.bfloat16


def test_auto_through_the_loader_sets_the_chosen_precision(measured):
    measured.value = 2.0
    vqgan = load_vqgan(PARITY / "vqgan_state_dict.pt", CONFIG, precision="auto")
    assert vqgan.decode_dtype == torch.bfloat16

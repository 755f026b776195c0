"""The VQGAN's convs on weights packed once for oneDNN (core/convs.py, core/vqgan/packing.py): the same
audio, whole and streamed, and chosen where it measures faster, once per machine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core import convs, tuning
from core.vqgan import load_vqgan, packing
from core.vqgan.streaming import StreamingDecoder
from tests.helpers import set_packing_speedup
from tests.paths import PARITY
from tests.tolerances import longest_reduction, network_atol

CONFIG = str(PARITY / "vqgan_config.json")
onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.fixture
def vqgan():
    return load_vqgan(PARITY / "vqgan_state_dict.pt", CONFIG)


@pytest.fixture(scope="module")
def codes():
    return torch.from_numpy(np.load(PARITY / "case3_decode.npz")["from_case2_indices"])


def _streamed(vqgan, codes) -> np.ndarray:
    decoder = StreamingDecoder(vqgan)
    chunks = []
    for start in range(0, codes.shape[1], 5):
        decoder.push(codes[:, start : start + 5])
        chunks += decoder.chunks()
    return np.concatenate(chunks + decoder.finish())


@onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_weights_decode_the_same_audio(vqgan, codes, dtype):
    vqgan.decode_dtype = dtype
    vqgan.packed_convs = False
    whole, streamed = vqgan.decode(codes).numpy(), _streamed(vqgan, codes)
    vqgan.packed_convs = True
    packed_whole, packed_streamed = vqgan.decode(codes).numpy(), _streamed(vqgan, codes)
    convs = [m for m in vqgan.generator.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))]
    assert convs and all("_packed_weight" in conv.__dict__ for conv in convs)  # each ran on its packed weight
    # the same oneDNN kernels, though torch's own path may take another for some shapes: float rounding
    atol = network_atol(whole, longest_reduction(vqgan), eps=float(torch.finfo(dtype).eps))
    assert packed_whole.shape == whole.shape and np.abs(packed_whole - whole).max() <= atol
    assert packed_streamed.shape == streamed.shape and np.abs(packed_streamed - streamed).max() <= atol


@pytest.fixture
def measured(monkeypatch, tmp_path):
    """An empty cache, and packing's speed-up as the test sets it."""
    return set_packing_speedup(monkeypatch, tmp_path, packing)


def test_the_loader_sets_the_measured_choice(measured):
    measured.value = 2.0
    assert load_vqgan(PARITY / "vqgan_state_dict.pt", CONFIG).packed_convs is True
    measured.value = 0.5
    tuning.cache_file(convs.PACKING_CACHE).unlink()
    assert load_vqgan(PARITY / "vqgan_state_dict.pt", CONFIG).packed_convs is False

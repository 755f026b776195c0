"""Packed conv weights chosen by measuring (core/convs.py: choose_packing), for both codecs that use it:
v0.2's VQGAN (core/vqgan/packing.py) and S1-mini's codec (core/s1/codec/packing.py)."""

from __future__ import annotations

import math

import pytest
import torch

from core import convs, tuning
from core.s1.codec import packing as s1_packing
from core.s1.load import load_codec
from core.vqgan import load_vqgan
from core.vqgan import packing as vqgan_packing
from tests.core.s1.support import S1_CHECKPOINT
from tests.helpers import set_packing_speedup
from tests.paths import PARITY

onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.fixture(params=["vqgan", "s1-codec"])
def codec(request):
    """(the model, its packing module)."""
    if request.param == "vqgan":
        return load_vqgan(PARITY / "vqgan_state_dict.pt", str(PARITY / "vqgan_config.json")), vqgan_packing
    return load_codec(S1_CHECKPOINT / "codec.pth"), s1_packing


@pytest.fixture
def measured(monkeypatch, tmp_path, codec):
    """An empty cache, and packing's speed-up as the test sets it."""
    return set_packing_speedup(monkeypatch, tmp_path, codec[1])


@pytest.mark.parametrize(("speedup", "chosen"), [(1.3, True), (1.02, False), (0.8, False)])
def test_packing_is_chosen_only_where_it_measures_faster_and_remembered(codec, measured, speedup, chosen):
    model, packing = codec
    measured.value = speedup
    assert packing.resolve_packed_convs(model) is chosen and model.packed_convs is chosen
    assert packing.resolve_packed_convs(model) is chosen
    assert len(measured.timings) == 1  # the second came from the cache
    model.decode_dtype = torch.bfloat16  # another precision is measured on its own
    measured.value = 1.0 if chosen else 2.0
    assert packing.resolve_packed_convs(model) is not chosen and len(measured.timings) == 2


def test_packing_is_measured_again_over_a_corrupt_cache(codec, measured):
    tuning.cache_file(convs.PACKING_CACHE).parent.mkdir(parents=True)
    tuning.cache_file(convs.PACKING_CACHE).write_text("[1, 2")
    measured.value = 2.0
    assert codec[1].resolve_packed_convs(codec[0]) is True and len(measured.timings) == 1


def test_no_packing_without_onednn(codec, measured, monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    measured.value = 100.0
    assert codec[1].resolve_packed_convs(codec[0]) is False and not measured.timings


@onednn
def test_the_speedup_is_timed_on_the_models_stream_and_leaves_its_setting(codec):
    model, packing = codec
    for setting in (True, False):
        model.packed_convs = setting
        assert 0 < packing.packed_speedup(model) < math.inf
        assert model.packed_convs is setting


@onednn
@pytest.mark.parametrize("chosen", [True, False])
def test_the_real_measurement_leaves_one_weight_copy_per_conv(codec, monkeypatch, tmp_path, chosen):
    """Timing both paths builds both copies of each weight; the chosen path keeps only its own."""
    model, packing = codec
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    real = packing.packed_speedup
    monkeypatch.setattr(packing, "packed_speedup", lambda m: (real(m), 2.0 if chosen else 0.5)[1])
    assert packing.resolve_packed_convs(model) is chosen
    found = [m for m in model.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))]
    found += [m.__dict__["_phase_conv"][2] for m in found if "_phase_conv" in m.__dict__]
    kept, dropped = ("_packed_weight", "_weight_2d") if chosen else ("_weight_2d", "_packed_weight")
    assert sum(kept in m.__dict__ for m in found) >= 10 and not any(dropped in m.__dict__ for m in found)

"""The official key layouts (shared/reference-s1/manifests, copied to tests/data/s1/manifests) go through the
real loaders: the official codec.pth and a model.pth of the estimated S1-mini size would load, key for key
and shape for shape. Meta tensors stand in for the 1.9 + 1.7 GB files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.s1.codec import Codec
from core.s1.config import CodecConfig, DualARConfig
from core.s1.lm import DualARTransformer
from core.s1.load import normalize_codec_state, normalize_lm_state, strict_load

from .support import S1_DATA

MANIFESTS = S1_DATA / "manifests"


def manifest(name: str) -> dict:
    return json.loads((MANIFESTS / name).read_text(encoding="utf-8"))


def meta_state(entries: dict) -> dict[str, torch.Tensor]:
    return {k: torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device="meta") for k, v in entries.items()}


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_official_codec_layout_loads_into_the_default_codec():
    official = manifest("codec_modded_dac_vq.json")
    with torch.device("meta"):
        codec = Codec(CodecConfig())
    strict_load(codec, normalize_codec_state(meta_state(official["state_dict"])), Path("codec.pth"))
    # weight norm is folded here: the magnitudes g (one per output channel) are no separate parameters
    magnitudes = sum(
        torch.Size(v["shape"]).numel()
        for k, v in official["state_dict"].items()
        if k.endswith(("original0", "weight_g"))
    )
    assert parameter_count(codec) + magnitudes == official["total_parameters"] == 391_430_530
    assert codec.frame_length == official["frame_length_samples"] == 2048


def test_estimated_dual_ar_layout_loads_with_its_config():
    estimate = manifest("dual_ar_s1_mini_estimate.json")
    config = DualARConfig(**estimate["model_args"])
    with torch.device("meta"):
        model = DualARTransformer(config, 151658, 151658 + 4095)
    strict_load(model, normalize_lm_state(meta_state(estimate["state_dict"])), Path("model.pth"))
    assert parameter_count(model) == estimate["total_parameters"] == 872_753_152


def test_a_different_official_config_would_be_caught_by_shape():
    estimate = manifest("dual_ar_s1_mini_estimate.json")
    config = DualARConfig(**{**estimate["model_args"], "n_local_heads": 2, "fast_n_local_heads": 2})
    with torch.device("meta"):
        model = DualARTransformer(config, 151658, 151658 + 4095)
    with pytest.raises(ValueError, match=r"layers.0.attention.wqkv.weight: checkpoint \(4096, 1024\) vs model"):
        strict_load(model, normalize_lm_state(meta_state(estimate["state_dict"])), Path("model.pth"))

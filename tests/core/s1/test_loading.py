"""Loading the S1 files in their real layouts and wrappings; every bad key named in the error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from core.checkpoints import CheckpointError
from core.s1.config import S1ConfigError
from core.s1.load import load_codec, load_dual_ar

from .support import (
    S1_CHECKPOINT,
    codec_cases,
    dual_ar_cases,
)


def copy_folder(tmp_path):
    folder = tmp_path / "s1"
    shutil.copytree(S1_CHECKPOINT, folder)
    return folder


def slow_logits(model):
    prompt = torch.from_numpy(dual_ar_cases()["prompt_noref"])
    with torch.inference_mode():
        return model.forward_slow(prompt[None], torch.arange(prompt.size(1)))[0]


@pytest.fixture(scope="module")
def reference_logits():
    return slow_logits(load_dual_ar(S1_CHECKPOINT)[0])


@pytest.fixture(scope="module")
def lm_state():
    return torch.load(S1_CHECKPOINT / "model.pth", weights_only=True)


def test_official_file_with_stored_kv_caches_loads(lm_state):
    assert any("kv_cache" in k for k in lm_state)  # the parity file stores them like a saved live model
    model, _ = load_dual_ar(S1_CHECKPOINT)
    assert torch.equal(model.embeddings.weight, lm_state["embeddings.weight"])


def test_lightning_wrapping_and_split_qkv_load_to_the_same_model(tmp_path, lm_state, reference_logits):
    folder = copy_folder(tmp_path)
    state = {}
    for key, value in lm_state.items():
        if key.endswith("attention.wqkv.weight"):
            q, k, v = value.split([64, 32, 32])  # n_head·head_dim, then n_local_heads·head_dim twice
            prefix = key.removesuffix("wqkv.weight")
            state.update({f"model.{prefix}wq.weight": q, f"model.{prefix}wk.weight": k, f"model.{prefix}wv.weight": v})
        else:
            state[f"model.{key}"] = value
    state["model.audio_projector.weight"] = torch.zeros(2, 2)  # dropped like the original
    torch.save({"state_dict": state, "global_step": 3}, folder / "model.pth")
    torch.testing.assert_close(slow_logits(load_dual_ar(folder)[0]), reference_logits, rtol=0, atol=0)


def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path, lm_state):
    folder = copy_folder(tmp_path)
    state = dict(lm_state)
    del state["fast_norm.weight"]
    state["layers.0.attention.extra.weight"] = torch.zeros(1)
    state["norm.weight"] = torch.zeros(65)
    torch.save(state, folder / "model.pth")
    with pytest.raises(CheckpointError) as error:
        load_dual_ar(folder)
    message = str(error.value)
    assert "missing keys: fast_norm.weight" in message
    assert "unexpected keys: layers.0.attention.extra.weight" in message
    assert "norm.weight: checkpoint (65,) vs model (64,)" in message


def test_config_problems_are_clear(tmp_path):
    folder = copy_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_layers": 3}))
    with pytest.raises(S1ConfigError, match=r"unknown config keys \['n_layers'\]"):
        load_dual_ar(folder)
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "naive"}))
    with pytest.raises(S1ConfigError, match="naive"):
        load_dual_ar(folder)
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 1000}))
    with pytest.raises(CheckpointError, match="vocab_size is 1000"):
        load_dual_ar(folder)
    for changes in (
        {"dim": -1},
        {"dim": 64.5},
        {"n_head": 0},
        {"norm_eps": -1},
        {"fast_dim": -2},
        {"max_seq_len": 10**9},
    ):
        (folder / "config.json").write_text(json.dumps({**config, **changes}))
        (name,) = changes
        with pytest.raises(S1ConfigError, match=f"{name} must be a"):  # not an error deep inside the model
            load_dual_ar(folder)
    for changes in ({"attention_qk_norm": "yes"}, {"fast_attention_qkv_bias": 1}, {"tie_word_embeddings": None}):
        (folder / "config.json").write_text(json.dumps({**config, **changes}))
        (name,) = changes
        with pytest.raises(S1ConfigError, match=f"{name} must be true or false"):  # ("yes" was read as true)
            load_dual_ar(folder)
    (folder / "config.json").unlink()
    with pytest.raises(S1ConfigError, match="not found"):
        load_dual_ar(folder)


@pytest.mark.parametrize(
    "change, said",
    [
        ({"sample_rate": 0}, "sample_rate must be a whole number >= 1"),  # (it loaded; each request then failed)
        ({"transformer_general_config": []}, "not a modded-DAC codec config"),  # (a 500)
        ({"encoder_rates": []}, "encoder_rates must be a list of whole numbers >= 1"),  # ("zip() argument 2 ...")
        ({"encoder_transformer_layers": [0, 0]}, "one count for each of encoder_rates"),
    ],
)
def test_codec_config_problems_are_clear(tmp_path, change, said):
    folder = copy_folder(tmp_path)
    config = json.loads((folder / "codec_config.json").read_text())
    (folder / "codec_config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(S1ConfigError, match=said):
        load_codec(folder / "codec.pth")


def test_a_codec_quantizer_module_that_is_not_a_map_is_clear(tmp_path):
    folder = copy_folder(tmp_path)
    config = json.loads((folder / "codec_config.json").read_text())
    config["quantizer"]["pre_module"] = []
    (folder / "codec_config.json").write_text(json.dumps(config))
    with pytest.raises(S1ConfigError, match="not a modded-DAC codec config"):
        load_codec(folder / "codec.pth")


def test_not_a_weights_file_is_refused(tmp_path):
    folder = copy_folder(tmp_path)
    (folder / "model.pth").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a loadable weights file"):
        load_dual_ar(folder)


# -- codec -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def codec_state():
    return torch.load(S1_CHECKPOINT / "codec.pth", weights_only=True)


def decoded(codec):
    return codec.decode(torch.from_numpy(codec_cases()["random_codes"]))


def test_file_holds_both_weight_norm_conventions_and_buffers(codec_state):
    assert any(k.endswith("parametrizations.weight.original0") for k in codec_state)
    assert any(k.endswith(".weight_g") for k in codec_state)
    assert any(k.endswith("freqs_cis") for k in codec_state)


def test_rope_buffers_stored_in_the_file_equal_the_computed_tables(codec_state):
    codec = load_codec(S1_CHECKPOINT / "codec.pth")
    stored = codec_state["quantizer.pre_module.freqs_cis"]
    assert torch.equal(codec.quantizer.pre_module.rope(stored.size(0), torch.device("cpu")), stored)


def test_legacy_weight_norm_and_generator_prefix_load_identically(tmp_path, codec_state):
    """Every parametrized pair rewritten as weight_g/weight_v, every key under `generator.`: same audio."""
    folder = copy_folder(tmp_path)
    state = {}
    for key, value in codec_state.items():
        key = key.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        )
        state[f"generator.{key}"] = value
    state["discriminator.conv.weight"] = torch.zeros(1)  # a GAN checkpoint's other half is ignored
    torch.save({"state_dict": state}, folder / "codec.pth")
    reference = decoded(load_codec(S1_CHECKPOINT / "codec.pth"))
    torch.testing.assert_close(decoded(load_codec(folder / "codec.pth")), reference, rtol=0, atol=0)


def test_codec_key_problems_are_named(tmp_path, codec_state):
    folder = copy_folder(tmp_path)
    state = dict(codec_state)
    del state["decoder.model.6.conv.parametrizations.weight.original0"]
    del state["quantizer.pre_module.norm.weight"]
    torch.save(state, folder / "codec.pth")
    with pytest.raises(CheckpointError) as error:
        load_codec(folder / "codec.pth")
    assert "decoder.model.6.conv: weight norm needs both" in str(error.value)
    state["decoder.model.6.conv.parametrizations.weight.original0"] = codec_state[
        "decoder.model.6.conv.parametrizations.weight.original0"
    ]
    torch.save(state, folder / "codec.pth")
    with pytest.raises(CheckpointError, match="missing keys: quantizer.pre_module.norm.weight"):
        load_codec(folder / "codec.pth")


def test_official_preset_is_used_without_codec_config(tmp_path):
    """Without codec_config.json the official 44.1 kHz codec is built: the tiny file then fails by shape."""
    folder = copy_folder(tmp_path)
    (folder / "codec_config.json").unlink()
    with pytest.raises(
        CheckpointError, match=r"decoder.model.0.conv.weight: checkpoint \(64, 128, 7\) vs model \(1536, 1024, 7\)"
    ):
        load_codec(folder / "codec.pth")


def test_decoded_audio_is_finite_and_bounded():
    audio = decoded(load_codec(S1_CHECKPOINT / "codec.pth")).numpy()
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1

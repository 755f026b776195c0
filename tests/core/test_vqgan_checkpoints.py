"""VQGAN checkpoint loading: the official layout, every file wrapping, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.checkpoints import CheckpointError
from core.vqgan import VQGAN, VQGANConfig, checkpoint_layout, load_vqgan, load_vqgan_config, vqgan_from_state_dict
from tests.paths import DATA

PARITY = DATA / "parity"
SMALL_CONFIG = str(PARITY / "vqgan_config.json")
WN_G, WN_V = ".parametrizations.weight.original0", ".parametrizations.weight.original1"


@pytest.fixture(scope="module")
def manifest() -> dict[str, dict]:
    return json.loads((DATA / "manifests" / "vqgan_pretrain.json").read_text())["keys"]


@pytest.fixture(scope="module")
def small_sd() -> dict[str, torch.Tensor]:
    return torch.load(PARITY / "vqgan_state_dict.pt", weights_only=True)


@pytest.fixture(scope="module")
def small_codes() -> torch.Tensor:
    with np.load(PARITY / "case3_decode.npz") as z:
        return torch.from_numpy(z["random_indices"])


@pytest.fixture(scope="module")
def reference_audio(small_sd, small_codes) -> torch.Tensor:
    return vqgan_from_state_dict(small_sd, SMALL_CONFIG).decode(small_codes)


def save(obj, tmp_path: Path, name: str = "vqgan.pth") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


# -- (a) the official-size model against the manifest of the real checkpoint -----------------------


def test_default_config_is_the_official_preset():
    config = load_vqgan_config("vqgan_pretrain")
    assert config == VQGANConfig()
    assert config.samples_per_code == 1024
    assert (config.vq.codebook_groups, config.vq.codebook_size) == (4, 160)


def test_official_model_reads_exactly_the_manifest_inference_keys(manifest):
    with torch.device("meta"):
        model = VQGAN(VQGANConfig())
    layout = checkpoint_layout(model)
    inference = {k: tuple(v["shape"]) for k, v in manifest.items() if v["role"] == "inference"}
    assert sorted(set(layout) - set(inference)) == []
    assert sorted(set(inference) - set(layout)) == []
    assert {k: s for k, s in layout.items() if inference[k] != s} == {}


def test_state_dict_with_exactly_the_manifest_keys_loads(manifest):
    fake = {k: torch.empty(v["shape"], device="meta") for k, v in manifest.items()}
    model = vqgan_from_state_dict(fake, "vqgan_pretrain", device="meta")
    assert not model.training
    assert model.generator.conv_post.weight.shape == (1, 32, 7)
    assert model.generator.ups[0].weight.shape == (512, 256, 16)  # ConvTranspose1d: [in, out, k]
    assert model.vq_encoder.vq.codebooks.shape == (4, 160, 64)


def test_inference_parameter_count_matches_the_manifest():
    config = json.loads((DATA / "manifests" / "vqgan_pretrain.json").read_text())
    with torch.device("meta"):
        model = VQGAN(VQGANConfig())
    layout = checkpoint_layout(model)
    parameters = {k for k, v in config["keys"].items() if v["kind"] == "parameter"}
    assert sum(int(np.prod(s)) for k, s in layout.items() if k in parameters) == config["inference_parameters"]


# -- (b) every wrapping the real file may have -----------------------------------------------------


def legacy_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace(WN_G, ".weight_g").replace(WN_V, ".weight_v"): v for k, v in sd.items()}


def with_discriminator(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    extra = {
        "discriminator.discriminators.0.convs.0.bias": torch.zeros(32),
        "discriminator.discriminators.0.convs.0.weight_g": torch.ones(32, 1, 1),
        "discriminator.discriminators.0.convs.0.weight_v": torch.ones(32, 1, 5, 1),
    }
    return {**sd, **extra}


WRAPPINGS = {
    "flat": lambda sd: sd,
    "lightning": lambda sd: {"state_dict": sd, "epoch": 3, "global_step": 1000, "pytorch-lightning_version": "2.1.0"},
    "legacy_weight_norm": legacy_names,
    "with_discriminator": with_discriminator,
    "lightning_legacy_with_discriminator": lambda sd: {"state_dict": with_discriminator(legacy_names(sd))},
}


@pytest.mark.parametrize("wrapping", sorted(WRAPPINGS))
def test_every_checkpoint_wrapping_decodes_identically(wrapping, small_sd, small_codes, reference_audio, tmp_path):
    path = save(WRAPPINGS[wrapping](dict(small_sd)), tmp_path)
    model = load_vqgan(path, SMALL_CONFIG)
    assert torch.equal(model.decode(small_codes), reference_audio)


def test_legacy_weight_norm_names_cover_the_transposed_convs(small_sd):
    legacy = legacy_names(small_sd)
    assert legacy["generator.ups.0.weight_g"].shape == (64, 1, 1)  # g per *input* channel
    assert not any(".parametrizations." in k for k in legacy)


def test_checkpoint_without_mel_buffers_falls_back_to_computed_ones(small_sd, small_codes, reference_audio):
    sd = {k: v for k, v in small_sd.items() if not k.startswith("mel_transform.")}
    model = vqgan_from_state_dict(sd, SMALL_CONFIG)
    torch.testing.assert_close(model.mel_transform.fb, small_sd["mel_transform.mel_scale.fb"], atol=1e-6, rtol=0)
    assert torch.equal(model.decode(small_codes), reference_audio)


def test_weight_norm_is_folded_into_plain_conv_weights(small_sd):
    model = vqgan_from_state_dict(small_sd, SMALL_CONFIG)
    assert not any("parametrizations" in k for k in model.state_dict())
    g = small_sd["generator.ups.1" + WN_G]
    v = small_sd["generator.ups.1" + WN_V]
    expected = torch._weight_norm(v, g, 0)
    torch.testing.assert_close(model.generator.ups[1].weight, expected, atol=1e-7, rtol=1e-6)


def test_vq_training_buffers_are_ignored_even_unknown_ones(small_sd, small_codes, reference_audio):
    sd = {k: v for k, v in small_sd.items() if not k.endswith(("initted", "cluster_size", "embed_avg"))}
    sd["vq_encoder.vq.rvqs.0.layers.0._codebook.batch_mean"] = torch.zeros(1)
    assert torch.equal(vqgan_from_state_dict(sd, SMALL_CONFIG).decode(small_codes), reference_audio)


# -- (c) checkpoints that do not fit -------------------------------------------------------------


def test_missing_key_is_named(small_sd, tmp_path):
    key = "generator.resblocks.1.convs2.0.bias"
    sd = {k: v for k, v in small_sd.items() if k != key}
    with pytest.raises(CheckpointError, match=rf"missing keys: .*{key}"):
        load_vqgan(save(sd, tmp_path), SMALL_CONFIG)


def test_missing_codebook_is_named(small_sd):
    key = "vq_encoder.vq.rvqs.2.layers.0._codebook.embed"
    with pytest.raises(CheckpointError, match=key):
        vqgan_from_state_dict({k: v for k, v in small_sd.items() if k != key}, SMALL_CONFIG)


def test_wrong_shape_is_named(small_sd, tmp_path):
    key = "decoder.in_layers.1" + WN_V
    sd = {**small_sd, key: torch.zeros(64, 32, 5)}
    with pytest.raises(CheckpointError, match=rf"{key}: checkpoint \(64, 32, 5\)"):
        load_vqgan(save(sd, tmp_path), SMALL_CONFIG)


def test_unexpected_key_is_named(small_sd, tmp_path):
    sd = {**small_sd, "generator.extra_conv.weight": torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"unexpected keys: generator\.extra_conv\.weight"):
        load_vqgan(save(sd, tmp_path), SMALL_CONFIG)


def test_small_checkpoint_with_official_config_fails_clearly(small_sd, tmp_path):
    with pytest.raises(CheckpointError, match="does not fit the config: missing keys"):
        load_vqgan(save(small_sd, tmp_path), "vqgan_pretrain")


def test_both_weight_norm_spellings_at_once_are_rejected(small_sd):
    sd = {**small_sd, "generator.conv_pre.weight_g": small_sd["generator.conv_pre" + WN_G]}
    with pytest.raises(CheckpointError, match="generator.conv_pre"):
        vqgan_from_state_dict(sd, SMALL_CONFIG)


def test_not_a_checkpoint_raises_checkpoint_error(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError):
        load_vqgan(path, SMALL_CONFIG)


# -- (d) bad codes and bad audio -----------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model(small_sd):
    return vqgan_from_state_dict(small_sd, SMALL_CONFIG)


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.full((4, 5), 160), "out of range"),  # QUIRKS 14: the LM can emit 160..165
        (torch.full((4, 5), -1), "out of range"),
        (torch.zeros(3, 5, dtype=torch.long), "shape"),
        (torch.zeros(4, dtype=torch.long), "shape"),
        (torch.zeros(4, 0, dtype=torch.long), "shape"),
        (torch.zeros(1, 4, 5, dtype=torch.long), "shape"),
        (torch.zeros(4, 5), "integers"),
        (torch.zeros(4, 5, dtype=torch.bool), "integers"),
    ],
)
def test_bad_codes_raise_value_error(small_model, bad, message):
    with pytest.raises(ValueError, match=message):
        small_model.decode(bad)


def test_codes_at_the_range_edges_decode(small_model):
    audio = small_model.decode(torch.tensor([[0, 159]] * 4))
    assert audio.shape == (1, 1, 2048) and audio.abs().max() <= 1


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(1, 1, 1000),
        torch.zeros(2, 1, 4096),
        torch.zeros(1, 2, 4096),
        torch.zeros(1, 1, 4096, dtype=torch.long),
    ],
)
def test_bad_audio_raises_value_error(small_model, bad):
    with pytest.raises(ValueError):
        small_model.encode(bad)


# -- configs ---------------------------------------------------------------------------------------


def test_unknown_config_name_is_a_value_error():
    with pytest.raises(ValueError, match="unknown VQGAN config"):
        load_vqgan_config("vqgan_pretrain_v2")


def test_bad_json_config_is_a_value_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_vqgan_config(str(path))


def test_json_config_missing_a_section_is_a_value_error(tmp_path):
    data = json.loads(Path(SMALL_CONFIG).read_text())
    del data["generator"]
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="generator"):
        load_vqgan_config(str(tmp_path / "c.json"))


def test_unsupported_json_setting_is_a_value_error(tmp_path):
    data = json.loads(Path(SMALL_CONFIG).read_text())
    data["generator"]["resblock"] = "2"
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="resblock"):
        load_vqgan_config(str(tmp_path / "c.json"))


def test_manifest_model_config_parses_to_the_default_preset():
    # The official YAML's model section (with optimizer, discriminator, ...) gives the preset.
    section = json.loads((DATA / "manifests" / "vqgan_pretrain.json").read_text())["model_config"]
    from core.vqgan.config import vqgan_config_from_dict

    assert vqgan_config_from_dict(section) == VQGANConfig()

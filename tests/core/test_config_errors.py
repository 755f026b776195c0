"""A user's bad config file or tokenizer folder is a one-line ValueError naming what is wrong, never a
TypeError / ZeroDivisionError / tokenizers Exception from deep inside (the CLI and server show ValueErrors)."""

from __future__ import annotations

import json
import shutil

import pytest

from core.lm import load_lm_config, load_tokenizer
from core.vqgan import VQGAN, VQGANConfig, load_vqgan_config
from tests.paths import PARITY

VQGAN_JSON = PARITY / "vqgan_config.json"
LM_JSON = PARITY / "cli_configs" / "llama.json"


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# -- tokenizer folders -------------------------------------------------------------------------------


def _tokenizer_copy(tmp_path, name: str, text: str):
    folder = tmp_path / "tokenizer"
    shutil.copytree(PARITY / "tokenizer", folder)
    (folder / name).write_text(text)
    return folder


def test_the_parity_tokenizer_still_loads():
    tokenizer = load_tokenizer(PARITY / "tokenizer")
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 2)
    assert tokenizer.encode("hello")[0] == 1


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("tokenizer.json", "{bad", "tokenizer.json is not a valid tokenizer.json"),
        ("tokenizer.json", "{}", "tokenizer.json is not a valid tokenizer.json"),
        ("tokenizer_config.json", "{bad", "tokenizer_config.json is not valid JSON"),
        ("tokenizer_config.json", "[1]", "tokenizer_config.json must hold a JSON object"),
        ("tokenizer_config.json", '{"eos_token": 5}', "tokenizer_config.json: eos_token must be a string"),
        ("special_tokens_map.json", '{"bos_token": {"content": 1}}', "special_tokens_map.json: bos_token must be"),
        ("tokenizer_config.json", '{"tokenizer_class": ["x"]}', "tokenizer_config.json: tokenizer_class must be"),
    ],
)
def test_bad_tokenizer_files_are_value_errors(tmp_path, name, text, message):
    folder = _tokenizer_copy(tmp_path, name, text)
    with pytest.raises(ValueError, match=message) as exc:
        load_tokenizer(folder)
    _one_line(exc)


# -- VQGAN config ------------------------------------------------------------------------------------


def test_the_valid_vqgan_configs_still_load():
    config = load_vqgan_config(str(VQGAN_JSON))
    assert config.vq.codebook_groups == 4 and config.downsample.strides == (2, 2)
    assert load_vqgan_config("vqgan_pretrain") == VQGANConfig()
    VQGAN(config)  # the model builds from it


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("vq_encoder", "codebook_groups", 0, "vq_encoder.codebook_groups must be a whole number >= 1, got 0"),
        ("downsample", "strides", [0, 2], r"downsample.strides must be a non-empty list of whole numbers"),
        ("downsample", "dims", [], r"downsample.dims must be a non-empty list"),
        ("mel_encoder", "n_layers", "2", "mel_encoder.n_layers must be a whole number >= 1, got '2'"),
        ("mel_encoder", "kernel_size", None, "mel_encoder.kernel_size must be a whole number >= 1, got None"),
        ("decoder", "out_channels", -80, "decoder.out_channels must be a whole number"),
        ("mel_transform", "f_max", "8000", "mel_transform.f_max must be a finite number"),
        ("mel_transform", "n_fft", 1024.5, "mel_transform.n_fft must be a whole number"),
        ("generator", "upsample_rates", 256, "generator.upsample_rates must be a non-empty list"),
        ("generator", "resblock_dilation_sizes", [[1, 3, 5], 2], "generator.resblock_dilation_sizes must be"),
        (None, "hop_length", True, "hop_length must be a whole number"),
    ],
)
def test_bad_vqgan_config_numbers_are_value_errors(tmp_path, section, key, value, message):
    data = json.loads(VQGAN_JSON.read_text())
    (data[section] if section else data)[key] = value
    path = tmp_path / "vqgan.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as exc:
        load_vqgan_config(str(path))
    assert _one_line(exc).startswith("VQGAN config: ")


# -- LM config LoRA entry ----------------------------------------------------------------------------


def test_the_valid_lm_configs_still_load(tmp_path):
    assert load_lm_config(str(LM_JSON)).lora is None
    data = json.loads(LM_JSON.read_text())
    data["lora"] = {"r": 4, "lora_alpha": 8}
    (tmp_path / "lm.json").write_text(json.dumps(data))
    lora = load_lm_config(str(tmp_path / "lm.json")).lora
    assert (lora.rank, lora.alpha, lora.scaling) == (4, 8.0, 2.0)
    assert load_lm_config("text2semantic_finetune_lora").lora.rank == 8


@pytest.mark.parametrize(
    "lora, message",
    [
        ([1], "lora must be an object with rank and alpha"),
        ("yes", "lora must be an object with rank and alpha"),
        ({"rank": "eight"}, "lora rank and alpha must be numbers"),
        ({"rank": 8, "alpha": [16]}, "lora rank and alpha must be numbers"),
        ({"rank": 0}, "lora.rank must be a whole number >= 1"),
        ({"rank": 8, "alpha": "nan"}, "lora.alpha must be a finite number"),
    ],
)
def test_bad_lora_entries_are_value_errors(tmp_path, lora, message):
    data = json.loads(LM_JSON.read_text())
    data["lora"] = lora
    path = tmp_path / "lm.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as exc:
        load_lm_config(str(path))
    _one_line(exc)

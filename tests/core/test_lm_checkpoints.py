"""LM checkpoint loading: the official key manifests, every wrapping the real files may have,
LoRA merging, and clear errors for checkpoints that do not fit."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from core.checkpoints import CheckpointError
from core.lm import load_lm, load_lm_config
from core.lm.config import ModelArgs
from core.lm.load import build_lm
from core.lm.model import Transformer
from tests.paths import DATA, PARITY
from tests.tolerances import BFLOAT16_EPS, longest_reduction, network_atol

CONFIG = str(PARITY / "llama_config.json")


def _manifest(name: str) -> dict:
    return json.loads((DATA / "manifests" / f"{name}.json").read_text())


@pytest.mark.parametrize("name", ["text2semantic_finetune", "text2semantic_finetune_lora"])
def test_official_model_parameters_are_in_the_manifest(name):
    manifest = _manifest(name)
    config = load_lm_config(name)
    with torch.device("meta"):
        model = Transformer(config.model)
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) == manifest["total_parameters_without_lora"]
    for key, param in params.items():
        assert key in manifest["keys"], key
        assert list(param.shape) == manifest["keys"][key]["shape"], key


@pytest.mark.parametrize("name", ["text2semantic_finetune", "text2semantic_finetune_lora"])
@pytest.mark.parametrize("lightning", [False, True])
def test_a_state_dict_with_exactly_the_manifest_keys_loads(name, lightning):
    manifest = _manifest(name)
    prefix = "model." if lightning else ""
    state = {
        prefix + k: torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device="meta")
        for k, v in manifest["keys"].items()
    }
    model = build_lm(state, name, device="meta")
    assert model.config.n_layer == 24 and model.embeddings.weight.shape == (37080, 1024)


def _reference_logits(model) -> torch.Tensor:
    x = torch.from_numpy(np.load(PARITY / "case4_forward.npz")["x"])
    with torch.inference_mode():
        return model(x).codebook_logits


@pytest.fixture(scope="module")
def plain_state():
    return torch.load(PARITY / "llama_state_dict.pt", weights_only=True)


@pytest.fixture(scope="module")
def expected_logits(plain_state):
    return _reference_logits(load_lm(PARITY / "llama_state_dict.pt", CONFIG))


def _split_qkv(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        if key.endswith("wqkv.weight"):
            q, k, v = value.chunk(3, dim=0)
            base = key[: -len("wqkv.weight")]
            out.update({base + "wq.weight": q, base + "wk.weight": k, base + "wv.weight": v})
        else:
            out[key] = value
    return out


WRAPPINGS = {
    "flat": lambda s: s,
    "flat-without-buffers": lambda s: {k: v for k, v in s.items() if k not in ("freqs_cis", "causal_mask")},
    "lightning": lambda s: {"state_dict": {f"model.{k}": v for k, v in s.items()}, "epoch": 3},
    "lightning-extracted": lambda s: {f"model.{k}": v for k, v in s.items()},
    "separate-wq-wk-wv": _split_qkv,
    "bfloat16": lambda s: {k: v.bfloat16() if v.is_floating_point() else v for k, v in s.items()},
}


@pytest.mark.parametrize("wrapping", WRAPPINGS)
def test_every_checkpoint_wrapping_loads_the_same_model(tmp_path, plain_state, expected_logits, wrapping):
    path = tmp_path / "model.pth"
    torch.save(WRAPPINGS[wrapping](plain_state), path)
    logits = _reference_logits(load_lm(path, CONFIG))
    # Weights rounded to bfloat16 (each by at most 2^-8 of itself) move a logit by a few such units of the
    # logits' scale (a relative error of the products, not one that grows with the sums' length).
    atol = 2 * BFLOAT16_EPS * float(expected_logits.abs().max()) if wrapping == "bfloat16" else 0
    torch.testing.assert_close(logits, expected_logits, atol=atol, rtol=0)


def test_lora_checkpoint_is_merged_at_load(tmp_path, plain_state):
    gen = torch.Generator().manual_seed(0)
    rank, scaling = 8, 2.0
    lora_state = dict(plain_state)
    merged = dict(plain_state)
    for key, weight in plain_state.items():
        if key == "embeddings.weight":
            a = torch.randn(rank, weight.shape[0], generator=gen) * 0.01
            b = torch.randn(weight.shape[1], rank, generator=gen) * 0.01
            merged[key] = weight + (b @ a).T * scaling
        elif (
            key.endswith(("wqkv.weight", "wo.weight", "w1.weight", "w2.weight", "w3.weight")) or key == "output.weight"
        ):
            a = torch.randn(rank, weight.shape[1], generator=gen) * 0.01
            b = torch.randn(weight.shape[0], rank, generator=gen) * 0.01
            merged[key] = weight + (b @ a) * scaling
        else:
            continue
        name = key[: -len(".weight")]
        lora_state[f"{name}.lora_A"], lora_state[f"{name}.lora_B"] = a, b
    torch.save({"state_dict": {f"model.{k}": v for k, v in lora_state.items()}}, tmp_path / "lora.pth")
    torch.save(merged, tmp_path / "merged.pth")
    lora_config = tmp_path / "lora.json"
    config = json.loads((PARITY / "cli_configs" / "llama.json").read_text())
    lora_config.write_text(json.dumps({**config, "lora": {"r": 8, "lora_alpha": 16}}))
    from_lora = _reference_logits(load_lm(tmp_path / "lora.pth", str(lora_config)))
    from_merged = _reference_logits(load_lm(tmp_path / "merged.pth", CONFIG))
    atol = network_atol(from_merged, longest_reduction(load_lm(tmp_path / "merged.pth", CONFIG)))
    torch.testing.assert_close(from_lora, from_merged, atol=atol, rtol=0)


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda s: s.pop("layers.1.feed_forward.w2.weight"), "layers.1.feed_forward.w2.weight"),
        (lambda s: s.__setitem__("layers.0.extra.weight", torch.zeros(2)), "layers.0.extra.weight"),
        (lambda s: s.__setitem__("norm.weight", torch.ones(64)), "norm.weight"),
    ],
    ids=["missing", "unexpected", "wrong-shape"],
)
def test_checkpoint_that_does_not_fit_names_the_key(tmp_path, plain_state, damage, named):
    state = dict(plain_state)
    damage(state)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=named.replace(".", r"\.")):
        load_lm(tmp_path / "bad.pth", CONFIG)


@pytest.mark.parametrize("change", [{"n_layer": 100_000}, {"dim": 10**12, "n_head": 1}])
def test_a_config_far_larger_than_its_checkpoint_is_refused_before_it_is_built(tmp_path, change):
    """(100,000 layers took a minute to build on the meta device; a dim of 10**12 overflowed there: a 500)"""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**json.loads((PARITY / "cli_configs" / "llama.json").read_text()), **change}))
    with pytest.raises(CheckpointError, match="does not fit the LM config: it holds"):
        load_lm(PARITY / "llama_state_dict.pt", str(config))


def test_official_config_rejects_the_tiny_checkpoint_with_a_clear_error():
    with pytest.raises(CheckpointError, match="does not fit"):
        load_lm(PARITY / "llama_state_dict.pt", "text2semantic_finetune")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_objects_are_never_executed(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    with pytest.raises(CheckpointError):
        load_lm(path, CONFIG)
    assert "pwned" not in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_garbage_files_are_reported_not_crashed_on(tmp_path, content):
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a loadable weights file"):
        load_lm(path, CONFIG)


def test_unknown_config_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown LM config"):
        load_lm_config("text2semantic_nonexistent")


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"dim": 100, "n_head": 16}, "multiple of n_head"),
        ({"dim": 128, "n_head": 4, "n_local_heads": 3}, "multiple of n_local_heads"),
        ({"rope_base": float("inf")}, "rope_base must be a finite number"),
        ({"max_seq_len": True}, "max_seq_len must be a whole number"),
        ({"codebook_padding_idx": -1}, "codebook_padding_idx must be a whole number >= 0"),
    ],
)
def test_config_numbers_no_model_can_have_are_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelArgs(**changes)

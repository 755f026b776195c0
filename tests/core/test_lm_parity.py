"""The LM against the original's golden outputs: forward (case 4), generation (case 5),
prompt encoding (case 7) and the whole `generate` command (case 8)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.frontend import prompt_string
from core.lm import SamplingParams, encode_prompt, generate, load_lm, load_tokenizer
from tests.helpers import run_cli
from tests.paths import PARITY
from tests.tolerances import longest_reduction, network_atol


@pytest.fixture(scope="module")
def model():
    return load_lm(PARITY / "llama_state_dict.pt", str(PARITY / "llama_config.json"))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(PARITY / "tokenizer")


def test_rope_table_equals_the_original_bfloat16_buffer(model):
    stored = torch.load(PARITY / "llama_state_dict.pt", weights_only=True)["freqs_cis"]
    assert model.freqs_cis.dtype == torch.bfloat16
    assert torch.equal(model.freqs_cis, stored)


def test_embedding_sums_the_text_row_and_the_nonzero_codes_as_the_reference_states(model):
    """Each row looks up its own block of the one table (text, then codebook i at 36408 + 168 i); a code 0 is
    padding and adds nothing, a text id 0 is a token like any other (reference SPEC 2.2)."""
    cfg, table = model.config, model.embeddings.weight
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(2, 1 + cfg.num_codebooks, 7, dtype=torch.int)
    x[:, 0] = torch.randint(0, cfg.vocab_size, (2, 7), generator=gen)
    x[:, 1:] = torch.randint(1, cfg.codebook_size, (2, cfg.num_codebooks, 7), generator=gen)
    x[0, 0, 2] = 0  # a text id 0
    x[:, 1:, 4] = 0  # a text column: no codes
    x[1, 3, 5] = 0  # one codebook padded
    terms = [table[x[:, 0].long()].double()]
    for i in range(cfg.num_codebooks):
        codes = x[:, i + 1].long()
        terms.append(table[codes + cfg.vocab_size + i * cfg.codebook_size].double() * (codes != 0).unsqueeze(-1))
    expected, magnitude = sum(terms), sum(t.abs() for t in terms)
    with torch.inference_mode():
        got = model.embed(x)
    # five float32 values summed in some order: four roundings, each at most half an ulp of a partial sum
    bound = 4 * (torch.finfo(torch.float32).eps / 2) * magnitude
    assert ((got.double() - expected).abs() <= bound).all()


def test_forward_logits_match_case4(model):
    case = np.load(PARITY / "case4_forward.npz")
    with torch.inference_mode():
        out = model(torch.from_numpy(case["x"]))
    for name, logits in (("token_logits", out.token_logits), ("codebook_logits", out.codebook_logits)):
        atol = network_atol(case[name], longest_reduction(model))
        np.testing.assert_allclose(logits.numpy(), case[name], atol=atol, rtol=0)


def test_forward_with_key_padding_mask_matches_case4_batch(model):
    case = np.load(PARITY / "case4_forward.npz")
    with torch.inference_mode():
        out = model(torch.from_numpy(case["x_batch"]), torch.from_numpy(case["key_padding_mask"]))
    for name, logits in (("batch_token_logits", out.token_logits), ("batch_codebook_logits", out.codebook_logits)):
        atol = network_atol(case[name], longest_reduction(model))
        np.testing.assert_allclose(logits.numpy(), case[name], atol=atol, rtol=0)


def test_cached_prefill_and_decode_equal_the_full_forward(model):
    """The KV-cache paths (prefill, then one decode step) must compute the plain forward's logits."""
    case = np.load(PARITY / "case4_forward.npz")
    x = torch.from_numpy(case["x"])
    with torch.inference_mode():
        full = model(x)
        model.setup_caches(1, x.size(2) + 8)
        cached = model.prefill(x)
        # then one more position through the cache against the full forward of the longer input
        step = x[:, :, -1:]
        next_out = model.decode(step, torch.tensor([0]), torch.tensor([x.size(2)]))
        full_longer = model(torch.cat([x, step], dim=2))
    for got, expected in (
        (cached.token_logits[:, -1], full.token_logits[:, -1]),
        (next_out.codebook_logits[:, -1], full_longer.codebook_logits[:, -1]),
    ):
        torch.testing.assert_close(got, expected, atol=network_atol(expected, longest_reduction(model)), rtol=0)


@pytest.mark.parametrize("key, penalty", [("output", 1.5), ("output_rep1_0", 1.0)])
@pytest.mark.parametrize("static_cache", [False, True])
def test_generation_is_token_identical_to_case5(model, key, penalty, static_cache):
    case = np.load(PARITY / "case5_generate.npz")
    kwargs = json.loads((PARITY / "case5_generate_config.json").read_text())["generate_kwargs"]
    prompt = torch.from_numpy(case["prompt"])
    params = SamplingParams(
        temperature=kwargs["temperature"], top_p=kwargs["top_p"], top_k=kwargs["top_k"], repetition_penalty=penalty
    )
    model.clear_caches()
    frames = generate(
        model,
        prompt,
        max_new_tokens=kwargs["max_new_tokens"],
        eos_token_id=kwargs["eos_token_id"],
        params=params,
        static_cache=static_cache,
    )[0]
    result = torch.cat([prompt, frames], dim=1)
    assert result.dtype == torch.int32
    np.testing.assert_array_equal(result.numpy(), case[key])


def _case7():
    spec = json.loads((PARITY / "case7_encode_tokens.json").read_text())
    return list(enumerate(spec["cases"]))


@pytest.mark.parametrize("index, case", _case7(), ids=lambda v: str(v) if isinstance(v, int) else "")
def test_prompt_encoding_matches_case7(tokenizer, index, case):
    arrays = np.load(PARITY / "case7_encode_tokens.npz")
    prompt_tokens = torch.from_numpy(arrays[f"case{index}_prompt_tokens"]) if case["prompt_T"] else None
    prompt = prompt_string(case["text"], case["prompt_text"], use_g2p=case["use_g2p"], speaker=case["speaker"])
    encoded = encode_prompt(tokenizer, prompt, prompt_tokens)
    expected = arrays[f"case{index}_encoded"]
    assert [tokenizer.id_to_token(int(t)) for t in encoded[0, : len(case["text_row_tokens"])]] == case[
        "text_row_tokens"
    ]
    np.testing.assert_array_equal(encoded.numpy(), expected)


def test_tokenizer_specials_come_from_the_files(tokenizer):
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 827)
    ids = tokenizer.encode("[INST] hi [/INST]")
    assert ids[0] == 1 and ids.count(1) == 1 and ids[-1] != 2


def _case8():
    spec = json.loads((PARITY / "case8_cli_generate.json").read_text())
    return [pytest.param(sub, id=sub["name"]) for sub in spec["subcases"]]


@pytest.mark.parametrize("sub", _case8())
def test_generate_command_writes_the_original_codes_case8(tiny_checkpoints, tmp_path, sub):
    """Run the real CLI as the original was run (top-k 1, no code mask) and compare codes_0.npy."""
    argv = [a if a != sub["cli_args"]["prompt_tokens"] else str(PARITY / a) for a in sub["cli_argv"]]
    result = run_cli(
        [
            "generate",
            *argv,
            "--checkpoint-path",
            tiny_checkpoints["lm"],
            "--config-name",
            tiny_checkpoints["lm_config"],
            "--tokenizer",
            tiny_checkpoints["tokenizer"],
            "--no-code-mask",
            "--device",
            "cpu",
            "--output-dir",
            tmp_path,
        ]
    )
    assert result.returncode == 0, result.stderr
    codes = np.load(tmp_path / "codes_0.npy")
    expected = np.load(PARITY / "case8_cli_generate.npz")[f"{sub['name']}_codes"]
    assert codes.dtype == expected.dtype
    np.testing.assert_array_equal(codes, expected)

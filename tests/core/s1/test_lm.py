"""The Dual-AR forward passes against the original (dual_ar_cases.npz): slow and fast logits within tolerance."""

from __future__ import annotations

import pytest
import torch

from core.s1.load import load_dual_ar

from .support import (
    GENERATION_CASES,
    S1_CHECKPOINT,
    assert_close,
    dual_ar_cases,
)


@pytest.fixture(scope="module")
def loaded():
    return load_dual_ar(S1_CHECKPOINT)


@pytest.fixture(scope="module")
def cases():
    return dual_ar_cases()


def slow_over_prompt(model, prompt):
    with torch.inference_mode():
        return model.forward_slow(prompt[None], torch.arange(prompt.size(1)), all_positions=True)


def test_config_and_tokenizer_come_from_the_folder(loaded):
    model, tokenizer = loaded
    c = model.config
    assert (c.dim, c.n_layer, c.n_local_heads, c.head_dim, c.num_codebooks, c.codebook_size) == (64, 2, 2, 16, 4, 1280)
    assert (c.fast_dim, c.fast_n_head, c.fast_intermediate_size) == (64, 4, 160)  # fall back to the slow values
    assert model.semantic_begin_id == tokenizer.semantic_begin_id == 557


def test_slow_logits_and_hidden_state_match(loaded, cases):
    model, _ = loaded
    logits, hidden = slow_over_prompt(model, torch.from_numpy(cases["prompt"]))
    assert_close(logits[0], cases["forward_slow_logits"])
    assert_close(hidden[0], cases["forward_slow_hidden"])


def test_fast_logits_match(loaded, cases):
    model, _ = loaded
    _, hidden = slow_over_prompt(model, torch.from_numpy(cases["prompt"]))
    teacher = torch.from_numpy(cases["forward_fast_codes"])
    with torch.inference_mode():
        inputs = torch.cat([hidden[0, -1:], model.fast_embeddings(teacher[:-1])])[None]
        assert_close(model.forward_fast_sequence(inputs)[0], cases["forward_fast_logits"])


@pytest.mark.parametrize("name", sorted(GENERATION_CASES))
def test_prefill_and_first_frame_fast_logits_match(loaded, cases, name):
    """Through the KV caches, as generation runs them: the prefill's last-position logits and the fast
    logits of the first frame at every codebook position (fed the frame's own codes)."""
    model, _ = loaded
    prompt = torch.from_numpy(cases["prompt"])
    first = torch.from_numpy(cases[f"gen_{name}_tokens"][:, 0]).long()
    with torch.inference_mode():
        model.setup_caches(1)
        logits, hidden = model.forward_slow(prompt[None], torch.arange(prompt.size(1)))
        assert_close(logits[0], cases[f"gen_{name}_prefill_logits"])
        model.clear_fast_cache()
        rows = [model.forward_fast(hidden, 0)[0]]
        for k in range(1, model.config.num_codebooks):
            rows.append(model.forward_fast(model.fast_embeddings(first[k : k + 1]), k)[0])
    assert_close(torch.stack(rows), cases[f"gen_{name}_first_frame_fast_logits"])


def test_cached_decode_step_equals_the_uncached_forward(loaded, cases):
    model, _ = loaded
    prompt = torch.from_numpy(cases["prompt"])
    full_logits, full_hidden = slow_over_prompt(model, prompt)
    with torch.inference_mode():
        model.setup_caches(1)
        model.forward_slow(prompt[None, :, :-1], torch.arange(prompt.size(1) - 1))
        step_logits, step_hidden = model.forward_slow(prompt[None, :, -1:], torch.tensor([prompt.size(1) - 1]))
    assert_close(step_logits[0], full_logits[0, -1].numpy())
    assert_close(step_hidden[0], full_hidden[0, -1].numpy())


def test_rope_tables_stay_bfloat16_in_every_run_dtype():
    for dtype in (torch.float32, torch.float16):
        model, _ = load_dual_ar(S1_CHECKPOINT, dtype=dtype)
        assert model.rope.dtype == model.fast_rope.dtype == torch.bfloat16
        assert model.norm.weight.dtype == dtype


def test_the_decode_probe_runs_a_whole_step_and_gives_the_caches_back(loaded):
    """The autotuner times its decode candidates with it (core/lm/autotune.py): a real step of the slow
    stack and every fast position, on scratch caches, leaving the model's own as they were."""
    model, _ = loaded
    model.setup_caches(2, 40)
    before = [block.attention.kv_cache for block in (*model.layers, *model.fast_layers)]
    with torch.inference_mode(), model.decode_probe(3, 17) as step:
        logits = step()
        slow, fast = model.layers[0].attention.kv_cache, model.fast_layers[0].attention.kv_cache
        assert slow.k_cache.size(0) == 3 and fast.k_cache.size(0) == 3
        written = slow.k_cache.abs().sum(dim=(0, 1, 3)) > 0  # per position
        assert written.nonzero().flatten().tolist() == [17]
        assert (fast.k_cache.abs().sum(dim=(0, 1, 3)) > 0).all()  # every codebook position
    assert logits.shape == (3, model.config.codebook_size) and torch.isfinite(logits).all()
    after = [block.attention.kv_cache for block in (*model.layers, *model.fast_layers)]
    assert all(a is b for a, b in zip(before, after, strict=True))
    assert (model.cache_batch, model.cache_length) == (2, 40)

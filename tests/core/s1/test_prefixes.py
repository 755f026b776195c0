"""A voice's prompt prefix prefilled once and kept (core/lm/prefixes.py): reused requests make the original's
frames, a reused prefix gives the same frames as a fresh prefill, and the cache keeps to its byte budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.lm.prefixes import PrefixCache
from core.s1.batch import S1Sequence, S1Stepper, decode_step
from core.s1.load import load_dual_ar
from core.s1.prompt import reference_length
from core.s1.sampling import SamplingSettings

from .support import GENERATION_CASES, MAX_NEW_FRAMES, S1_CHECKPOINT, dual_ar_cases

CASE = "sample_seed42_cli"


@pytest.fixture(scope="module")
def loaded():
    model, tokenizer = load_dual_ar(S1_CHECKPOINT)
    model.setup_caches(2, model.config.max_seq_len)
    return model, tokenizer


def generate(stepper: S1Stepper, tokenizer, prompt: torch.Tensor, slot: int = 0) -> np.ndarray:
    """The golden case's settings and seed on `prompt`, through the stepper's prefill, decoded to the end."""
    seed, temperature, top_p, penalty = GENERATION_CASES[CASE]
    sequence = S1Sequence(
        prompt,
        tokenizer.im_end_id,
        SamplingSettings(temperature, top_p, penalty),
        MAX_NEW_FRAMES,
        torch.Generator().manual_seed(seed),
        prefix_length=reference_length(prompt, tokenizer.im_end_id),
    )
    (error,) = stepper.prefill([([sequence], [slot])])
    assert error is None
    while not sequence.finished:
        decode_step(stepper.model, [sequence])
    return torch.stack(sequence.frames, dim=1).numpy()


def test_a_repeated_voice_is_prefilled_once_and_still_gives_the_originals_frames(loaded):
    model, tokenizer = loaded
    cases = dual_ar_cases()
    prompt = torch.from_numpy(cases["prompt"])
    stepper = S1Stepper(model)
    first = generate(stepper, tokenizer, prompt)
    again = generate(stepper, tokenizer, prompt, slot=1)
    assert (stepper.prefixes.misses, stepper.prefixes.hits, len(stepper.prefixes.entries)) == (1, 1, 1)
    np.testing.assert_array_equal(first, cases[f"gen_{CASE}_tokens"])
    np.testing.assert_array_equal(again, cases[f"gen_{CASE}_tokens"])


def test_another_text_in_a_kept_voice_makes_the_frames_of_a_fresh_prefill(loaded):
    model, tokenizer = loaded
    prompt = torch.from_numpy(dual_ar_cases()["prompt"])
    prefix = reference_length(prompt, tokenizer.im_end_id)
    assert 0 < prefix < prompt.size(1) - 3
    other_text = prompt[:, :-3]  # the same references, a shorter text
    warm = S1Stepper(model)
    generate(warm, tokenizer, prompt)
    reused = generate(warm, tokenizer, other_text, slot=1)
    fresh = S1Stepper(model)
    model.setup_caches(2, model.config.max_seq_len)
    for block in model.layers:  # nothing of the earlier runs left in the slot
        block.attention.kv_cache.k_cache[1].fill_(float("nan"))
        block.attention.kv_cache.v_cache[1].fill_(float("nan"))
    expected = generate(fresh, tokenizer, other_text, slot=1)
    assert warm.prefixes.hits == 1 and fresh.prefixes.hits == 0
    np.testing.assert_array_equal(reused, expected)


def test_a_prompt_without_references_keeps_nothing(loaded):
    model, tokenizer = loaded
    prompt = torch.from_numpy(dual_ar_cases()["prompt_noref"])
    assert reference_length(prompt, tokenizer.im_end_id) == 0
    stepper = S1Stepper(model)
    generate(stepper, tokenizer, prompt)
    assert not stepper.prefixes.entries and stepper.prefixes.misses == 0


def test_the_least_recently_used_prefix_leaves_first_within_the_byte_budget(loaded):
    model, tokenizer = loaded
    cases = dual_ar_cases()
    prompts = [torch.from_numpy(cases[key]) for key in ("prompt", "prompt_2refs")]
    lengths = [reference_length(p, tokenizer.im_end_id) for p in prompts]
    per_position = sum(2 * b.attention.kv_cache.k_cache[0, :, :1].nbytes for b in model.layers)
    stepper = S1Stepper(model)
    stepper.prefixes = PrefixCache(max_bytes=per_position * max(lengths))  # room for one of them
    generate(stepper, tokenizer, prompts[0])
    generate(stepper, tokenizer, prompts[1])
    cache = stepper.prefixes
    assert len(cache.entries) == 1 and cache.bytes == per_position * lengths[1] <= cache.max_bytes
    assert PrefixCache.key(prompts[1][:, : lengths[1]]) in cache.entries
    generate(stepper, tokenizer, prompts[0])  # gone: prefilled again
    assert (cache.hits, cache.misses) == (0, 3)

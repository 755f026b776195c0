"""Prompt matrices built exactly as the original's generate_long (dual_ar_cases prompt*)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.s1.prompt import Reference, build_prompt
from core.s1.tokenizer import load_s1_tokenizer

from .support import (
    REF2_TEXT,
    REF_TEXT,
    S1_CHECKPOINT,
    TARGET_TEXT,
    dual_ar_cases,
)

N = 4  # num_codebooks of the parity config


@pytest.fixture(scope="module")
def tokenizer():
    return load_s1_tokenizer(S1_CHECKPOINT)


@pytest.fixture(scope="module")
def cases():
    return dual_ar_cases()


def test_prompt_with_one_reference_is_exact(tokenizer, cases):
    ref = Reference(torch.from_numpy(cases["ref_codes"]), REF_TEXT)
    np.testing.assert_array_equal(build_prompt(tokenizer, TARGET_TEXT, [ref], N).numpy(), cases["prompt"])


def test_prompt_with_two_references_is_exact(tokenizer, cases):
    refs = [
        Reference(torch.from_numpy(cases["ref_codes"]), REF_TEXT),
        Reference(torch.from_numpy(cases["ref2_codes"]), REF2_TEXT),
    ]
    np.testing.assert_array_equal(build_prompt(tokenizer, TARGET_TEXT, refs, N).numpy(), cases["prompt_2refs"])


def test_prompt_without_reference_is_exact(tokenizer, cases):
    np.testing.assert_array_equal(build_prompt(tokenizer, TARGET_TEXT, [], N).numpy(), cases["prompt_noref"])


def test_reference_codes_of_the_wrong_shape_or_range_are_refused(tokenizer, cases):
    codes = torch.from_numpy(cases["ref_codes"])
    with pytest.raises(ValueError, match=r"\[4, T\]"):
        build_prompt(tokenizer, "hi", [Reference(codes[:3], "x")], N)
    bad = codes.clone()
    bad[0, 0] = tokenizer.num_semantic
    with pytest.raises(ValueError, match="out of range"):
        build_prompt(tokenizer, "hi", [Reference(bad, "x")], N)

"""Generation against the original's frames (dual_ar_cases gen_*): greedy exact (stopping by itself),
seeded sampling exact on the CPU, plus the sampler rules and the quirks fixed here."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from core.lm.kernels import cpu_kernels_available
from core.s1.generate import generate, semantic_code
from core.s1.load import load_dual_ar
from core.s1.sampling import (
    SamplingSettings,
    SamplingTensors,
    logits_to_probs,
    penalize,
    sample_rows,
    sample_rows_fast,
    sample_token,
)

from .support import (
    GENERATION_CASES,
    MAX_NEW_FRAMES,
    S1_CHECKPOINT,
    dual_ar_cases,
)

needs_kernels = pytest.mark.skipif(not cpu_kernels_available(), reason="no C++ compiler for the CPU kernels here")


@pytest.fixture(scope="module")
def loaded():
    return load_dual_ar(S1_CHECKPOINT)


@pytest.fixture(scope="module")
def cases():
    return dual_ar_cases()


def run_case(model, tokenizer, cases, name, generator=None):
    seed, temperature, top_p, penalty = GENERATION_CASES[name]
    if generator is None:
        torch.manual_seed(seed)
    settings = SamplingSettings(temperature, top_p, penalty)
    return generate(model, torch.from_numpy(cases["prompt"]), tokenizer.im_end_id, settings, MAX_NEW_FRAMES, generator)


@pytest.mark.parametrize("name", sorted(GENERATION_CASES))
def test_generated_frames_equal_the_original(loaded, cases, name):
    model, tokenizer = loaded
    result = run_case(model, tokenizer, cases, name)
    golden = cases[f"gen_{name}_tokens"]
    np.testing.assert_array_equal(result.frames.numpy(), golden)
    assert result.stopped == (golden[0, -1] == tokenizer.im_end_id)


@pytest.mark.parametrize("name", ["greedy", "greedy_rep1.5"])
def test_greedy_runs_stop_by_themselves_with_the_original_codes(loaded, cases, name):
    model, tokenizer = loaded
    result = run_case(model, tokenizer, cases, name)
    assert result.stopped and result.frames.size(1) < MAX_NEW_FRAMES
    np.testing.assert_array_equal(result.codes.numpy(), cases[f"gen_{name}_codes"])


def test_budget_run_keeps_its_last_frame(loaded, cases):
    """Fixed quirk: the original drops the last frame even when it is real audio (budget exhausted)."""
    model, tokenizer = loaded
    result = run_case(model, tokenizer, cases, "sample_seed42_cli")
    assert not result.stopped and result.codes.size(1) == MAX_NEW_FRAMES
    np.testing.assert_array_equal(result.codes[:, :-1].numpy(), cases["gen_sample_seed42_cli_codes"])


def test_on_frame_sees_every_frame_as_it_is_made(loaded, cases):
    model, tokenizer = loaded
    seen = []
    seed, temperature, top_p, penalty = GENERATION_CASES["greedy"]
    result = generate(
        model,
        torch.from_numpy(cases["prompt"]),
        tokenizer.im_end_id,
        SamplingSettings(temperature, top_p, penalty),
        MAX_NEW_FRAMES,
        on_frame=seen.append,
    )
    assert torch.equal(torch.stack(seen, dim=1).cpu(), result.frames)


def test_private_generator_reproduces_the_global_seed_stream(loaded, cases):
    model, tokenizer = loaded
    name = "sample_seed7_t0.7p0.7r1.2"
    torch.manual_seed(123)  # the global stream must not matter
    result = run_case(model, tokenizer, cases, name, generator=torch.Generator().manual_seed(7))
    np.testing.assert_array_equal(result.frames.numpy(), cases[f"gen_{name}_tokens"])


def test_im_end_from_the_prefill_stops(loaded, cases):
    """Fixed quirk: the original ignores <|im_end|> from the prefill step and generates past it."""
    model, tokenizer = loaded
    saved = model.output.weight.data.clone()
    try:
        model.output.weight.data[tokenizer.im_end_id] *= 1000  # make <|im_end|> win everywhere
        result = generate(
            model,
            torch.from_numpy(cases["prompt"]),
            tokenizer.im_end_id,
            SamplingSettings(0.7, 1e-6, 1.0),
            MAX_NEW_FRAMES,
        )
    finally:
        model.output.weight.data.copy_(saved)
    assert result.stopped and result.frames.size(1) == 1 and result.codes.size(1) == 0


def test_non_semantic_tokens_give_code_zero(loaded):
    model, tokenizer = loaded
    ids = torch.tensor([tokenizer.im_end_id, tokenizer.semantic_begin_id + 5, tokenizer.semantic_end_id + 1, 0])
    assert semantic_code(model, ids).tolist() == [0, 5, 0, 0]


def test_prompt_must_fit(loaded, cases):
    model, tokenizer = loaded
    too_long = torch.zeros((5, model.config.max_seq_len), dtype=torch.int)
    with pytest.raises(ValueError, match="the model.s context is"):
        generate(model, too_long, tokenizer.im_end_id)


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    out = penalize(logits, torch.tensor([0, 1, 1]), torch.tensor(2.0))
    assert out.tolist() == [1.0, -4.0, 1.0, 0.5]


def test_top_p_removes_every_entry_whose_inclusive_cumulative_probability_exceeds_it():
    cpu = torch.device("cpu")
    logits = torch.tensor([0.0, 3.0, 2.9, -1.0])  # sorted probabilities 0.507, 0.459, 0.025, 0.009
    params = SamplingSettings(temperature=1.0, top_p=0.97, repetition_penalty=1.0).as_tensors(cpu)
    assert (logits_to_probs(logits, params) > 0).tolist() == [False, True, True, False]
    params = SamplingSettings(temperature=1.0, top_p=0.5, repetition_penalty=1.0).as_tensors(cpu)
    assert (logits_to_probs(logits, params) > 0).tolist() == [False, True, False, False]  # the best always stays
    tiny = SamplingSettings(temperature=0.7, top_p=1e-6, repetition_penalty=1.0).as_tensors(cpu)
    logits = torch.randn(100)
    assert int(sample_token(logits, tiny)) == int(logits.argmax())


def test_each_row_of_a_step_samples_its_token_penalized_by_column_0_of_its_own_window(loaded):
    """The batched sampler keeps the original's quirk row by row: the slow token's penalty ids are the
    window's first column (a frame's token and codes), not its token row. Greedy (top_p ~ 0): id A leads
    B by 0.1; row 0's window holds A in its first column (a code row), so A is penalized and B wins;
    row 1's window holds A in its token row only, so A stays."""
    from core.s1.generate import sample_frames

    model, _ = loaded
    a, b = 7, 9
    logits = torch.zeros((2, model.config.vocab_size))
    logits[:, a], logits[:, b] = 2.0, 1.9
    windows = [torch.zeros((model.config.num_codebooks + 1, 16), dtype=torch.int) for _ in range(2)]
    windows[0][1, 0] = a  # column 0, a code row
    windows[1][0, 1:] = a  # the token row, beyond column 0
    greedy = SamplingSettings(temperature=0.7, top_p=1e-6, repetition_penalty=1.5).as_tensors(torch.device("cpu"))
    hidden = torch.randn((2, model.config.fast_dim))
    model.setup_caches(2, 32)  # (the fast stack's cache, which the codes' steps use)
    with torch.inference_mode():
        frames = sample_frames(model, logits, hidden, [greedy, greedy], windows, [None, None])
    assert frames[:, 0].tolist() == [b, a]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_sampled_together_draw_what_each_row_draws_alone_in_the_logits_dtype(dtype):
    """A GPU step's logits are bfloat16: the rows' [R, 1] float32 settings must not promote them (the
    scatter of the penalized scores failed on an H200), and each row draws what it draws alone."""
    cpu = torch.device("cpu")
    settings = [
        SamplingSettings(temperature=0.7, top_p=0.9, repetition_penalty=1.3),
        SamplingSettings(temperature=1.2, top_p=0.5, repetition_penalty=1.05),
        SamplingSettings(),
    ]
    alone = [s.as_tensors(cpu) for s in settings]
    logits = (torch.randn((3, 1000), generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    previous = torch.randint(0, 1000, (3, 16), generator=torch.Generator().manual_seed(2))

    def generators():
        return [torch.Generator().manual_seed(10 + r) for r in range(3)]

    probs = logits_to_probs(logits, SamplingTensors.rows(alone), previous)
    assert probs.dtype == dtype
    for r in range(3):
        assert torch.equal(probs[r], logits_to_probs(logits[r], alone[r], previous[r]))
    together = sample_rows(logits, SamplingTensors.rows(alone), previous, generators())
    one_by_one = [int(sample_token(logits[r], alone[r], previous[r], g)) for r, g in enumerate(generators())]
    assert together.tolist() == one_by_one


FAST_DRAW_SETTINGS = [
    SamplingSettings(),  # the original's defaults: temperature 0.8, top_p 0.8, penalty 1.1
    SamplingSettings(temperature=0.3, top_p=0.5, repetition_penalty=1.5),
    SamplingSettings(temperature=1.5, top_p=1.0, repetition_penalty=1.0),  # no nucleus: the whole row
]


@needs_kernels
@pytest.mark.parametrize("width, scale", [(1024, 3.0), (1024, 0.3), (20000, 6.0), (20000, 0.3), (7, 1.0)])
@pytest.mark.parametrize("rows", [1, 3])
def test_a_quantized_models_draws_in_one_call_are_the_ops_draws(width, scale, rows):
    """sample_rows_fast (csrc/sampling.cpp's sample_rows) against sample_rows' ops: the same ids, the generators
    left in the same states; a codebook's width and a vocabulary's (its nucleus found among the largest values,
    or in a flat row over a sort of the whole row), with and without penalty windows, a tail under a SIMD width."""
    cpu = torch.device("cpu")
    for seed in range(8):
        shape = torch.Generator().manual_seed(seed)
        logits = torch.randn((rows, width), generator=shape) * scale
        previous = torch.randint(0, width, (rows, 16), generator=shape, dtype=torch.int) if seed % 2 else None
        settings = [FAST_DRAW_SETTINGS[(seed + r) % len(FAST_DRAW_SETTINGS)] for r in range(rows)]
        params = SamplingTensors.rows([s.as_tensors(cpu) for s in settings])
        ours = [torch.Generator().manual_seed(100 + r) for r in range(rows)]
        theirs = [torch.Generator().manual_seed(100 + r) for r in range(rows)]
        drawn = sample_rows_fast(logits, params, previous, ours)
        assert drawn.dtype == torch.int32 and torch.equal(drawn, sample_rows(logits, params, previous, theirs)), seed
        assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(ours, theirs, strict=True))


@needs_kernels
@pytest.mark.parametrize("width", [8, 20000])  # the nucleus from a sort of the row, and from its largest values
def test_one_call_draws_from_exactly_the_nucleus(width):
    """A nucleus of 3 ids beside a 4th just outside it (the ids drawn, over 300 seeds, are those three, each
    as often as the ops draw it): a cut one entry off would draw the 4th."""
    logits = torch.full((1, width), -30.0)
    logits[0, :4] = torch.tensor([2.0, 1.9, 1.8, 1.7])
    settings = SamplingSettings(temperature=1.5, top_p=0.8, repetition_penalty=1.0)  # running sums .29 .55 .79 1
    params = SamplingTensors.rows([settings.as_tensors(torch.device("cpu"))])
    fast = [int(sample_rows_fast(logits, params, None, [torch.Generator().manual_seed(s)])) for s in range(300)]
    ops = [int(sample_rows(logits, params, None, [torch.Generator().manual_seed(s)])) for s in range(300)]
    assert fast == ops and set(fast) == {0, 1, 2}


@needs_kernels
def test_what_one_call_cannot_draw_is_left_to_the_ops_with_nothing_drawn():
    """A logit not finite (the ops draw from it anyway: the original's rule) or a window id outside the row:
    the call draws nothing, and sample_rows_fast gives the ops' id."""
    cpu = torch.device("cpu")
    params = SamplingTensors.rows([SamplingSettings().as_tensors(cpu)])
    logits = torch.randn((1, 1024), generator=torch.Generator().manual_seed(0)) * 3
    window = torch.zeros((1, 16), dtype=torch.int)
    nan = logits.clone()
    nan[0, 5] = float("nan")
    outside = window.clone()
    outside[0, 3] = 1024
    for row, ids in ((nan, window), (logits, outside)):
        generator = torch.Generator().manual_seed(1)
        before = generator.get_state()
        assert torch.ops.fishtts.sample_rows(row, ids, 0.8, 0.8, 1.1, generator).numel() == 0
        assert torch.equal(generator.get_state(), before)
    ours, theirs = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    assert torch.equal(sample_rows_fast(nan, params, window, [ours]), sample_rows(nan, params, window, [theirs]))


def test_only_a_quantized_model_draws_in_one_call(loaded):
    """(the float32 model's seeded frames are the original's, above: it keeps the ops)"""
    model, _ = loaded
    assert not model.quantized
    assert copy.deepcopy(model).quantize("int8").quantized


def test_settings_out_of_range_are_refused():
    for bad in (dict(temperature=0), dict(top_p=1.5), dict(repetition_penalty=2)):
        with pytest.raises(ValueError):
            SamplingSettings(**bad)

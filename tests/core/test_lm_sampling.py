"""The sampler's C++ sort and draw (core/lm/csrc/sampling.cpp) against the original's torch ops: the same
ids from the same generator, which is left in the same state; and a quantized model's whole frame in one
C++ call against the same rules in torch's ops."""

from __future__ import annotations

import importlib

import pytest
import torch

from core.lm import kernels, sampling
from core.lm.sampling import NonFiniteLogits, SamplingParams

pytestmark = pytest.mark.skipif(not kernels.cpu_kernels_available(), reason="no C++ compiler for the CPU kernels here")


def original_sample(logits, params, generator):
    """SPEC-generation §5.1 in torch's ops, as the original runs it (no repetition penalty)."""
    sorted_logits, sorted_ids = torch.sort(logits, dim=-1, descending=True)
    remove = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1) > params.top_p
    remove[..., 0] = False
    logits = logits.masked_fill(remove.scatter(-1, sorted_ids, remove), float("-inf"))
    logits = logits / params.temperature
    if params.top_k is not None:
        logits = sampling.apply_top_k(logits, params.top_k)
    probs = torch.softmax(logits, dim=-1)
    q = torch.empty_like(probs).exponential_(1, generator=generator)
    return torch.argmax(probs / q, dim=-1).to(torch.int)


def test_the_native_sampler_serves_float32_cpu_rows_here():
    assert sampling.native_draw_matches_torch()
    assert sampling.native_sampler_serves(torch.zeros(2, 8))
    assert not sampling.native_sampler_serves(torch.zeros(8))
    assert not sampling.native_sampler_serves(torch.zeros(2, 8, dtype=torch.float64))


@pytest.mark.parametrize("width", [36408, 168, 7])  # the text vocabulary, a codebook, a tail under a SIMD width
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7, top_p=0.5, repetition_penalty=1.0),
        SamplingParams(temperature=1.0, top_p=0.9, top_k=5, repetition_penalty=1.0),
        SamplingParams(temperature=0.3, top_p=0.05, repetition_penalty=1.0),
    ],
    ids=["defaults", "top-k", "narrow"],
)
def test_sampling_draws_the_originals_ids_from_the_same_stream(width, rows, params):
    for seed in range(12):
        gen = torch.Generator().manual_seed(seed)
        logits = torch.randn(rows, width, generator=gen) * (1 + seed % 4)  # flat to peaked
        if seed % 3 == 0:
            logits[:, : width // 3] = float("-inf")  # masked ids, as the codebooks' specials are
        ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        for _ in range(3):
            assert torch.equal(sampling.sample(logits, params, None, ours), original_sample(logits, params, theirs))
        assert torch.equal(ours.get_state(), theirs.get_state())


@pytest.mark.parametrize("spread", [0.0, 0.05, 1.0, 8.0])  # equal, flat, spread, peaked
def test_the_race_over_every_entry_of_a_wide_row_is_torchs(spread):
    """S1-mini's token row (155,776 ids): where most entries have a probability, nearly every log1p is skipped
    (an entry whose draw alone shows it cannot win); the winners and the generator's state are torch's."""
    for seed in range(4):
        logits = torch.randn(2, 155776, generator=torch.Generator().manual_seed(seed)) * spread
        probs = torch.softmax(logits, dim=-1)
        ours, theirs = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        assert torch.equal(torch.ops.fishtts.exponential_race(probs, ours), sampling.torch_draw(probs, theirs))
        assert torch.equal(ours.get_state(), theirs.get_state())


def test_the_draw_consumes_torchs_default_generator_when_given_none():
    probs = torch.softmax(torch.randn(2, 3000, generator=torch.Generator().manual_seed(0)), dim=-1)
    probs[probs < probs.quantile(0.99)] = 0  # mostly zeros: most draws are skipped, not taken
    torch.manual_seed(5)
    ours = sampling.draw(probs)
    after = torch.get_rng_state()
    torch.manual_seed(5)
    assert torch.equal(ours, sampling.torch_draw(probs))
    assert torch.equal(after, torch.get_rng_state())


def test_top_p_keeps_exactly_the_nucleus_size_when_logits_tie_at_the_cut():
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0, 2.0, 2.0, 0.0]])
    # softmax of the sorted values: 0.305, 0.305, 0.112, ... -> the cut falls among the 2.0s
    kept = ~sampling.apply_top_p(logits, 0.75).isinf()
    assert kept.sum().item() == 3
    assert kept[0, 1] and kept[0, 3] and kept[0, 2]  # both 3.0s, then the lowest id of the tied 2.0s


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_infinite_logits_are_refused_not_drawn_from(bad):
    logits = torch.randn(2, 500)
    logits[1, 17] = bad
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    with pytest.raises(NonFiniteLogits):
        sampling.sample(logits, SamplingParams(), None, gen)
    assert torch.equal(gen.get_state(), state)  # raised before any draw, as the original's check


def test_the_sort_gives_torchs_sorted_values_and_refuses_rows_with_nan_or_plus_inf():
    """sort_values_descending (top-p's sort) finds NaN and +inf on its radix keys: every NaN of either sign and
    +inf refuse the call (the torch ops then take the row, as the original does); -inf, zeros of either sign
    and the largest finite values sort as torch.sort sorts them."""
    logits = torch.randn(3, 4099, generator=torch.Generator().manual_seed(0)) * 5
    largest = torch.finfo(torch.float32).max
    logits[0, :7] = float("-inf")
    logits[1, 3], logits[1, 4] = 0.0, -0.0
    logits[2, 9], logits[2, 10] = largest, -largest
    ours = torch.ops.fishtts.sort_values_descending(logits)
    assert torch.equal(ours, torch.sort(logits, dim=-1, descending=True).values)
    nans = torch.tensor([0x7FC00000, 0x7F800001, -0x00400000, -1], dtype=torch.int32).view(torch.float32)  # +/-NaN
    assert nans.isnan().all() and (nans.view(torch.int32) < 0).sum() == 2
    for bad in torch.cat([torch.tensor([float("inf")]), nans]):
        row = logits.clone()
        row[2, 4000] = bad  # (a tensor's element: the NaN's sign and payload stay)
        assert torch.ops.fishtts.sort_values_descending(row).numel() == 0, bad.view(torch.int32)


def test_a_draw_that_differs_from_torchs_hands_sampling_back_to_torch(monkeypatch):
    def always_the_first_id(probs, generator=None):
        return torch.zeros(probs.size(0), dtype=torch.int)

    monkeypatch.setattr(sampling, "torch_draw", always_the_first_id)
    assert not sampling.native_draw_matches_torch()
    monkeypatch.setattr(sampling, "_native", {})
    assert not sampling.native_sampler_serves(torch.zeros(2, 8))


def test_top_p_as_a_float32_tensor_keeps_the_originals_nucleus():
    """S1 passes its settings as float32 tensors (core/s1/sampling.py)."""
    logits = torch.randn(1, 155776, generator=torch.Generator().manual_seed(3)) * 4  # S1-mini's vocabulary
    top_p = torch.tensor(0.8)
    sorted_logits, sorted_ids = torch.sort(logits, dim=-1, descending=True)
    remove = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1) > top_p
    remove[..., 0] = False
    expected = logits.masked_fill(remove.scatter(-1, sorted_ids, remove), float("-inf"))
    assert torch.equal(sampling.apply_top_p(logits, top_p), expected)


def test_s1_draws_from_nan_logits_as_the_original_instead_of_failing_its_batch():
    from core.s1.sampling import SamplingSettings, sample_token

    logits = torch.randn(1000)
    logits[5] = float("nan")
    ours, theirs = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    token = sample_token(logits, SamplingSettings().as_tensors(torch.device("cpu")), None, ours)
    probs = torch.full((1, 1000), float("nan"))  # what the original's softmax gives such a row
    assert torch.equal(token, sampling.torch_draw(probs, theirs)[0])
    assert torch.equal(ours.get_state(), theirs.get_state())


@pytest.mark.parametrize("native", [True, False], ids=["native-sampler", "torch-sampler"])
def test_a_steps_sequences_sampled_together_get_the_frames_each_samples_alone(monkeypatch, native):
    """sample_together (the stepper's batched sampling) against each sequence's own accept, step by step:
    sequences under two rules, private and shared (global) generators, one ignoring stops, one with a
    code limit, one with fast sampling (left to its accept): the same frames and the same ends."""
    from core.lm.generate import SampledFrame, Sequence, sample_together
    from core.lm.model import ForwardResult

    if not native:
        monkeypatch.setattr(sampling, "native_sampler_serves", lambda rows: False)
    vocab, codebooks, size, eos = 300, 4, 40, 2
    plain = SamplingParams(temperature=0.7, top_p=0.8, repetition_penalty=1.3)
    other = SamplingParams(temperature=1.1, top_p=0.95, top_k=20, repetition_penalty=1.1)
    kinds = [  # params, seed (None: the global generator), code_limit, fast_sampling, ignore_stop
        (plain, 1, None, False, False),
        (plain, None, None, False, True),  # shares the global generator with row 3, in another group
        (other, 3, 30, False, False),
        (plain, None, None, False, False),
        (other, 5, None, True, False),
        (plain, 6, None, False, False),
    ]

    def sequences():
        prompt = torch.zeros(1 + codebooks, 4, dtype=torch.int)
        return [
            Sequence(
                prompt, 12, p, eos, None if seed is None else torch.Generator().manual_seed(seed), limit, fast, ignore
            )
            for p, seed, limit, fast, ignore in kinds
        ]

    def logits(step):
        shape = torch.Generator().manual_seed(100 + step)
        token = torch.randn(len(kinds), 1, 1, vocab, generator=shape) * 3
        token[..., eos] += 4.0  # stops within a few steps
        codes = torch.randn(len(kinds), 1, 1, codebooks, size, generator=shape) * 3
        return [ForwardResult(token[i], codes[i]) for i in range(len(kinds))]

    runs = []
    for together in (False, True):
        torch.manual_seed(7)
        seqs = sequences()
        for step in range(12):
            active = [i for i, s in enumerate(seqs) if not s.finished]
            if not active:
                break
            results = [logits(step)[i] for i in active]
            if together and step > 0:
                results = sample_together([seqs[i] for i in active], results)
                assert sum(isinstance(r, SampledFrame) for r in results) == len(active) - (4 in active)
            for i, out in zip(active, results, strict=True):
                seqs[i].accept(out)
        runs.append([(torch.stack(s.frames).tolist(), s.finished, s.steps) for s in seqs])
    assert runs[0] == runs[1]
    assert any(steps < 12 for _, _, steps in runs[0]), "no sequence stopped: the stop rule went untested"


FRAME_RULES = [
    SamplingParams(),  # the original's defaults: temperature 0.7, top_p 0.5, penalty 1.5
    SamplingParams(temperature=1.1, top_p=0.9, top_k=20, repetition_penalty=1.2),
    SamplingParams(temperature=0.3, top_p=0.7, repetition_penalty=1.0),
]


def frame_logits(rows: int, seed: int, vocab: int = 2000, size: int = 168):
    """A step's heads for `rows` sequences (a trained model's spread: the nucleus is a few dozen ids)."""
    from core.lm.model import ForwardResult

    shape = torch.Generator().manual_seed(seed)
    token = torch.randn(rows, 1, vocab, generator=shape) * 4
    codes = torch.randn(rows, 1, 4, size, generator=shape) * 3
    window = torch.randint(0, size, (rows, 4, 16), generator=shape, dtype=torch.int)
    return ForwardResult(token, codes), window


@pytest.mark.parametrize("params", FRAME_RULES, ids=["defaults", "top-k", "no-penalty"])
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("mask_end, code_limit", [(True, None), (False, 150)], ids=["first-frame", "code-limit"])
def test_a_frame_in_one_call_is_the_frame_of_the_fast_samplers_ops(monkeypatch, params, rows, mask_end, code_limit):
    """generate.sample_frame with fast sampling (quantized models): the C++ call draws the frames the torch
    ops draw, from the same generator left in the same state, with and without a penalty window."""
    generate = importlib.import_module("core.lm.generate")  # (the package's `generate` is the function)

    served = sampling.sample_frames_native
    for seed in range(10):
        out, window = frame_logits(rows, seed)
        window = window if seed % 2 else None
        frames = []
        for native in (True, False):
            monkeypatch.setattr(generate, "sample_frames_native", served if native else lambda *args: None)
            generator = torch.Generator().manual_seed(seed)
            frame = generate.sample_frame(out, params, window, mask_end, code_limit, generator, True)
            frames.append((frame, generator))
        (ours, ours_generator), (ops, ops_generator) = frames
        assert ours.dtype == ops.dtype == torch.int32 and ours.shape == (rows, 5)
        assert torch.equal(ours, ops), (seed, ours.tolist(), ops.tolist())
        assert torch.equal(ours_generator.get_state(), ops_generator.get_state())
        assert (ours[:, 1:] > (1 if mask_end else 0)).all()
        if code_limit is not None:
            assert (ours[:, 1:] < code_limit + generate.CODE_OFFSET).all()


def test_the_one_call_frame_serves_a_trained_models_logits():
    out, window = frame_logits(2, 0, vocab=36408)
    frames = sampling.sample_frames_native(
        out.token_logits[:, -1], out.codebook_logits[:, -1], SamplingParams(), window, 2, None, None, 256
    )
    assert frames is not None and frames.shape == (2, 5)


def test_what_the_one_call_frame_cannot_serve_is_left_to_the_ops_with_nothing_drawn():
    out, window = frame_logits(1, 0)
    token, codes = out.token_logits[:, -1], out.codebook_logits[:, -1]
    flat = torch.zeros_like(token)  # its nucleus is half the vocabulary: beyond the candidates
    nan_codes = codes.clone()
    nan_codes[0, 2, 5] = float("nan")
    bad_window = window.clone()
    bad_window[0, 1, 3] = codes.size(-1)  # an id outside the codebook
    cases = [
        (flat, codes, window, SamplingParams(), 2),  # the nucleus beyond the candidates
        (token, nan_codes, window, SamplingParams(), 2),  # a logit not finite
        (token, codes, bad_window, SamplingParams(), 2),  # the window names no codebook entry
        (token, codes, window, SamplingParams(top_p=None), 2),  # no nucleus to look for: the full sampler
        (token, codes, window, SamplingParams(), codes.size(-1)),  # every codebook value forbidden
    ]
    for case_token, case_codes, case_window, params, masked in cases:
        generator = torch.Generator().manual_seed(1)
        before = generator.get_state()
        assert (
            sampling.sample_frames_native(case_token, case_codes, params, case_window, masked, None, generator, 256)
            is None
        )
        assert torch.equal(generator.get_state(), before)

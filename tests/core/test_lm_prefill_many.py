"""Several jobs' prompts prefilled together (core/lm/generate.py's `prefill_many`, the model's
`prefill_many`): the same caches, logits and first frames as one job at a time (float32 exactly: it
stays one prompt per call; int8/int4 within their path tolerances), mixed lengths and slots, the
row limit per packed call, and a bad job failing alone."""

from __future__ import annotations

import importlib

import pytest
import torch

from core.lm import SamplingParams, Sequence, load_lm, paths, prefill, prefill_many
from tests.core.test_lm_paths import ACTIVATION_ROUNDING, SAME_FORMAT, relative_error
from tests.paths import PARITY

generation = importlib.import_module("core.lm.generate")  # (the package's `generate` is the function)
CONFIG = str(PARITY / "llama_config.json")
GREEDY = SamplingParams(temperature=1.0, top_p=None, top_k=1, repetition_penalty=1.5)
SAMPLED = SamplingParams(temperature=0.8, top_p=0.9, top_k=None, repetition_penalty=1.2)
# (5 positions alone take the decode path, packed the prefill matmul; 64: the longest here)
LENGTHS = [17, 5, 33, 9, 64]
SLOTS = [3, 0, 4, 1, 2]  # not in prompt order: each prompt lands in its own slot


def packed_tolerance(fmt: str) -> float:
    """Packed against one by one. A 5-position prompt alone takes the decode path, packed the prefill
    matmul: a quantized format's bfloat16 or int8 prefill rounds the activations (ACTIVATION_ROUNDING), and
    whichever prefill the autotuner picked (by timings) differs from the decode path's own rounding (int16
    activations on VNNI), so the bound does not follow the pick."""
    return SAME_FORMAT[fmt] if fmt == "float32" else SAME_FORMAT[fmt] + max(ACTIVATION_ROUNDING.values())


@pytest.fixture(scope="module")
def models():
    return {
        fmt: load_lm(PARITY / "llama_state_dict.pt", CONFIG, quantize=None if fmt == "float32" else fmt)
        for fmt in paths.FORMATS
    }


def prompt(length: int, seed: int) -> torch.Tensor:
    """Text tokens, then reference codes on the codebook rows (as a cloned voice's prompt)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.zeros(5, length, dtype=torch.int)
    x[0] = torch.randint(3, 800, (length,), generator=generator)
    x[1:, length // 2 :] = torch.randint(2, 160, (4, length - length // 2), generator=generator)
    return x


def jobs(samples: int = 1) -> list[tuple[list[Sequence], list[int]]]:
    """One job per length; with `samples` > 1 each job's samples share its prompt (slots 2 apart)."""
    made = []
    for j, length in enumerate(LENGTHS):
        x = prompt(length, j)
        params = GREEDY if j % 2 else SAMPLED
        sequences = [
            Sequence(x, 10, params, eos_token_id=2, generator=torch.Generator().manual_seed(10 * j + s), code_limit=160)
            for s in range(samples)
        ]
        made.append((sequences, [SLOTS[j] + len(LENGTHS) * s for s in range(samples)]))
    return made


def caches(model) -> list[torch.Tensor]:
    return [torch.stack([layer.attention.kv_cache.k_cache, layer.attention.kv_cache.v_cache]) for layer in model.layers]


def filled(cache: torch.Tensor, slot: int, length: int) -> torch.Tensor:
    return cache[:, slot, :, :length].float()


def one_by_one(model, made) -> list[torch.Tensor]:
    model.clear_caches()
    model.setup_caches(len(LENGTHS) * len(made[0][0]), max(LENGTHS) + 8)
    with torch.inference_mode():
        for sequences, slots in made:
            prefill(model, sequences, slots)
    return caches(model)


def together(model, made) -> tuple[list[Exception | None], list[torch.Tensor]]:
    model.clear_caches()
    model.setup_caches(len(LENGTHS) * len(made[0][0]), max(LENGTHS) + 8)
    with torch.inference_mode():
        errors = prefill_many(model, made)
    return errors, caches(model)


def test_float32_stays_one_prompt_per_call_and_bit_exact(models, monkeypatch):
    """float32's matmul rounds differently with more rows: golden parity keeps it one prompt per call."""
    model = models["float32"]
    alone = jobs(2)
    alone_caches = one_by_one(model, alone)
    monkeypatch.setattr(type(model), "prefill_many", lambda *a: pytest.fail("float32 prompts were packed"))
    batched = jobs(2)
    errors, batched_caches = together(model, batched)
    assert errors == [None] * len(LENGTHS)
    for (seqs_a, slots), (seqs_b, _) in zip(alone, batched, strict=True):
        for a, b in zip(seqs_a, seqs_b, strict=True):
            assert torch.equal(a.last, b.last) and a.slot == b.slot
        for a, b in zip(alone_caches, batched_caches, strict=True):
            for slot in slots:
                length = seqs_a[0].prompt.shape[1]
                assert torch.equal(filled(a, slot, length), filled(b, slot, length))


@pytest.mark.parametrize("fmt", paths.FORMATS)
def test_packed_forward_matches_each_prompt_alone(models, fmt):
    """The model's packed forward for every format: each prompt's last logits and its slot's keys and
    values as its own prefill's (float32 too, within its rounding), the greedy choices equal."""
    model = models[fmt]
    prompts = [prompt(n, j) for j, n in enumerate(LENGTHS)]
    model.clear_caches()
    model.setup_caches(len(LENGTHS), max(LENGTHS) + 8)
    with torch.inference_mode():
        alone = [model.prefill(x.unsqueeze(0), slot) for x, slot in zip(prompts, SLOTS, strict=True)]
        alone_caches = caches(model)
        packed = model.prefill_many(prompts, SLOTS)
        packed_caches = caches(model)
    tolerance = packed_tolerance(fmt)
    assert packed.token_logits.shape[:2] == (len(LENGTHS), 1)
    for j, out in enumerate(alone):
        assert relative_error(packed.token_logits[j], out.token_logits[0]) < tolerance, j
        assert relative_error(packed.codebook_logits[j], out.codebook_logits[0]) < tolerance, j
        assert torch.equal(packed.token_logits[j].argmax(-1), out.token_logits[0].argmax(-1)), j
        assert torch.equal(packed.codebook_logits[j].argmax(-1), out.codebook_logits[0].argmax(-1)), j
        for a, b in zip(alone_caches, packed_caches, strict=True):
            assert relative_error(filled(b, SLOTS[j], LENGTHS[j]), filled(a, SLOTS[j], LENGTHS[j])) < tolerance, j


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_quantized_jobs_are_packed_and_start_with_the_same_frames(models, fmt, monkeypatch):
    """Quantized prompts run as one call; each job's samples (own settings, generators) get the first
    frames they get one job at a time (on this model no choice is a near-tie)."""
    model = models[fmt]
    alone = jobs(2)
    alone_caches = one_by_one(model, alone)
    calls = []
    packed_forward = type(model).prefill_many
    monkeypatch.setattr(
        type(model), "prefill_many", lambda m, p, s, *a: calls.append(len(p)) or packed_forward(m, p, s, *a)
    )
    batched = jobs(2)
    errors, batched_caches = together(model, batched)
    assert errors == [None] * len(LENGTHS) and calls == [len(LENGTHS)]
    for (seqs_a, slots), (seqs_b, _) in zip(alone, batched, strict=True):
        for a, b in zip(seqs_a, seqs_b, strict=True):
            assert torch.equal(a.last, b.last) and a.slot == b.slot and b.steps == 1
        length = seqs_a[0].prompt.shape[1]
        for a, b in zip(alone_caches, batched_caches, strict=True):
            for slot in slots:  # the samples' slots hold copies of the first's
                assert relative_error(filled(b, slot, length), filled(a, slot, length)) < packed_tolerance(fmt)


def test_packed_calls_hold_at_most_the_row_limit(models, monkeypatch):
    """Prompts are packed in order up to BATCHED_PREFILL_ROWS positions per call; a longer one runs alone."""
    model = models["int8"]
    monkeypatch.setattr(generation, "BATCHED_PREFILL_ROWS", 45)
    calls = []
    cls = type(model)
    packed_forward, one_forward = cls.prefill_many, cls.prefill
    monkeypatch.setattr(
        cls, "prefill_many", lambda m, p, s, *a: calls.append([x.shape[1] for x in p]) or packed_forward(m, p, s, *a)
    )
    monkeypatch.setattr(
        cls, "prefill", lambda m, x, slot, *a: calls.append([x.shape[2]]) or one_forward(m, x, slot, *a)
    )
    errors, _ = together(model, jobs())
    assert errors == [None] * len(LENGTHS)
    assert calls == [[17, 5], [33, 9], [64]]  # 64 > 45: alone


def test_a_bad_job_in_a_packed_call_fails_alone(models):
    """One prompt the model cannot embed fails the packed forward: the jobs are redone one by one, the
    bad one fails with its own error and the others start exactly as they do alone."""
    model = models["int8"]
    alone = jobs()
    one_by_one(model, alone)
    batched = jobs()
    bad = batched[2][0][0]
    bad.prompt = bad.prompt.clone()
    bad.prompt[0, 3] = 10**6  # a token id past the embedding table
    errors, _ = together(model, batched)
    assert isinstance(errors[2], IndexError)
    assert [e is None for e in errors] == [True, True, False, True, True]
    for j, ((seqs_a, _), (seqs_b, _)) in enumerate(zip(alone, batched, strict=True)):
        if j != 2:
            assert torch.equal(seqs_a[0].last, seqs_b[0].last), j

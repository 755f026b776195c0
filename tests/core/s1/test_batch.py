"""Cross-request batching: the four golden generation cases decoded together, each in its own cache slot with
its own settings and seeded generator, give exactly the original's frames; sequences join and leave freely."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.s1.batch import S1Sequence, S1Stepper, decode_step, next_frames, prefill
from core.s1.compile import compile_decode
from core.s1.load import load_dual_ar
from core.s1.sampling import SamplingSettings

from .support import (
    GENERATION_CASES,
    MAX_NEW_FRAMES,
    S1_CHECKPOINT,
    dual_ar_cases,
)


@pytest.fixture(scope="module")
def loaded():
    return load_dual_ar(S1_CHECKPOINT)


def sequence(tokenizer, cases, name: str, prompt_key: str = "prompt") -> S1Sequence:
    seed, temperature, top_p, penalty = GENERATION_CASES[name]
    return S1Sequence(
        torch.from_numpy(cases[prompt_key]),
        tokenizer.im_end_id,
        SamplingSettings(temperature, top_p, penalty),
        MAX_NEW_FRAMES,
        torch.Generator().manual_seed(seed),
    )


@torch.inference_mode()
def run(
    model,
    sequences: list[S1Sequence],
    joins: dict[int, list[int]],
    slots: list[int] | None = None,
    static_slots: int | None = None,
) -> None:
    """Prefill sequence i into slot i (or slots[i]) at step joins-key; decode the active ones until all
    finish (with `static_slots`, over that many slots with fixed shapes)."""
    step, active = 0, []
    while step == 0 or active or any(k >= step for k in joins):
        for index in joins.get(step, []):
            prefill(model, sequences[index], index if slots is None else slots[index])
            if not sequences[index].finished:
                active.append(sequences[index])
        if active and static_slots is None:
            decode_step(model, active)
        elif active:
            for seq, frame in zip(active, next_frames(model, active, static_slots), strict=True):
                seq.accept(frame)
        active = [s for s in active if not s.finished]
        step += 1


def test_golden_cases_batched_equal_the_original(loaded):
    model, tokenizer = loaded
    cases = dual_ar_cases()
    names = sorted(GENERATION_CASES)
    sequences = [sequence(tokenizer, cases, name) for name in names]
    model.setup_caches(len(names), model.config.max_seq_len)
    run(model, sequences, {0: [0, 1, 2, 3]})
    for name, seq in zip(names, sequences, strict=True):
        np.testing.assert_array_equal(torch.stack(seq.frames, dim=1).cpu().numpy(), cases[f"gen_{name}_tokens"])
    greedy = sequences[names.index("greedy")]
    assert greedy.stopped and np.array_equal(greedy.codes().numpy(), cases["gen_greedy_codes"])


def test_sequences_joining_later_with_other_prompts_are_unaffected(loaded):
    """Rows never see each other: a sequence that joins mid-way, with a different prompt length, in a
    different slot, still makes the original's frames."""
    model, tokenizer = loaded
    cases = dual_ar_cases()
    seeded = [sequence(tokenizer, cases, "sample_seed7_t0.7p0.7r1.2"), sequence(tokenizer, cases, "sample_seed42_cli")]
    other = sequence(tokenizer, cases, "sample_seed42_cli", prompt_key="prompt_2refs")
    model.setup_caches(3, model.config.max_seq_len)
    run(model, [other, *seeded], {0: [0], 3: [1], 5: [2]})
    for name, seq in zip(["sample_seed7_t0.7p0.7r1.2", "sample_seed42_cli"], seeded, strict=True):
        np.testing.assert_array_equal(torch.stack(seq.frames, dim=1).cpu().numpy(), cases[f"gen_{name}_tokens"])
    assert len(other.frames) == MAX_NEW_FRAMES or other.stopped


@pytest.mark.parametrize("compiled", [False, True])
def test_static_decode_in_scattered_slots_equals_the_original(compiled):
    """The fixed-shape step that CUDA graphs replay (every slot, whole caches under a mask, the fast
    stack's position a tensor), eager and through torch.compile (here inductor's CPU code; on CUDA the
    same graphs are captured): sequences in slots 4, 1, 5, 2 of 6, joining at different steps, make
    exactly the original's frames."""
    model, tokenizer = load_dual_ar(S1_CHECKPOINT)
    cases = dual_ar_cases()
    names = sorted(GENERATION_CASES)
    sequences = [sequence(tokenizer, cases, name) for name in names]
    model.setup_caches(6, model.config.max_seq_len, zeroed=True)
    if compiled:
        assert compile_decode(model, 6)
    run(model, sequences, {0: [0, 1], 2: [2], 3: [3]}, slots=[4, 1, 5, 2], static_slots=6)
    for name, seq in zip(names, sequences, strict=True):
        np.testing.assert_array_equal(torch.stack(seq.frames, dim=1).cpu().numpy(), cases[f"gen_{name}_tokens"])


def test_the_static_scheduler_gives_the_originals_frames():
    """The engine's route with a compiled decode on CUDA (scheduler `static`: every step over all slots),
    here with the eager static step: four concurrent golden cases in a batch of 5 slots."""
    from core.scheduler import Scheduler
    from tests.core.test_scheduler import Collector

    model, tokenizer = load_dual_ar(S1_CHECKPOINT)
    cases = dual_ar_cases()
    names = sorted(GENERATION_CASES)
    sequences = [sequence(tokenizer, cases, name) for name in names]
    scheduler = Scheduler(S1Stepper(model), max_batch=5, static=True)
    collector = Collector(scheduler)
    for key, seq in enumerate(sequences):
        collector.submit(key, seq)
    try:
        collector.wait(*range(len(sequences)))
    finally:
        scheduler.close()
    assert model.cache_zeroed and model.cache_batch == 5
    for name, seq in zip(names, sequences, strict=True):
        np.testing.assert_array_equal(torch.stack(seq.frames, dim=1).cpu().numpy(), cases[f"gen_{name}_tokens"])


def test_prefill_refuses_a_slot_beyond_the_caches(loaded):
    model, tokenizer = loaded
    model.setup_caches(1, 128)
    with pytest.raises(ValueError, match="exceed the caches"):
        prefill(model, sequence(tokenizer, dual_ar_cases(), "greedy"), 1)


def test_stepper_prefill_fails_a_bad_job_alone(loaded):
    """The scheduler's contract: one call for a round of jobs, per job the error that stopped it."""
    model, tokenizer = loaded
    cases = dual_ar_cases()
    model.setup_caches(3, model.config.max_seq_len)
    good = [sequence(tokenizer, cases, "greedy"), sequence(tokenizer, cases, "sample_seed42_cli")]
    errors = S1Stepper(model).prefill(
        [([good[0]], [0]), ([sequence(tokenizer, cases, "greedy")], [7]), ([good[1]], [2])]
    )
    assert errors[0] is None and errors[2] is None and isinstance(errors[1], ValueError)
    assert all(len(seq.frames) == 1 for seq in good)

"""core/lm/compile.py's capture at load (v0.2 on CUDA): the compiled static step runs for every slot
and is checked against the eager one; a step that fails to compile, or disagrees, is dropped and the model
decodes eagerly. Here with torch.compile's stand-ins on the CPU (the real one on a GPU: test_cuda.py)."""

from __future__ import annotations

import logging

import pytest

from core.lm import load_lm
from core.lm.compile import capture_decode
from tests.paths import PARITY

SLOTS = 3


@pytest.fixture(scope="module")
def model():  # (each test sets its own compiled step)
    return load_lm(PARITY / "llama_state_dict.pt", str(PARITY / "llama_config.json"))


def test_a_faithful_compiled_step_is_captured_for_every_slot(model):
    calls = []

    def compiled(frames, rows, positions, static):
        calls.append((frames, rows, positions, static))
        return model.decode(frames, rows, positions, static)

    model.compiled_decode = compiled
    assert capture_decode(model, SLOTS)
    assert model.compiled_decode is compiled and model.cache_batch_size >= SLOTS and model.cache_zeroed
    assert len(calls) >= 2  # (a CUDA graph is recorded on a later call than the first)
    for frames, rows, positions, static in calls:
        assert static and rows.tolist() == list(range(SLOTS)) and positions.tolist() == [0] * SLOTS
        assert frames.shape == (SLOTS, model.config.num_codebooks + 1, 1) and not frames.any()  # pad frames


def test_a_step_that_fails_to_compile_is_dropped(model, caplog):
    def broken(*args):
        raise RuntimeError("no compiler here")

    model.compiled_decode = broken
    with caplog.at_level(logging.WARNING):
        assert not capture_decode(model, SLOTS)
    assert model.compiled_decode is None and "runs eagerly" in caplog.text


def test_a_compiled_step_that_disagrees_is_dropped(model, caplog):
    def wrong(*args):
        out = model.decode(*args)
        return type(out)(-out.token_logits, out.codebook_logits)

    model.compiled_decode = wrong
    with caplog.at_level(logging.WARNING):
        assert not capture_decode(model, SLOTS)
    assert model.compiled_decode is None and "disagrees" in caplog.text

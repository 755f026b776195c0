"""core/s1/compile.py's safety net: a decode that fails to compile, or compiles to something that disagrees
with the eager step, is left eager (the compiled path itself: test_batch.py, and test_cuda.py on a GPU)."""

from __future__ import annotations

import logging

import torch

from core.s1 import compile as s1_compile
from core.s1.compile import compile_decode, compiled_steps
from core.s1.load import load_dual_ar

from .support import S1_CHECKPOINT


def stays_eager(monkeypatch, caplog, fake_compile) -> tuple[object, str]:
    """compile_decode with torch.compile replaced: (the model, what was logged), asserting it said no."""
    model, _ = load_dual_ar(S1_CHECKPOINT)
    monkeypatch.setattr(s1_compile.torch, "compile", fake_compile)
    with caplog.at_level(logging.WARNING):
        assert not compile_decode(model, 2)
    assert getattr(model, "compiled_decode", None) is None
    return model, caplog.text


def test_a_decode_that_fails_to_compile_stays_eager(monkeypatch, caplog):
    def broken(fn, **options):
        def run(*args):
            raise RuntimeError("no compiler here")

        return run

    assert "runs eagerly" in stays_eager(monkeypatch, caplog, broken)[1]


def test_a_compiled_decode_that_disagrees_with_the_eager_one_is_dropped(monkeypatch, caplog):
    def wrong(fn, **options):
        def run(*args):
            out = fn(*args)
            return tuple(-x for x in out) if isinstance(out, tuple) else -out

        return run

    assert "disagrees" in stays_eager(monkeypatch, caplog, wrong)[1]


def test_a_faithful_compiled_decode_is_kept(monkeypatch):
    model, _ = load_dual_ar(S1_CHECKPOINT)
    warmup = []

    def recording(fn, **options):  # (the real compiler: test_batch.py)
        def run(*args):
            warmup.append(args)
            return fn(*args)

        return run

    monkeypatch.setattr(s1_compile.torch, "compile", recording)
    # (the official model's semantic tokens lie beyond a codebook's size; this tiny one's need not)
    model.semantic_begin_id = max(model.semantic_begin_id, model.config.codebook_size)
    assert compile_decode(model, 2)
    # the warm-up steps a real frame: a semantic token over codes in range (on CUDA an embedding index
    # out of range is a device assert that poisons the process, not an error the fallback catches)
    columns = [args[0] for args in warmup if args[0].dim() == 3]
    assert columns, "the slow step was not warmed up"
    c = model.config
    for column in columns:
        assert (column[:, 0] >= model.semantic_begin_id).all() and (column[:, 0] <= model.semantic_end_id).all()
        assert (column[:, 1:] >= 0).all() and (column[:, 1:] < c.codebook_size).all(), column
    assert model.compiled_decode is not None and model.cache_batch == 2 and model.cache_zeroed
    with torch.inference_mode():
        logits, hidden = compiled_steps(model).slow(
            torch.zeros((2, model.config.num_codebooks + 1, 1), dtype=torch.int), torch.tensor([0, 3])
        )
    assert logits.shape[0] == hidden.shape[0] == 2

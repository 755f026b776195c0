"""The v0.2 LM as the scheduler drives it (core/scheduler.py's `Stepper`): caches, prefill, batched forward."""

from __future__ import annotations

from .generate import BATCHED_PREFILL_ROWS, Sequence, decode_logits, decode_threads, prefill_many
from .model import ForwardResult, Transformer


class LMStepper:
    prefill_rows = BATCHED_PREFILL_ROWS

    def __init__(self, model: Transformer):
        self.model = model

    def setup_caches(self, slots: int, zeroed: bool) -> None:
        self.model.setup_caches(slots, self.model.config.max_seq_len, zeroed=zeroed or None)

    def prefill(self, jobs: list[tuple[list[Sequence], list[int]]]) -> list[Exception | None]:
        return prefill_many(self.model, jobs)

    def forward(self, sequences: list[Sequence], static_slots: int | None) -> list[ForwardResult]:
        """Each sequence's logits, not yet sampled: `sequence.accept(out)` samples it."""
        return decode_logits(self.model, sequences, static_slots)

    def threads(self):
        return decode_threads(self.model)

"""The v0.2 LM as the scheduler drives it (core/scheduler.py's `Stepper`): caches, prefill, batched forward."""

from __future__ import annotations

import logging

from . import paths
from .generate import (
    BATCHED_PREFILL_ROWS,
    SampledFrame,
    Sequence,
    decode_logits,
    decode_threads,
    prefill_many,
    sample_together,
)
from .model import ForwardResult, Transformer
from .prefixes import PrefixCache

log = logging.getLogger(__name__)


class LMStepper:
    prefill_rows = BATCHED_PREFILL_ROWS

    def __init__(self, model: Transformer):
        self.model = model
        self.prefixes = PrefixCache()  # voices' prompt prefixes, kept between requests

    def setup_caches(self, slots: int, zeroed: bool) -> None:
        self.model.setup_caches(slots, self.model.config.max_seq_len, zeroed=zeroed or None)

    def prefill(self, jobs: list[tuple[list[Sequence], list[int]]]) -> list[Exception | None]:
        return prefill_many(self.model, jobs, self.prefixes)

    def forward(self, sequences: list[Sequence], static_slots: int | None) -> list[ForwardResult | SampledFrame]:
        """Each sequence's next frame sampled together (sample_together), or where that was not done its
        logits: `sequence.accept(out)` takes the one or samples the other."""
        results = decode_logits(self.model, sequences, static_slots)
        try:
            return sample_together(sequences, results)
        except Exception:  # noqa: BLE001 - each sequence samples alone, so a failure stays with its own
            log.warning("sampling a step's sequences together failed; sampling them one by one", exc_info=True)
            return results

    def threads(self):
        return decode_threads(self.model)

    def bound(self):
        return paths.bound(self.model)

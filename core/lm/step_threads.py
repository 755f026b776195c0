"""Whether a CPU decode step runs torch's own ops on one thread or on torch's pool, decided by timing steps.

Why: a step's linears run on the kernels' own thread pool (kernels.py); torch's small ops between them
(norms, RoPE, attention over a slot's prefix, the fast stack's sampling) run either serially or on
OpenMP workers that spin on the cores the kernels' pool needs. Which is faster depends on the machine
and on what else runs on it: S1-mini on 2 shared vCPUs (Intel Xeon) measured one thread 4x faster
while the other vCPU was busy (float32, 1 row) and torch's pool 5% faster when it was idle (int8, 4
rows). So the first steps alternate the two, the faster median wins, and the choice is measured again
every RECHECK_STEPS steps (a shared machine's load changes). A few steps of trial cost at most the
difference between the two, once per RECHECK_STEPS.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import TypeVar

import torch

from .kernels import cpu_kernels_available, single_threaded_torch

log = logging.getLogger(__name__)

TRIALS = 3  # steps timed each way (alternately, so a change of load hits both)
RECHECK_STEPS = 512
T = TypeVar("T")


class StepThreads:
    """Runs decode steps (`run(step)`), each in the thread setting that measured faster on this machine."""

    def __init__(self, cpu: bool):
        # Only a CPU step with the kernels and more than one torch thread has a choice to make.
        self.enabled = cpu and torch.get_num_threads() > 1 and cpu_kernels_available()
        self.single = True  # v0.2's setting (lm/generate.py decode_threads) until measured
        self._pending: list[bool] = []  # the settings still to time in this trial
        self._times: dict[bool, list[float]] = {True: [], False: []}
        self._since_choice = RECHECK_STEPS  # the first step starts a trial

    def run(self, step: Callable[[], T]) -> T:
        if not self.enabled:
            return step()
        if not self._pending and self._since_choice >= RECHECK_STEPS:
            self._pending = [True, False] * TRIALS
        single = self._pending[0] if self._pending else self.single
        with single_threaded_torch() if single else nullcontext():
            start = time.perf_counter()
            out = step()
            elapsed = time.perf_counter() - start
        if self._pending:
            self._times[self._pending.pop(0)].append(elapsed)
            if not self._pending:
                self._choose()
        else:
            self._since_choice += 1
        return out

    def _choose(self) -> None:
        one, pool = (statistics.median(self._times[k]) for k in (True, False))
        self.single = one <= pool
        self._times = {True: [], False: []}
        self._since_choice = 0
        log.info(
            "decode step: torch on %s (median step %.4f s on one thread, %.4f s on the pool)", self.setting, one, pool
        )

    @property
    def setting(self) -> str:
        """'one thread' or 'N threads' (what the steps run with now; for reports)."""
        return "one thread" if self.single or not self.enabled else f"{torch.get_num_threads()} threads"

"""core/lm/step_threads.py: a decode step's torch thread setting is the one that times faster on this machine,
measured on the first steps and again every RECHECK_STEPS."""

from __future__ import annotations

import time

import pytest
import torch

from core.lm import step_threads
from core.lm.kernels import cpu_kernels_available
from core.lm.step_threads import TRIALS, StepThreads

pytestmark = pytest.mark.skipif(not cpu_kernels_available(), reason="no C++ compiler for the CPU kernels here")


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def step_slower_on(single: bool, seen: list[int]):
    """A step that records torch's thread count and takes 20 ms in the setting to avoid, 1 ms otherwise."""

    def step():
        threads = torch.get_num_threads()
        seen.append(threads)
        time.sleep(0.02 if (threads == 1) == single else 0.001)
        return threads

    return step


@pytest.mark.parametrize("slow_single", [True, False])
def test_the_faster_setting_is_kept_after_the_trial(two_threads, slow_single):
    chooser, seen = StepThreads(cpu=True), []
    step = step_slower_on(slow_single, seen)
    for _ in range(2 * TRIALS):
        chooser.run(step)
    assert seen == [1, 2] * TRIALS  # the trial alternates the two
    assert chooser.single is not slow_single
    assert [chooser.run(step) for _ in range(3)] == [2 if slow_single else 1] * 3
    assert torch.get_num_threads() == 2  # put back after every step


def test_the_choice_is_measured_again_after_recheck_steps(two_threads, monkeypatch):
    monkeypatch.setattr(step_threads, "RECHECK_STEPS", 4)
    chooser, seen = StepThreads(cpu=True), []
    for _ in range(2 * TRIALS):
        chooser.run(step_slower_on(True, seen))
    assert not chooser.single
    for _ in range(4):  # the machine's load changes: now the pool is the slow one
        chooser.run(step_slower_on(False, seen))
    for _ in range(2 * TRIALS):
        chooser.run(step_slower_on(False, seen))
    assert chooser.single and chooser.setting == "one thread"


def test_no_choice_off_the_cpu_or_with_one_thread(two_threads):
    seen = []
    chooser = StepThreads(cpu=False)
    chooser.run(step_slower_on(True, seen))
    torch.set_num_threads(1)
    StepThreads(cpu=True).run(step_slower_on(True, seen))
    assert seen == [2, 1]  # run as they were, nothing switched

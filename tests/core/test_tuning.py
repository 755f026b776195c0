"""core/tuning.best_times: the settings timed in turns, a warm-up round of each left out."""

from __future__ import annotations

from core import tuning


def test_best_times_takes_turns_and_leaves_out_the_warm_up(monkeypatch):
    clock, order, current = [0.0], [], [None]
    costs = {"a": [9.0, 3.0, 2.0], "b": [9.0, 1.0, 5.0]}  # per round: the first a slow warm-up

    def run():
        clock[0] += costs[current[0]][order.count(current[0]) - 1]

    def apply(setting):
        current[0] = setting
        order.append(setting)

    monkeypatch.setattr(tuning.time, "perf_counter", lambda: clock[0])
    assert tuning.best_times(("a", "b"), apply, run, runs=2) == {"a": 2.0, "b": 1.0}
    assert order == ["a", "b"] * 3

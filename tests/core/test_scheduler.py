"""Batched generation across requests: a request's codes do not depend on who else is in the batch,
requests join and leave mid-generation, and a failing one does not disturb the others."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch

import core.lm.stepper as stepper_module
from core.device import release_openmp_threads
from core.lm import SamplingParams, Sequence, load_lm
from core.lm.generate import budget_new_frames
from core.lm.model import ForwardResult
from core.lm.sampling import MAX_REPETITION_PENALTY, MIN_REPETITION_PENALTY, NonFiniteLogits, apply_repetition_penalty
from core.lm.stepper import LMStepper
from core.scheduler import Job, Scheduler, SchedulerFailed
from tests.paths import PARITY

GREEDY = SamplingParams(temperature=1.0, top_p=None, top_k=1, repetition_penalty=1.5)
SAMPLED = SamplingParams(temperature=0.8, top_p=0.9, top_k=None, repetition_penalty=1.2)


@pytest.fixture(scope="module")
def model():
    return load_lm(PARITY / "llama_state_dict.pt", str(PARITY / "llama_config.json"))


def prompt(length: int, seed: int) -> torch.Tensor:
    x = torch.zeros(5, length, dtype=torch.int)
    x[0] = torch.randint(3, 800, (length,), generator=torch.Generator().manual_seed(seed))
    return x


def request(model, length: int, seed: int, params: SamplingParams, new: int) -> Sequence:
    budget = budget_new_frames(length, new, model.config.max_seq_len)
    return Sequence(
        prompt(length, seed),
        budget,
        params,
        eos_token_id=2,
        generator=torch.Generator().manual_seed(seed),
        code_limit=160,
    )


class Collector:
    """Submits sequences and waits for them; on_frame can be told to raise for one of them."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler
        self.done: dict[int, threading.Event] = {}
        self.errors: dict[int, BaseException | None] = {}
        self.frames_seen: dict[int, int] = {}
        self.on_first_frames: dict[int, callable] = {}

    def submit(self, key: int, seq: Sequence) -> None:
        self.done[key] = threading.Event()
        self.frames_seen[key] = 0

        def on_frame(_i, _frame):
            self.frames_seen[key] += 1
            hook = self.on_first_frames.get(key)
            if hook is not None and self.frames_seen[key] == 10:
                hook()

        def on_done(error):
            self.errors[key] = error
            self.done[key].set()

        self.scheduler.submit(Job([seq], on_frame, on_done, owner=key))

    def wait(self, *keys) -> None:
        for key in keys:
            assert self.done[key].wait(120), f"request {key} did not finish"


def codes(seq: Sequence) -> np.ndarray:
    return torch.stack(seq.frames, dim=1).numpy()


def run_alone(model, seq: Sequence) -> np.ndarray:
    scheduler = Scheduler(LMStepper(model), max_batch=1)
    collector = Collector(scheduler)
    collector.submit(0, seq)
    collector.wait(0)
    scheduler.close()
    assert collector.errors[0] is None
    return codes(seq)


SPECS = [
    (20, 1, GREEDY, 40),
    (9, 2, SAMPLED, 30),
    (33, 3, SAMPLED, 50),
    (5, 4, GREEDY, 25),
    (17, 5, SAMPLED, 45),
    (12, 6, GREEDY, 35),
    (26, 7, SAMPLED, 20),
    (14, 8, SAMPLED, 60),
]


def test_every_request_gets_the_same_codes_alone_and_in_a_batch_of_8(model):
    alone = [run_alone(model, request(model, *spec)) for spec in SPECS]
    scheduler = Scheduler(LMStepper(model), max_batch=8)
    collector = Collector(scheduler)
    batched = [request(model, *spec) for spec in SPECS]
    for key, seq in enumerate(batched):
        collector.submit(key, seq)
    collector.wait(*range(len(SPECS)))
    scheduler.close()
    for key, seq in enumerate(batched):
        assert collector.errors[key] is None
        np.testing.assert_array_equal(codes(seq), alone[key], err_msg=f"request {key}")


def test_requests_join_and_leave_mid_generation(model):
    alone = [run_alone(model, request(model, *spec)) for spec in SPECS[:4]]
    scheduler = Scheduler(LMStepper(model), max_batch=2)  # fewer slots than requests: the later ones wait for a slot
    collector = Collector(scheduler)
    seqs = [request(model, *spec) for spec in SPECS[:4]]
    # request 1 joins when request 0 is 10 frames in; 2 and 3 queue behind them
    collector.on_first_frames[0] = lambda: [collector.submit(k, seqs[k]) for k in (1, 2, 3)]
    collector.submit(0, seqs[0])
    collector.wait(0, 1, 2, 3)
    scheduler.close()
    for key, seq in enumerate(seqs):
        np.testing.assert_array_equal(codes(seq), alone[key], err_msg=f"request {key}")


def test_a_failing_request_does_not_disturb_the_others(model):
    alone = run_alone(model, request(model, *SPECS[2]))
    scheduler = Scheduler(LMStepper(model), max_batch=4)
    collector = Collector(scheduler)
    good = request(model, *SPECS[2])
    bad = request(model, *SPECS[1])
    bad.prompt = bad.prompt.clone()
    bad.prompt[0, 3] = 10**6  # a token id past the embedding table: its prefill fails
    collector.submit(0, good)
    collector.submit(1, bad)
    collector.wait(0, 1)
    scheduler.close()
    assert collector.errors[1] is not None and collector.errors[0] is None
    np.testing.assert_array_equal(codes(good), alone)


@pytest.mark.parametrize("when", [1, 10])  # its first frame (after the prefill) or a decode step's
def test_a_callback_raising_a_base_exception_fails_its_request_alone(model, when):
    """A caller's progress callback may raise CancelledError (an asyncio caller) or KeyboardInterrupt: it had
    killed the scheduler thread, and the model failed every request until it was loaded again."""
    import asyncio

    alone = run_alone(model, request(model, *SPECS[2]))
    scheduler = Scheduler(LMStepper(model), max_batch=4)
    collector = Collector(scheduler)
    good, bad = request(model, *SPECS[2]), request(model, *SPECS[1])
    collector.submit(0, good)
    done, frames = threading.Event(), []

    def on_frame(_i, _frame):
        frames.append(1)
        if len(frames) == when:
            raise asyncio.CancelledError()

    scheduler.submit(Job([bad], on_frame, lambda error: done.set() or frames.append(error), owner=1))
    assert done.wait(120)
    collector.wait(0)
    assert isinstance(frames[-1], asyncio.CancelledError) and collector.errors[0] is None
    np.testing.assert_array_equal(codes(good), alone)
    collector.submit(2, request(model, *SPECS[3]))  # and it goes on serving
    collector.wait(2)
    scheduler.close()
    assert collector.errors[2] is None


def test_static_shape_batches_agree_with_the_dynamic_path(model):
    """The CUDA-graph path (all slots every step, masks over the whole cache), checked on CPU."""
    dynamic = [run_alone(model, request(model, *spec)) for spec in SPECS[:3] if spec[2] is GREEDY]
    scheduler = Scheduler(LMStepper(model), max_batch=4, static=True)
    collector = Collector(scheduler)
    seqs = [request(model, *spec) for spec in SPECS[:3] if spec[2] is GREEDY]
    for key, seq in enumerate(seqs):
        collector.submit(key, seq)
    collector.wait(*range(len(seqs)))
    scheduler.close()
    model.clear_caches()
    for key, seq in enumerate(seqs):
        np.testing.assert_array_equal(codes(seq), dynamic[key])


def test_cancel_drops_waiting_and_active_work(model):
    scheduler = Scheduler(LMStepper(model), max_batch=1)
    collector = Collector(scheduler)
    first, second = request(model, 10, 1, GREEDY, 0), request(model, 10, 2, GREEDY, 0)  # 0: fill the context
    first.ignore_stop = second.ignore_stop = True  # long enough to be cancelled while running
    collector.submit(0, first)
    collector.submit(1, second)  # waits for the only slot
    scheduler.cancel(0)
    scheduler.cancel(1)
    collector.wait(0, 1)
    assert type(collector.errors[0]).__name__ == type(collector.errors[1]).__name__ == "Cancelled"
    later = request(model, *SPECS[3])
    collector.submit(2, later)
    collector.wait(2)
    scheduler.close()
    assert collector.errors[2] is None and later.finished


def strict_graph_trees(local, attr_name):
    """torch 2.11's lookup of a thread's CUDA graph trees: asserts in a thread that did not import inductor."""
    if hasattr(local, attr_name):
        return getattr(local, attr_name)
    assert torch._C._is_key_in_tls(attr_name)
    return torch._C._get_obj_in_tls(attr_name)


def test_a_static_scheduler_thread_owns_its_cuda_graph_trees(model, monkeypatch):
    """A second engine's scheduler thread (or one after another thread imported inductor) can still
    reach CUDA graph trees: replaying the compiled decode there asserted on an H200 with torch 2.11."""
    from torch._inductor import cudagraph_trees as trees

    monkeypatch.setattr(trees, "get_obj", strict_graph_trees)
    elsewhere: list[BaseException] = []
    thread = threading.Thread(target=lambda: capture_error(elsewhere, lambda: trees.get_container(0)))
    thread.start()
    thread.join()
    assert elsewhere and isinstance(elsewhere[0], AssertionError)  # (what the scheduler thread met)
    schedulers = [Scheduler(LMStepper(model), max_batch=1, static=True) for _ in range(2)]
    first, second = (scheduler.run(lambda: trees.get_container(0)) for scheduler in schedulers)
    assert first.device_index == second.device_index == 0 and first is not second  # each thread its own
    for scheduler in schedulers:
        scheduler.close()


def capture_error(errors: list[BaseException], fn) -> None:
    try:
        fn()
    except BaseException as error:  # noqa: BLE001 - handed to the test's thread
        errors.append(error)


def test_tasks_run_between_steps_and_report_errors(model):
    scheduler = Scheduler(LMStepper(model), max_batch=1)
    assert scheduler.run(lambda: 41 + 1) == 42
    with pytest.raises(ZeroDivisionError):
        scheduler.run(lambda: 1 / 0)
    scheduler.close()
    with pytest.raises(RuntimeError, match="closed"):
        scheduler.call(lambda: None)


def faulty(seq: Sequence) -> Sequence:
    """`seq` whose sampling at step 5 raises (an injected failure)."""
    accept = seq.accept

    def accept_with_fault(out):
        if seq.steps == 5:
            raise RuntimeError("injected sampling fault")
        return accept(out)

    seq.accept = accept_with_fault
    return seq


def nan_logits_at_step_5(seq: Sequence, monkeypatch) -> Sequence:
    """`seq` whose logits at step 5 come out of the model's forward as NaN (the stepper's own sampling
    of the step's rows sees them, not only the sequence's accept)."""
    real = stepper_module.decode_logits

    def decode_logits(model, sequences, static_slots=None):
        results = real(model, sequences, static_slots)
        nan = float("nan")
        return [
            ForwardResult(r.token_logits * nan, r.codebook_logits * nan) if s is seq and s.steps == 5 else r
            for s, r in zip(sequences, results, strict=True)
        ]

    monkeypatch.setattr(stepper_module, "decode_logits", decode_logits)
    return seq


@pytest.mark.parametrize("fault", ["exception", "nan-logits"])
def test_a_fault_in_one_sequences_sampling_fails_it_alone_mid_batch(model, fault, monkeypatch):
    alone = run_alone(model, request(model, *SPECS[2]))
    scheduler = Scheduler(LMStepper(model), max_batch=4)
    collector = Collector(scheduler)
    good = request(model, *SPECS[2])
    bad = request(model, *SPECS[1])
    if fault == "exception":
        faulty(bad)
    else:
        nan_logits_at_step_5(bad, monkeypatch)
    collector.submit(0, good)
    collector.submit(1, bad)
    collector.wait(0, 1)
    assert collector.errors[0] is None and collector.errors[1] is not None
    if fault == "nan-logits":  # never drawn from: an arbitrary id would have been sampled
        assert isinstance(collector.errors[1], NonFiniteLogits)
    np.testing.assert_array_equal(codes(good), alone)
    later = request(model, *SPECS[3])  # the scheduler goes on
    collector.submit(2, later)
    collector.wait(2)
    scheduler.close()
    assert collector.errors[2] is None and later.finished


def test_when_sampling_a_step_together_fails_each_sequence_samples_alone(model, monkeypatch, caplog):
    """The stepper's batched sampling is shared work: if it raises, every sequence gets its logits and
    samples them in its own accept, with the frames it gets alone."""
    alone = [run_alone(model, request(model, *spec)) for spec in SPECS[1:3]]

    def broken(sequences, results):
        raise RuntimeError("injected batched-sampling fault")

    monkeypatch.setattr(stepper_module, "sample_together", broken)
    scheduler = Scheduler(LMStepper(model), max_batch=4)
    collector = Collector(scheduler)
    seqs = [request(model, *spec) for spec in SPECS[1:3]]
    for i, seq in enumerate(seqs):
        collector.submit(i, seq)
    collector.wait(0, 1)
    scheduler.close()
    assert collector.errors == {0: None, 1: None}
    for seq, expected in zip(seqs, alone, strict=True):
        np.testing.assert_array_equal(codes(seq), expected)
    assert "sampling them one by one" in caplog.text


@pytest.mark.parametrize(
    "options",
    [
        dict(repetition_penalty=1e-300),
        dict(repetition_penalty=float("nan")),
        dict(repetition_penalty=11.0),
        dict(temperature=float("inf")),
        dict(top_k=10**6),
        dict(top_p=float("nan")),
    ],
)
def test_sampling_options_out_of_bounds_are_refused(options):
    with pytest.raises(ValueError):
        SamplingParams(**options)


def test_at_the_penalty_bounds_logits_stay_finite(model):
    """At either bound a penalty moves a logit by 100x at most: even 1e30 stays finite in float32."""
    for penalty in (MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY):
        logits = torch.tensor([[1e30, -1e30, 3.0, 0.0]])
        penalised = apply_repetition_penalty(logits, torch.tensor([[0, 1, 2]]), penalty)
        assert torch.isfinite(penalised).all()


def test_a_dead_scheduler_fails_every_waiting_and_later_job(model):
    scheduler = Scheduler(LMStepper(model), max_batch=1)
    collector = Collector(scheduler)

    def broken_admit():
        raise RuntimeError("injected scheduler fault")

    scheduler._admit = broken_admit  # the thread's loop calls it on its next wake-up
    collector.submit(0, request(model, *SPECS[0]))
    collector.wait(0)
    assert isinstance(collector.errors[0], SchedulerFailed)
    scheduler._thread.join(10)
    assert not scheduler._thread.is_alive() and isinstance(scheduler.failure, RuntimeError)
    with pytest.raises(SchedulerFailed):
        collector.submit(1, request(model, *SPECS[1]))
    with pytest.raises(SchedulerFailed):
        scheduler.call(lambda: None)
    scheduler.close()  # returns at once


class _Fatal(BaseException):
    """What no `except Exception` in the loop catches (a bug of the kind that kills the thread)."""


def test_a_thread_that_dies_in_a_prefill_fails_that_rounds_job_and_task_too(model):
    """The round's admitted jobs and task are off the queues while it runs: they were never answered, so
    their requests hung, holding their queue places and the model's lease."""

    class DyingStepper(LMStepper):
        def prefill(self, jobs):
            raise _Fatal()

    scheduler = Scheduler(DyingStepper(model), max_batch=2)
    collector = Collector(scheduler)
    held, release = threading.Event(), threading.Event()
    scheduler.call(lambda: held.set() or release.wait(60))
    assert held.wait(60)
    collector.submit(0, request(model, *SPECS[0]))  # admitted in the next round, with the task below
    task = scheduler.call(lambda: "never run")
    release.set()
    collector.wait(0)
    assert isinstance(collector.errors[0], SchedulerFailed)
    with pytest.raises(SchedulerFailed):
        task.result(60)
    scheduler._thread.join(10)
    assert isinstance(scheduler.failure, _Fatal)


# -- admission rounds: one stepper call per round, a row limit per round ----------------------------------


@pytest.fixture(scope="module")
def int8_model():
    return load_lm(PARITY / "llama_state_dict.pt", str(PARITY / "llama_config.json"), quantize="int8")


class RecordingStepper(LMStepper):
    """LMStepper that logs its calls: ("prefill", [prompt lengths]) and ("step", rows)."""

    def __init__(self, model, prefill_rows: int):
        super().__init__(model)
        self.prefill_rows, self.calls = prefill_rows, []

    def prefill(self, jobs):
        self.calls.append(("prefill", [seqs[0].prompt.shape[1] for seqs, _ in jobs]))
        return super().prefill(jobs)

    def forward(self, sequences, static_slots):
        self.calls.append(("step", len(sequences)))
        return super().forward(sequences, static_slots)


def submit_together(scheduler: Scheduler, collector: Collector, seqs: list[Sequence]) -> None:
    """Submit while the scheduler thread is held by a task, so that all of them wait for one admission."""
    held, release = threading.Event(), threading.Event()
    scheduler.call(lambda: held.set() or release.wait(60))
    assert held.wait(60)
    for key, seq in enumerate(seqs):
        collector.submit(key, seq)
    release.set()


def test_admission_rounds_hold_at_most_prefill_rows_and_a_step_runs_between(model):
    """20 + 9 fit in 40 positions, 33 does not: it and 5 wait for the next round, after one decode step."""
    stepper = RecordingStepper(model, prefill_rows=40)
    scheduler = Scheduler(stepper, max_batch=8)
    collector = Collector(scheduler)
    seqs = [request(model, *spec) for spec in (SPECS[0], SPECS[1], SPECS[2], SPECS[3], SPECS[6])]
    submit_together(scheduler, collector, seqs)
    collector.wait(*range(len(seqs)))
    scheduler.close()
    prefills = [lengths for kind, lengths in stepper.calls if kind == "prefill"]
    assert prefills == [[20, 9], [33, 5], [26]]
    first, second = stepper.calls.index(("prefill", [20, 9])), stepper.calls.index(("prefill", [33, 5]))
    assert stepper.calls[first + 1 : second] == [("step", 2)]
    assert all(error is None for error in collector.errors.values())


def test_a_job_without_sequences_is_refused(model):
    scheduler = Scheduler(LMStepper(model), max_batch=1)
    with pytest.raises(ValueError, match="at least one sequence"):
        scheduler.submit(Job([], lambda i, f: None, lambda e: None))
    scheduler.close()


def test_a_prompt_longer_than_the_round_is_admitted_alone(model):
    stepper = RecordingStepper(model, prefill_rows=8)
    scheduler = Scheduler(stepper, max_batch=4)
    collector = Collector(scheduler)
    seqs = [request(model, *SPECS[0]), request(model, *SPECS[3])]
    submit_together(scheduler, collector, seqs)
    collector.wait(0, 1)
    scheduler.close()
    assert [lengths for kind, lengths in stepper.calls if kind == "prefill"] == [[20], [5]]


def test_int8_requests_admitted_together_get_their_codes_alone(int8_model):
    """One packed prefill for the round; the tiny model has no near-ties, so every code is the same.
    (Prompts of more than 8 positions: alone they take the same prefill matmul, not the decode path.)"""
    specs = [SPECS[0], SPECS[1], SPECS[2], SPECS[4]]
    alone = [run_alone(int8_model, request(int8_model, *spec)) for spec in specs]
    stepper = RecordingStepper(int8_model, prefill_rows=LMStepper.prefill_rows)
    scheduler = Scheduler(stepper, max_batch=4)
    collector = Collector(scheduler)
    seqs = [request(int8_model, *spec) for spec in specs]
    submit_together(scheduler, collector, seqs)
    collector.wait(*range(4))
    scheduler.close()
    assert stepper.calls[0] == ("prefill", [20, 9, 33, 17])
    for key, seq in enumerate(seqs):
        assert collector.errors[key] is None
        np.testing.assert_array_equal(codes(seq), alone[key], err_msg=f"request {key}")


def test_a_bad_job_in_a_packed_round_fails_alone(int8_model):
    """The packed forward fails on the bad prompt; the round is redone job by job: the others' codes
    are exactly their codes alone."""
    alone = [run_alone(int8_model, request(int8_model, *spec)) for spec in (SPECS[0], SPECS[2])]
    scheduler = Scheduler(LMStepper(int8_model), max_batch=4)
    collector = Collector(scheduler)
    bad = request(int8_model, *SPECS[1])
    bad.prompt = bad.prompt.clone()
    bad.prompt[0, 3] = 10**6  # a token id past the embedding table
    seqs = [request(int8_model, *SPECS[0]), bad, request(int8_model, *SPECS[2])]
    submit_together(scheduler, collector, seqs)
    collector.wait(0, 1, 2)
    scheduler.close()
    assert isinstance(collector.errors[1], IndexError)
    assert collector.errors[0] is None and collector.errors[2] is None
    np.testing.assert_array_equal(codes(seqs[0]), alone[0])
    np.testing.assert_array_equal(codes(seqs[2]), alone[1])


def test_a_failing_prefill_call_fails_only_its_round(model):
    """A stepper whose whole prefill call raises: that round's jobs fail, the scheduler goes on."""
    stepper = RecordingStepper(model, prefill_rows=LMStepper.prefill_rows)
    real = stepper.prefill
    stepper.prefill = lambda jobs: (_ for _ in ()).throw(RuntimeError("injected")) if len(jobs) == 2 else real(jobs)
    scheduler = Scheduler(stepper, max_batch=4)
    collector = Collector(scheduler)
    submit_together(scheduler, collector, [request(model, *SPECS[0]), request(model, *SPECS[1])])
    collector.wait(0, 1)
    assert all(isinstance(collector.errors[k], RuntimeError) for k in (0, 1))
    later = request(model, *SPECS[3])
    collector.submit(2, later)
    collector.wait(2)
    scheduler.close()
    assert collector.errors[2] is None and later.finished


EXIT_SCRIPT = """
import time, torch
from core.lm import load_lm
from core.lm.stepper import LMStepper
from core.scheduler import Scheduler
from tests.paths import PARITY

model = load_lm(PARITY / "llama_state_dict.pt", str(PARITY / "llama_config.json"))
scheduler = Scheduler(LMStepper(model), 2)
a = torch.randn(1000, 1000)

def busy():  # torch work (the GIL released inside each op) still running when the script ends
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        torch.mm(a, a)

scheduler.call(busy)
time.sleep(0.3)
print("main done")
"""


def test_the_process_exits_cleanly_while_the_scheduler_is_inside_torch():
    """A daemon thread inside torch at interpreter finalization aborts the process (exit 134); the
    scheduler is closed at exit first (seen as a rare CLI failure: 'terminate called without an active
    exception')."""
    import subprocess
    import sys

    from tests.paths import ROOT

    result = subprocess.run([sys.executable, "-c", EXIT_SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "main done" in result.stdout, (result.returncode, result.stderr[-2000:])
    assert "terminate called" not in result.stderr


def _thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_a_thread_that_hands_work_over_frees_its_openmp_workers(model):
    """Two threads with OpenMP teams of their own outnumber the cores and slow each other's parallel
    ops (core/device.py): handing work to the scheduler frees the caller's workers."""
    scheduler = Scheduler(LMStepper(model), max_batch=1)
    scheduler.run(lambda: torch.ones(1 << 22).add_(1))  # the scheduler thread's own team
    counts = {}

    def caller():
        if torch.get_num_threads() < 2 or not release_openmp_threads():  # (also frees any earlier team)
            return
        before = _thread_count()
        torch.ones(1 << 22).add_(1)  # a parallel op: this thread gets a team (at least one worker)
        counts["with team"] = _thread_count()
        scheduler.run(lambda: None)
        deadline = time.monotonic() + 5
        while _thread_count() > before and time.monotonic() < deadline:
            time.sleep(0.01)
        counts["before"], counts["after"] = before, _thread_count()

    thread = threading.Thread(target=caller)
    thread.start()
    thread.join()
    scheduler.close()
    if not counts:
        pytest.skip("one OpenMP thread here, or torch does not run on its own GNU OpenMP")
    assert counts["with team"] > counts["before"]
    assert counts["after"] <= counts["before"]  # (another test's thread may have ended meanwhile)

"""The batch scheduler: one thread runs the LM over every active sequence at once, and other model
work (VQGAN decoding of finished chunks, reference encoding) between its steps.

Why: decoding is bound by reading the weights, and one step for 4 sequences costs barely more than
for 1, so concurrent requests share steps instead of queueing behind a lock. A sequence joins the
batch at the next step after its prefill and leaves when it stops, each with its own cache slot,
position, sampling parameters, random generator and repetition window (core/lm/generate.py); the
decode kernels are batch-invariant, so its tokens do not depend on who else is in the batch.

Admission: the jobs that fit in the free slots join in rounds of up to the stepper's `prefill_rows`
prompt positions, prefilled in one stepper call (the v0.2 stepper packs a quantized model's prompts
into one forward), then a decode step runs before the next round, so a burst of long prompts
holds up the running sequences by one round's prefill at a time.

The model comes as a `Stepper` (core/lm/stepper.py for v0.2, core/s1/batch.py for S1): the scheduler
knows slots, sequences and failures; the stepper knows its model's prefill and batched forward.

Everything that touches the models runs on this thread, so the CPU cores are never shared by two
torch calls at once and the KV cache needs no lock. Callers talk to it through `submit` (sequences)
and `call` (any function, run between steps by priority: lower first, then first come); a thread that
hands work over gives up its own OpenMP workers, which would slow this thread's (core/device.py).

An error in one job's work (its prefill, its sampling, its callbacks) fails that job alone (a stepper
reports prefill errors per job: a packed prefill that fails is redone job by job); an error of the
batched forward fails the jobs in that batch. Should the thread itself die, `failure`
says why, everything waiting fails with `SchedulerFailed`, and so does all later work.
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from .device import release_openmp_threads
from .lm.compile import own_cuda_graph_trees

log = logging.getLogger(__name__)
EXIT_JOIN_S = 60.0  # at interpreter exit, how long a scheduler may take to finish the step it is in


class Cancelled(Exception):
    """The owner of a job or task cancelled it."""


class SchedulerFailed(RuntimeError):
    """The scheduler thread died; its model takes no more work until it is loaded anew."""


class GeneratedSequence(Protocol):
    """What the scheduler reads of a sequence (each family's `Sequence` has more)."""

    prompt: Tensor  # [rows, positions]
    finished: bool
    last: Tensor | None  # the newest frame

    def accept(self, out: Any) -> Tensor: ...


class Stepper(Protocol):
    """One model family's side of batched decoding."""

    prefill_rows: int  # prompt positions admitted per round (one longer prompt alone): bounds a round's stall

    def setup_caches(self, slots: int, zeroed: bool) -> None: ...

    def prefill(self, jobs: list[tuple[list, list[int]]]) -> list[Exception | None]:
        """Run each job's (shared) prompt into its slots, each sequence getting its first frame (`last`);
        per job, the error that stopped it (one job's failure must not fail the others)."""

    def forward(self, sequences: list, static_slots: int | None) -> list:
        """One batched step: per sequence, what its `accept(out)` turns into its next frame."""

    def threads(self):
        """The context manager a step runs in (thread settings)."""

    def bound(self):
        """The context manager the scheduler thread runs in for its life (its model's own decode paths)."""


@dataclass(eq=False)
class Job:
    """Sequences of one prompt to generate (`len > 1`: samples sharing one prefill). `on_frame(i, frame)`
    gets sequence i's frames as they come, `on_done(error)` is called once when all have stopped, on
    the scheduler thread; both must be quick."""

    sequences: list[GeneratedSequence]
    on_frame: Callable[[int, Tensor], None]
    on_done: Callable[[BaseException | None], None]
    owner: object = None
    slots: list[int] = field(default_factory=list)
    reported: bool = field(default=False, init=False)  # on_done was called


class Scheduler:
    def __init__(self, stepper: Stepper, max_batch: int, static: bool = False):
        """`static`: every step decodes all `max_batch` slots with fixed shapes (for CUDA graphs)."""
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.stepper, self.max_batch, self.static = stepper, max_batch, static
        self._free = list(range(max_batch))
        self._waiting: deque[Job] = deque()
        self._active: list[Job] = []
        self._tasks: list[tuple[int, int, Callable[[], Any], Future, object]] = []
        self._order = itertools.count()
        self._cancelled: dict[int, object] = {}  # owners whose work is to be dropped (kept alive: ids stay unique)
        self._wake = threading.Condition()
        self._closed = False
        self._caches_ready = False
        self._in_hand: tuple[list[Job], Any] = ([], None)  # the round's admitted jobs and task, being run
        self.failure: BaseException | None = None  # why the thread died, if it did
        self._thread = threading.Thread(target=self._run, name="fishtts-scheduler", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    # -- callers ---------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        if not job.sequences:
            raise ValueError("a job needs at least one sequence")
        if len(job.sequences) > self.max_batch:
            raise ValueError(f"{len(job.sequences)} sequences at once; the batch holds {self.max_batch}")
        self._hand_over()
        with self._wake:
            self._check_open()
            self._waiting.append(job)
            self._wake.notify()

    def call(self, fn: Callable[[], Any], priority: int = 0, owner: object = None) -> Future:
        """Run `fn()` on the scheduler thread between steps; its result or error lands in the future."""
        future: Future = Future()
        self._hand_over()
        with self._wake:
            self._check_open()
            heapq.heappush(self._tasks, (priority, next(self._order), fn, future, owner))
            self._wake.notify()
        return future

    def run(self, fn: Callable[[], Any], priority: int = 0) -> Any:
        """`call` and wait (from any thread but the scheduler's own)."""
        if threading.current_thread() is self._thread:
            return fn()
        return self.call(fn, priority).result()

    def refuse_own_thread(self) -> None:
        """For work its caller will wait for: from the scheduler's own thread (a callback of its work that calls
        the engine) that wait could never end, and every later request would wait behind it."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("the engine cannot be called to generate from inside its own callback (progress)")

    def cancel(self, owner: object) -> None:
        """Drop the owner's waiting jobs and tasks, and stop its active sequences before the next step
        (their `on_done` gets `Cancelled`). Work the owner submits afterwards is not affected."""
        with self._wake:
            self._cancelled[id(owner)] = owner
            self._wake.notify()

    def close(self, timeout: float | None = None) -> None:
        """Stop after the step in progress (work still waiting fails) and wait for the thread."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _hand_over(self) -> None:
        if threading.current_thread() is not self._thread:
            release_openmp_threads()

    def _check_open(self) -> None:
        if self.failure is not None:
            raise _failed(self.failure)
        if self._closed:
            raise RuntimeError("the scheduler is closed")

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            if self.static:
                own_cuda_graph_trees()
            with self.stepper.bound():
                self._loop()
            error: BaseException = RuntimeError("the model was unloaded")
        except BaseException as exc:  # noqa: BLE001 - a bug here must not leave callers waiting forever
            log.exception("the scheduler thread died; its model fails all work until it is loaded again")
            with self._wake:
                self.failure, self._closed = exc, True
            error = _failed(exc)
        self._fail_everything(error)

    def _loop(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(
                    lambda: self._closed or self._waiting or self._active or self._tasks or self._cancelled
                )
                if self._closed:
                    break
                self._drop_cancelled()
                admitted = self._admit()
                task = heapq.heappop(self._tasks) if self._tasks else None
                self._in_hand = (admitted, task)  # off the queues: should the thread die now, they fail too
            with torch.inference_mode():
                if admitted:
                    self._prefill(admitted)
                if self._active:
                    self._step()
                if task is not None:
                    self._run_task(task)

    def _admit(self) -> list[Job]:
        """Waiting jobs that fit in the free slots, in arrival order, up to the stepper's `prefill_rows`
        prompt positions (at least one job): the rest wait for a decode step (called with the lock held)."""
        admitted, rows = [], 0
        while self._waiting and len(self._waiting[0].sequences) <= len(self._free):
            rows += self._waiting[0].sequences[0].prompt.shape[-1]
            if admitted and rows > self.stepper.prefill_rows:
                break
            job = self._waiting.popleft()
            count = len(job.sequences)
            self._free.sort()
            job.slots = self._free[:count]
            del self._free[:count]
            admitted.append(job)
        return admitted

    def _prefill(self, jobs: list[Job]) -> None:
        """One round's admitted jobs, prefilled in one stepper call (it may batch them)."""
        try:
            if not self._caches_ready:
                self.stepper.setup_caches(self.max_batch, self.static)
                self._caches_ready = True
            errors = self.stepper.prefill([(job.sequences, job.slots) for job in jobs])
        except Exception as exc:  # noqa: BLE001 - shared work failed: no job of this round can start
            log.exception("prefill failed")
            errors = [exc] * len(jobs)
        for job, error in zip(jobs, errors, strict=True):
            if error is None:
                try:
                    for i, seq in enumerate(job.sequences):
                        job.on_frame(i, seq.last)
                except BaseException as exc:  # noqa: BLE001 - its callback (any error it raises): a bad job fails alone
                    error = exc
            if error is not None:
                self._finish(job, error)
                continue
            with self._wake:
                self._active.append(job)
        self._finish_stopped()

    def _step(self) -> None:
        running = [(job, i, seq) for job in self._active for i, seq in enumerate(job.sequences) if not seq.finished]
        failed: dict[Job, BaseException] = {}
        with self.stepper.threads():
            try:
                logits = self.stepper.forward([seq for _, _, seq in running], self.max_batch if self.static else None)
            except Exception as exc:  # noqa: BLE001 - no job of this batch can go on
                log.exception("decode step failed")
                logits, failed = [], {job: exc for job, _, _ in running}
            for (job, i, seq), out in zip(running, logits, strict=False):  # no logits: the forward failed
                if job in failed:
                    continue
                try:  # sampling and the callback are this job's own: a failure stops it alone
                    job.on_frame(i, seq.accept(out))
                except BaseException as exc:  # noqa: BLE001 - (a caller's callback may raise CancelledError too)
                    failed[job] = exc
        for job, exc in failed.items():
            self._finish(job, exc)
        self._finish_stopped()

    def _finish_stopped(self) -> None:
        for job in [j for j in self._active if all(seq.finished for seq in j.sequences)]:
            self._finish(job, None)

    def _finish(self, job: Job, error: BaseException | None) -> None:
        with self._wake:
            self._release(job)
        _report(job, error)

    def _release(self, job: Job) -> None:
        """Take the job out of the batch and free its slots (called with the lock held)."""
        if job in self._active:
            self._active.remove(job)
        self._free.extend(job.slots)
        job.slots = []

    def _run_task(self, task) -> None:
        _, _, fn, future, _ = task
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - delivered to the caller
            future.set_exception(exc)

    def _drop_cancelled(self) -> None:
        """Called with the lock held."""
        if not self._cancelled:
            return
        gone, self._cancelled = self._cancelled, {}
        dropped = [j for j in self._waiting if id(j.owner) in gone]
        self._waiting = deque(j for j in self._waiting if id(j.owner) not in gone)
        stopped = [j for j in self._active if id(j.owner) in gone]
        tasks = [t for t in self._tasks if id(t[4]) in gone]
        self._tasks = [t for t in self._tasks if id(t[4]) not in gone]
        heapq.heapify(self._tasks)
        for job in dropped + stopped:
            self._release(job)
        self._wake.release()
        try:
            for job in dropped + stopped:
                _report(job, Cancelled())
            for task in tasks:
                task[3].cancel()
        finally:
            self._wake.acquire()

    def _fail_everything(self, error: BaseException) -> None:
        with self._wake:
            admitted, task = self._in_hand
            jobs = admitted + list(self._waiting) + list(self._active)
            tasks = list(self._tasks) + ([task] if task is not None else [])
            self._waiting.clear()
            self._active.clear()
            self._tasks.clear()
            self._in_hand = ([], None)
        for job in jobs:
            _report(job, error)  # once: a job of the round already done (or also active) is not told again
        for task in tasks:
            if not task[3].done():
                task[3].set_exception(error)


_LIVE: weakref.WeakSet[Scheduler] = weakref.WeakSet()


@atexit.register
def _close_live_schedulers() -> None:
    """A daemon thread still inside torch when the interpreter finalizes is ended by pthread_exit, whose
    unwinding through torch's noexcept frames aborts the process ("terminate called without an active
    exception", exit 134): a CLI run that returned while the thread finished its last step. Stop them first."""
    for scheduler in list(_LIVE):
        scheduler.close(EXIT_JOIN_S)


def _failed(cause: BaseException) -> SchedulerFailed:
    return SchedulerFailed(f"its scheduler thread died ({cause.__class__.__name__})")


def _report(job: Job, error: BaseException | None) -> None:
    if job.reported:
        return
    job.reported = True
    try:
        job.on_done(error)
    except Exception:  # noqa: BLE001 - a broken callback must not stop the scheduler
        log.exception("job callback failed")

"""The bounded synthesis queue: model work runs on worker threads, never on the event loop.

At most `max_pending` jobs are running or waiting (a streamed response counts until its last byte);
one more is refused at once with 503 and a Retry-After estimated from recent job times, instead of
piling up connections and memory.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from .errors import ApiError

T = TypeVar("T")


class QueueFull(ApiError):
    def __init__(self, pending: int, retry_after: int):
        super().__init__(503, f"The server is busy ({pending} synthesis requests running or waiting); retry in "
                              f"about {retry_after} s.", headers={"Retry-After": str(retry_after)}, code="queue_full")


class WorkQueue:
    def __init__(self, workers: int, max_pending: int):
        self.workers, self.max_pending = workers, max_pending
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fishtts-synth")
        self._lock = threading.Lock()
        self._pending = 0
        self._mean_seconds = 2.0  # running mean of job durations, for Retry-After

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def retry_after(self) -> int:
        with self._lock:
            waves = math.ceil(max(self._pending, 1) / self.workers)
            return max(1, min(120, math.ceil(waves * self._mean_seconds)))

    def reserve(self) -> None:
        """Count one request as running until `release()`; 503 at once when the queue is full."""
        with self._lock:
            if self._pending >= self.max_pending:
                pending = self._pending
            else:
                self._pending += 1
                return
        raise QueueFull(pending, self.retry_after())

    def release(self) -> None:
        with self._lock:
            self._pending -= 1

    def submit(self, job: Callable[[], T]) -> Future:
        """Start `job` on a worker thread, counted until it ends (even if its client went away
        meanwhile); 503 at once when the queue is full."""
        self.reserve()
        try:
            future = self._pool.submit(self._timed, job)
        except BaseException:
            self.release()
            raise
        future.add_done_callback(lambda _: self.release())
        return future

    async def run(self, job: Callable[[], T]) -> T:
        """Run `job` on a worker thread and wait for it; 503 at once when the queue is full."""
        result = asyncio.wrap_future(self.submit(job))
        result.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even if nobody waits
        # Shielded: an accepted job always runs to its end (it returns its model lease there), even
        # when the request that queued it is cancelled.
        return await asyncio.shield(result)

    def record(self, seconds: float) -> None:
        """A request's duration, for Retry-After."""
        with self._lock:
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * seconds

    def _timed(self, job: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return job()
        finally:
            self.record(time.perf_counter() - start)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

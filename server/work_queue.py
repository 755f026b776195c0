"""The bounded synthesis queue: request work runs on worker threads, never on the event loop.

The model itself runs on each engine's scheduler thread (core/scheduler.py), which batches the
generations of all requests; a worker thread prepares a request (decoding an upload, reading the
text), hands it to the scheduler and waits for its audio. At most `max_pending` requests are
admitted at once (a streamed response counts until its last byte); one more is refused at once with
503 and a Retry-After estimated from recent request times, instead of piling up connections.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from .errors import ApiError

T = TypeVar("T")


class QueueFull(ApiError):
    def __init__(self, pending: int, retry_after: int):
        super().__init__(
            503,
            f"The server is busy ({pending} synthesis requests running or waiting); retry in about {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
            code="queue_full",
        )


class WorkQueue:
    def __init__(self, workers: int, max_pending: int):
        self.workers, self.max_pending = workers, max_pending
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fishtts-synth")
        self._lock = threading.Lock()
        self._pending = 0
        self._mean_seconds = 2.0  # running mean of request durations, for Retry-After

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def retry_after(self) -> int:
        with self._lock:
            waves = math.ceil(max(self._pending, 1) / self.workers)
            return max(1, min(120, math.ceil(waves * self._mean_seconds)))

    def reserve(self) -> None:
        """Count one request as admitted until `release()`; 503 at once when the queue is full."""
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

    def submit(self, work: Callable[..., T], *args) -> Future:
        """Run `work(*args)` on a worker thread (for an admitted request)."""
        return self._pool.submit(work, *args)

    def record(self, seconds: float) -> None:
        """An admitted request's duration, for Retry-After."""
        with self._lock:
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * seconds

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

"""A request whose task is cancelled (Ray Serve's proxy does that when the client leaves) stops its work."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

from server.context import Admission
from server.work_queue import WorkQueue


def test_a_cancelled_whole_synthesis_stops_its_work_and_frees_its_queue_place():
    """The work ran to its end: the replica's queue stayed full while Serve sent it new requests (503s)."""
    queue = WorkQueue(workers=1, max_pending=1)
    ctx = SimpleNamespace(queue=queue, registry=SimpleNamespace(release=lambda bundle: None))
    stopped, started = threading.Event(), threading.Event()

    def work(engine) -> bytes:
        started.set()
        stopped.wait(10)  # (a long generation, until told to stop)
        return b""

    class StayingClient:
        async def receive(self):
            await asyncio.Event().wait()  # (never leaves by itself: its task is cancelled instead)

    async def scenario() -> None:
        queue.reserve()
        admission = Admission(ctx, SimpleNamespace(engine=None))
        task = asyncio.ensure_future(admission.run_watched(StayingClient(), work, stopped.set))
        while not started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        admission.close()
        assert stopped.is_set()
        for _ in range(200):  # the work ends at its next step, then the place is free
            if queue.pending == 0:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the queue place is still held")

    try:
        asyncio.run(scenario())
    finally:
        stopped.set()
        queue.shutdown()

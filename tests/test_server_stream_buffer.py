"""A streamed response never waits on its client for long: the generation hands its chunks to a buffer
(it does not wait for the reader), a send the client does not take within the send timeout closes the
stream, and a client too far behind loses it. Driven through the ASGI interface with a client that
stops reading (the socket buffers of a real connection would hide a stall of a few MB)."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from server.audio_buffer import AudioBuffer, BufferOverflow
from server.streaming import AudioStreamResponse


def test_a_client_that_reads_nothing_is_dropped_after_the_send_timeout():
    async def scenario():
        buffer = AudioBuffer(asyncio.get_running_loop())
        response = AudioStreamResponse(buffer, np.zeros(1000, np.float32), "pcm", send_timeout=0.5, headers={})
        sent = []

        async def stalled_send(message):
            sent.append(message["type"])
            if message["type"] == "http.response.body":
                await asyncio.sleep(3600)  # the client's window is full and stays full

        start = time.monotonic()
        await asyncio.wait_for(response.stream_response(stalled_send), 10)
        elapsed = time.monotonic() - start
        assert 0.5 <= elapsed < 3, elapsed
        assert sent == ["http.response.start", "http.response.body"]  # no final chunk: the client sees a cut
        assert not buffer.put(np.zeros(10, np.float32))  # the generation is told to stop

    asyncio.run(scenario())


def test_the_generation_never_waits_for_the_reader_and_overflow_ends_the_stream():
    async def scenario():
        buffer = AudioBuffer(asyncio.get_running_loop(), max_samples=2500)
        chunk = np.ones(1000, np.float32)
        # The generation side (a worker thread in the server) puts without waiting for anyone to read.
        results = await asyncio.to_thread(lambda: [buffer.put(chunk) for _ in range(3)])
        assert results == [True, True, False]
        assert (await buffer.next()).size == 1000 and (await buffer.next()).size == 1000
        try:
            await buffer.next()
        except BufferOverflow:
            pass
        else:
            raise AssertionError("a reader too far behind must lose its stream")

    asyncio.run(scenario())

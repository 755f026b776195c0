"""A streamed response never waits on its client for long: the generation hands its chunks to a buffer
(it does not wait for the reader), a send the client does not take within the send timeout closes the
stream, and a client too far behind loses it. Driven through the ASGI interface with a client that
stops reading (the socket buffers of a real connection would hide a stall of a few MB)."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np

from server.app import create_app
from server.audio_buffer import AudioBuffer, BufferOverflow
from server.routes.models import load_bundle
from server.schemas import LoadModelRequest
from server.settings import Settings
from server.streaming import AudioStreamResponse
from tests.server.helpers import WEBUI_LOAD, make_workdir


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


def test_a_stalled_reader_holds_neither_the_queue_place_nor_the_model(tmp_path, monkeypatch):
    """The whole server, driven through ASGI by a client that takes the headers and one chunk, then stalls
    (its send never completes): the generation still ends, its queue place and model lease are returned
    while the response is stuck, and deleting the model answers at once."""
    workdir = make_workdir(tmp_path)
    monkeypatch.chdir(workdir)
    app = create_app(
        Settings(
            checkpoints_dir=workdir / "checkpoints",
            references_dir=workdir / "references",
            max_queue=1,
            stream_send_timeout=600,
        )
    )
    ctx = app.state.ctx
    load_bundle(ctx, "default", LoadModelRequest.model_validate(WEBUI_LOAD))
    body = json.dumps(
        {
            "text": "One sentence. And another one. And a third.",
            "max_new_tokens": 30,
            "seed": 1,
            "streaming": True,
            "format": "pcm",
        }
    ).encode()

    async def scenario():
        requested = asyncio.Event()
        stalled = asyncio.Event()
        sent = []

        async def receive():
            if not requested.is_set():
                requested.set()
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)  # the client neither reads nor disconnects

        async def send(message):
            sent.append(message)
            if message["type"] == "http.response.body":
                stalled.set()
                await asyncio.sleep(3600)  # its receive window is full

        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/models/default/invoke",
            "raw_path": b"/v1/models/default/invoke",
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"127.0.0.1"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        response = asyncio.create_task(app(scope, receive, send))
        await asyncio.wait_for(stalled.wait(), 120)
        assert sent[0]["status"] == 200
        deadline = time.monotonic() + 120
        while ctx.queue.pending or ctx.registry.describe()[0]["active_requests"]:
            assert time.monotonic() < deadline, "the stalled reader still holds the queue place or the model"
            await asyncio.sleep(0.05)
        assert not response.done()  # still stuck sending to its client
        start = time.monotonic()
        await asyncio.wait_for(asyncio.to_thread(ctx.registry.delete, "default"), 30)
        assert time.monotonic() - start < 10
        response.cancel()  # the client goes away at last

    asyncio.run(scenario())

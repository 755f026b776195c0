"""Streamed synthesis responses: chunked transfer of a WAV (or raw PCM) whose first bytes leave as soon
as the first audio chunk is decoded.

The first chunk is awaited before the response starts, so a request that fails early (a bad reference,
text the front end rejects, a full queue) still gets its JSON error. The generation does not wait for
the client (server/audio_buffer.py). A client that disconnects, or takes nothing for
--stream-send-timeout seconds, is dropped: its buffer is closed, which cancels the generation if it
still runs. An error after the status line was sent can only end the stream early: the connection is
closed without the final chunk, so the client sees a broken transfer, not a short but complete one.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from starlette.responses import StreamingResponse
from starlette.types import Message, Send

from core.audio import SAMPLE_RATE, pcm16_bytes, streaming_wav_header

from .audio_buffer import AudioBuffer
from .context import ServerContext
from .errors import ApiError
from .synthesis import CONTENT_TYPES, STREAM_FORMATS, SynthesisJob, start_stream

log = logging.getLogger("fishtts.server")


def check_stream_format(output_format: str, field: str) -> None:
    if output_format not in STREAM_FORMATS:
        raise ApiError(422, f"{field}: streaming sends {' or '.join(STREAM_FORMATS)}; {output_format!r} cannot be "
                            "streamed (ask for it without streaming).", param=field)


class ClientStalled(Exception):
    pass


class AudioStreamResponse(StreamingResponse):
    """The buffer's chunks as 16-bit PCM (after a WAV header for wav); every send must complete
    within `send_timeout` seconds."""

    def __init__(self, buffer: AudioBuffer, first: np.ndarray, output_format: str, send_timeout: float,
                 headers: dict[str, str]):
        super().__init__(iter(()), media_type=CONTENT_TYPES[output_format], headers=headers)
        self.buffer, self.first, self.output_format, self.send_timeout = buffer, first, output_format, send_timeout

    async def stream_response(self, send: Send) -> None:
        async def timed_send(message: Message) -> None:
            try:
                await asyncio.wait_for(send(message), self.send_timeout)
            except TimeoutError:
                raise ClientStalled from None

        try:
            await timed_send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if self.output_format == "wav":
                await timed_send(_body(streaming_wav_header(SAMPLE_RATE)))
            chunk = self.first
            while chunk is not None:
                await timed_send(_body(pcm16_bytes(chunk)))
                chunk = await self.buffer.next()
            await timed_send({"type": "http.response.body", "body": b"", "more_body": False})
        except ClientStalled:
            log.warning("a streaming client took nothing for %g s (--stream-send-timeout); closing its stream",
                        self.send_timeout)
        except Exception:  # noqa: BLE001 - the status line is sent; log and close
            log.exception("a streamed synthesis failed midway; the response ends early")
        finally:
            self.buffer.close()  # also when a disconnect cancels this task


def _body(data: bytes) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": True}


async def streamed_synthesis(ctx: ServerContext, model: str, job: SynthesisJob,
                             headers: dict[str, str] | None = None) -> StreamingResponse:
    limit, hidden = ctx.settings.max_reference_seconds, ctx.replacements()
    buffer = ctx.stream_with_model(model, lambda engine: start_stream(engine, job, limit, hidden))
    try:
        first = await buffer.next()
    except BaseException:
        buffer.close()
        raise
    if first is None:
        raise ApiError(422, "the model produced no audio for this text (try a larger max_new_tokens)")
    return AudioStreamResponse(buffer, first, job.output_format, ctx.settings.stream_send_timeout,
                               {"Cache-Control": "no-store", **(headers or {})})

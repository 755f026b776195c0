"""A streamed synthesis response: chunked transfer of a WAV (or raw PCM) whose first bytes leave as
soon as the first audio chunk is decoded.

A client that disconnects, or takes nothing for --stream-send-timeout seconds, is dropped: its buffer
is closed, which cancels the generation if it still runs. An error after the status line was sent can
only end the stream early: the connection is closed without the final chunk, so the client sees a
broken transfer, not a short but complete one.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from starlette.responses import StreamingResponse
from starlette.types import Message, Send

from core.audio import SAMPLE_RATE, pcm16_bytes, streaming_wav_header

from .audio_buffer import AudioBuffer

log = logging.getLogger("fishtts.server")
CONTENT_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg", "pcm": "audio/pcm"}


class ClientStalled(Exception):
    pass


class AudioStreamResponse(StreamingResponse):
    """The buffer's chunks as 16-bit PCM (after a WAV header for wav); every send must complete
    within `send_timeout` seconds."""

    def __init__(
        self,
        buffer: AudioBuffer,
        first: np.ndarray,
        output_format: str,
        send_timeout: float,
        headers: dict[str, str],
        sample_rate: int = SAMPLE_RATE,
    ):
        super().__init__(iter(()), media_type=CONTENT_TYPES[output_format], headers=headers)
        self.buffer, self.first, self.output_format, self.send_timeout = buffer, first, output_format, send_timeout
        self.sample_rate = sample_rate

    async def stream_response(self, send: Send) -> None:
        async def timed_send(message: Message) -> None:
            try:
                await asyncio.wait_for(send(message), self.send_timeout)
            except TimeoutError:
                raise ClientStalled from None

        try:
            await timed_send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if self.output_format == "wav":
                await timed_send(_body(streaming_wav_header(self.sample_rate)))
            chunk = self.first
            while chunk is not None:
                await timed_send(_body(pcm16_bytes(chunk)))
                chunk = await self.buffer.next()
            await timed_send({"type": "http.response.body", "body": b"", "more_body": False})
        except ClientStalled:
            log.warning(
                "a streaming client took nothing for %g s (--stream-send-timeout); closing its stream",
                self.send_timeout,
            )
        except Exception:  # noqa: BLE001 - the status line is sent; log and close
            log.exception("a streamed synthesis failed midway; the response ends early")
        finally:
            self.buffer.close()  # also when a disconnect cancels this task


def _body(data: bytes) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": True}

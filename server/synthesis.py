"""The one synthesis path of both synthesis routes (invoke and OpenAI speech): admit the request,
then answer with the whole audio or stream it.

A streamed response awaits its first chunk before it starts, so a request that fails early (a bad
reference, text the front end rejects, a full queue) still gets its JSON error. A client that
disconnects makes Starlette cancel the body iterator, which cancels the generation (the model's
slots free at its next step); the admission is released when the last worker-thread call ends.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from fastapi import Response
from starlette.responses import StreamingResponse

from core.audio import encode_output, pcm16_bytes, streaming_wav_header
from core.request import SynthesisRequest

from .context import Admission, ServerContext

log = logging.getLogger("fishtts.server")
CONTENT_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg",
                 "pcm": "audio/pcm"}


async def synthesize(ctx: ServerContext, model: str, request: SynthesisRequest,
                     headers: dict[str, str] | None = None) -> Response:
    """The audio of `request` from model `model`, whole or (request.streaming) as it is generated."""
    admission = ctx.admit(model)
    media_type = CONTENT_TYPES[request.output_format]
    if not request.streaming:
        async with admission:
            data = await admission.run(lambda engine: encode_output(engine.synthesize(request), request.output_format,
                                                                     engine.info.sample_rate))
        return Response(data, media_type=media_type, headers=headers)
    chunks = streamed_chunks(admission, request)
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        raise ValueError("the model produced no audio for this text (try a larger max_new_tokens)") from None
    except BaseException:
        await chunks.aclose()
        raise
    body = encoded_stream(first, chunks, request.output_format, admission.engine.info.sample_rate)
    return StreamingResponse(body, media_type=media_type, headers={"Cache-Control": "no-store", **(headers or {})})


async def streamed_chunks(admission: Admission, request: SynthesisRequest) -> AsyncIterator:
    async with admission:
        stream = await admission.run(lambda engine: engine.stream(request))
        async for chunk in admission.chunks(iter(stream), stream.cancel):
            yield chunk


async def encoded_stream(first, rest: AsyncIterator, output_format: str, sample_rate: int) -> AsyncIterator[bytes]:
    """wav: a header whose length fields say "unknown" (0xFFFFFFFF), then 16-bit PCM; pcm: the PCM only.
    An error after the headers went out can only end the stream early (it is logged)."""
    try:
        if output_format == "wav":
            yield streaming_wav_header(sample_rate)
        yield pcm16_bytes(first)
        async for chunk in rest:
            yield pcm16_bytes(chunk)
    except Exception:  # noqa: BLE001 - the status line is sent; log and close
        log.exception("a streamed synthesis failed midway; the response ends early")
    finally:
        await rest.aclose()

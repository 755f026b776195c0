"""The one synthesis path of both synthesis routes (invoke and OpenAI speech): admit the request,
then answer with the whole audio or stream it.

A streamed response awaits its first chunk before it starts, so a request that fails early (a bad
reference, text the front end rejects, a full queue) still gets its JSON error. Its generation runs
to its end on a worker thread, its chunks into an AudioBuffer (server/audio_buffer.py), and holds
the admission (model lease, queue place) only until then: a slow reader holds neither. A client
that goes away closes the buffer, which cancels the generation at its next step.
"""

from __future__ import annotations

import asyncio

from fastapi import Response

from core.audio import encode_output
from core.request import SynthesisRequest

from .audio_buffer import MAX_BUFFERED_SECONDS, AudioBuffer
from .context import ServerContext
from .streaming import CONTENT_TYPES, AudioStreamResponse


async def synthesize(
    ctx: ServerContext, model: str, request: SynthesisRequest, headers: dict[str, str] | None = None
) -> Response:
    """The audio of `request` from model `model`, whole or (request.streaming) as it is generated."""
    admission = ctx.admit(model)
    media_type = CONTENT_TYPES[request.output_format]
    if not request.streaming:
        async with admission:
            data = await admission.run(
                lambda engine: encode_output(engine.synthesize(request), request.output_format, engine.info.sample_rate)
            )
        return Response(data, media_type=media_type, headers=headers)
    sample_rate = admission.engine.info.sample_rate
    buffer = AudioBuffer(asyncio.get_running_loop(), int(MAX_BUFFERED_SECONDS * sample_rate))

    def generate(engine) -> None:
        stream = engine.stream(request)
        if buffer.attach(stream):
            for chunk in stream:
                if not buffer.put(chunk):  # the reader went away or fell too far behind
                    break
        stream.cancel()  # a no-op once it has ended

    async with admission:  # released when `generate` ends, not when the client has read it all
        generation = admission.start(generate)
    generation.add_done_callback(lambda done: buffer.end(None if done.cancelled() else done.exception()))
    try:
        first = await buffer.next()
    except BaseException:
        buffer.close()
        raise
    if first is None:
        raise ValueError("the model produced no audio for this text (try a larger max_new_tokens)")
    return AudioStreamResponse(
        buffer,
        first,
        request.output_format,
        ctx.settings.stream_send_timeout,
        {"Cache-Control": "no-store", **(headers or {})},
        sample_rate,
    )

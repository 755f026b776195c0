"""The one synthesis path of both synthesis routes (invoke and OpenAI speech): admit the request,
then answer with the whole audio or stream it.

A streamed response awaits its first chunk before it starts, so a request that fails early (a bad
reference, text the front end rejects, a full queue) still gets its JSON error. Its generation runs
to its end on a worker thread, its chunks into an AudioBuffer (server/audio_buffer.py), and holds
the admission (model lease, queue place) only until then: a slow reader holds neither. A client
that goes away closes the buffer, which cancels the generation at its next step.

A saved voice is named, not resolved, by the route: which codes it needs depends on the family of
the model that is admitted, so they are read (or made from the voice's clip and kept) on the
worker thread, just before the generation.
"""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
from fastapi import Response

from core.audio import encode_output
from core.engine import TTSEngine
from core.reference import prepare_reference
from core.request import Reference, SynthesisRequest

from .audio_buffer import MAX_BUFFERED_SECONDS, AudioBuffer
from .context import ServerContext
from .schemas import SamplingFields
from .streaming import CONTENT_TYPES, AudioStreamResponse


@dataclasses.dataclass(frozen=True)
class SavedVoice:
    """A saved voice the request speaks in; `field` names the request field in errors."""

    voice_id: str
    field: str = "reference_id"


def voice_codes(ctx: ServerContext, voice: SavedVoice, engine: TTSEngine) -> np.ndarray:
    """The voice's codes for the engine's family: kept ones, or its clip encoded now (then kept)."""
    family = engine.info.family
    codes = ctx.voices.codes(voice.voice_id, family)
    if codes is None:
        clip = Reference(voice.field, audio=ctx.voices.audio_path(voice.voice_id))
        codes = prepare_reference(engine, clip).codes
        ctx.voices.keep_codes(voice.voice_id, family, codes)
    return codes


async def synthesize(
    ctx: ServerContext,
    model: str,
    request: SynthesisRequest,
    headers: dict[str, str] | None = None,
    voice: SavedVoice | None = None,
    sampling: SamplingFields | None = None,
) -> Response:
    """The audio of `request` from model `model`, whole or (request.streaming) as it is generated;
    with `voice`, in that saved voice (its codes become the request's reference); with `sampling`
    (the body), its fields over the model family's defaults."""
    admission = ctx.admit(model)
    media_type = CONTENT_TYPES[request.output_format]
    sample_rate = admission.engine.info.sample_rate
    headers = {**(headers or {}), "X-Sample-Rate": str(sample_rate)}

    def prepared(engine: TTSEngine) -> SynthesisRequest:
        changes = {}
        if sampling is not None:
            changes["sampling"] = sampling.sampling_for(engine.info.family)
        if voice is not None:
            changes["reference"] = Reference(voice.field, codes=voice_codes(ctx, voice, engine))
        return dataclasses.replace(request, **changes)

    if not request.streaming:
        async with admission:
            data = await admission.run(
                lambda engine: encode_output(engine.synthesize(prepared(engine)), request.output_format, sample_rate)
            )
        return Response(data, media_type=media_type, headers=headers)
    buffer = AudioBuffer(asyncio.get_running_loop(), int(MAX_BUFFERED_SECONDS * sample_rate), sample_rate)

    def generate(engine) -> None:
        stream = engine.stream(prepared(engine))
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
        {"Cache-Control": "no-store", **headers},
        sample_rate,
    )

"""The one synthesis path of both synthesis routes (invoke and OpenAI speech): admit the request,
then answer with the whole audio or stream it.

A streamed response awaits its first chunk before it starts, so a request that fails early (a bad
reference, text the front end rejects, a full queue) still gets its JSON error. Its generation runs
to its end on a worker thread, its chunks into an AudioBuffer (server/audio_buffer.py), and holds
the admission (model lease, queue place) only until then: a slow reader holds neither. A client
that goes away, before its first audio too, closes the buffer, which cancels the generation at its
next step. A client of the whole audio that goes away cancels it too (its connection is watched while
the audio is made: `Admission.run_watched`). Work still waiting for a worker is dropped at once.

A saved voice is named, not resolved, by the route: which codes it needs depends on the family of
the model that is admitted, so they are read (or made from the voice's clip and kept) on the
worker thread, just before the generation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable

import numpy as np
from fastapi import Request, Response
from starlette.requests import ClientDisconnect

from core.audio import encode_output
from core.engine import SpeechStream, TTSEngine
from core.reference import prepare_reference
from core.request import Reference, SynthesisRequest

from .audio_buffer import MAX_BUFFERED_SECONDS, AudioBuffer
from .context import ServerContext, client_left_first
from .schemas import SamplingFields
from .streaming import CONTENT_TYPES, AudioStreamResponse


@dataclasses.dataclass(frozen=True)
class SavedVoice:
    """A saved voice the request speaks in, as the route read it (`meta`: its transcript went into the
    request); `field` names the request field in errors."""

    meta: dict
    field: str = "reference_id"


def voice_codes(
    ctx: ServerContext, voice: SavedVoice, engine: TTSEngine, stop: Callable[[], bool] | None = None
) -> np.ndarray:
    """The voice's codes for the engine's family: kept ones, or its clip encoded now (then kept; `stop()`
    true between the encode's chunks: Cancelled). Only the voice the route read: one deleted or saved
    anew under its id meanwhile is not found (its transcript is in the request; another voice's codes
    would not match it)."""
    family = engine.info.family
    with ctx.voices.pinned(voice.meta["id"], voice.meta.get("created_at")) as saved:
        codes = saved.codes(family)
        if codes is None:
            codes = prepare_reference(engine, Reference(voice.field, audio=saved.clip()), stop).codes
            saved.keep_codes(family, codes)
    return codes


class _WholeSynthesis:
    """The stream a non-streamed synthesis joins (`TTSEngine.synthesize`'s on_stream), to cancel when its
    client goes away: before the stream starts, or while it runs."""

    def __init__(self):
        self._lock = threading.Lock()
        self._stream: SpeechStream | None = None
        self._cancelled = False

    def attach(self, stream: SpeechStream) -> None:
        with self._lock:
            self._stream, cancelled = stream, self._cancelled
        if cancelled:
            stream.cancel()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled, stream = True, self._stream
        if stream is not None:
            stream.cancel()

    def cancelled(self) -> bool:
        return self._cancelled


async def synthesize(
    ctx: ServerContext,
    client: Request,
    model: str,
    request: SynthesisRequest,
    headers: dict[str, str] | None = None,
    voice: SavedVoice | None = None,
    sampling: SamplingFields | None = None,
) -> Response:
    """The audio of `request` from model `model`, whole or (request.streaming) as it is generated, for
    `client` (the HTTP request: its leaving cancels the work); with `voice`, in that saved voice (its
    codes become the request's reference); with `sampling` (the body), its fields over the model
    family's defaults."""
    admission = ctx.admit(model)
    media_type = CONTENT_TYPES[request.output_format]
    sample_rate = admission.engine.info.sample_rate
    headers = {**(headers or {}), "X-Sample-Rate": str(sample_rate)}

    def prepared(engine: TTSEngine, stop: Callable[[], bool]) -> SynthesisRequest:
        changes = {}
        if sampling is not None:
            changes["sampling"] = sampling.sampling_for(engine.info.family)
        if voice is not None:
            changes["reference"] = Reference(voice.field, codes=voice_codes(ctx, voice, engine, stop))
        return dataclasses.replace(request, **changes)

    if not request.streaming:
        whole = _WholeSynthesis()

        def synthesis(engine: TTSEngine) -> bytes:
            # (`stop`: a reference's encode, before there is a stream to cancel, stops for a client gone too)
            audio = engine.synthesize(prepared(engine, whole.cancelled), on_stream=whole.attach, stop=whole.cancelled)
            return encode_output(audio, request.output_format, sample_rate)

        async with admission:
            data = await admission.run_watched(client, synthesis, whole.cancel)
        return Response(data, media_type=media_type, headers=headers)
    buffer = AudioBuffer(asyncio.get_running_loop(), int(MAX_BUFFERED_SECONDS * sample_rate), sample_rate)

    def generate(engine) -> None:
        stream = engine.stream(prepared(engine, buffer.closed), stop=buffer.closed)
        if buffer.attach(stream):
            for chunk in stream:
                if not buffer.put(chunk):  # the reader went away or fell too far behind
                    break
        stream.cancel()  # a no-op once it has ended

    async with admission:  # released when `generate` ends, not when the client has read it all
        generation = admission.start(generate)
    generation.add_done_callback(lambda done: buffer.end(None if done.cancelled() else done.exception()))
    try:
        first_chunk = asyncio.ensure_future(buffer.next())
        if await client_left_first(client, first_chunk):  # before its first audio: no response to start
            generation.cancel()  # (not started yet, waiting for a worker: its place is free at once)
            first_chunk.cancel()
            buffer.close()  # else the generation stops at its next step
            raise ClientDisconnect()
        first = first_chunk.result()
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

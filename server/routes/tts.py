"""POST /v1/tts: the original fish-speech server's synthesis route and payload (`ServeTTSRequest`),
so its clients (the official `api_client.py`, ormsgpack or JSON) work unchanged, for a model of
either family. It goes through the same synthesis path as invoke (admission, limits, batching).

Mapping: `references` (at most one {audio, text}) is the reference clip, `reference_id` a saved
voice (it wins over `references`, as in the original); the sampling fields and `seed` as on invoke
(left out: the model family's defaults, for S1-mini the original's). A stream is raw 16-bit PCM
at the model's rate for `wav` and `pcm` alike, as the original sends it (its WAV header never
reached the client). `chunk_length`, `normalize`, `use_memory_cache` and the original's later
additions (`latency`, ...) are accepted and not used.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from core.request import OUTPUT_FORMATS, STREAM_FORMATS, Reference, SynthesisRequest

from ..bodies import decode_base64, openapi_msgpack_body, read_body
from ..context import ServerContext, get_ctx
from ..schemas import TTSRequest
from ..streaming import CONTENT_TYPES
from ..synthesis import SavedVoice, synthesize
from . import ERROR_RESPONSES

router = APIRouter(tags=["synthesis"], responses=ERROR_RESPONSES)


@router.post(
    "/v1/tts",
    response_class=Response,
    openapi_extra=openapi_msgpack_body(TTSRequest),
    responses={200: {"description": "The audio", "content": {CONTENT_TYPES[f]: {} for f in OUTPUT_FORMATS}}},
)
async def tts(request: Request, ctx: Annotated[ServerContext, Depends(get_ctx)]) -> Response:
    """Synthesize `text` with model `model` ('default' unless given), in the voice of `reference_id`
    (a saved voice) or of `references[0]` (inline clip + transcript; bytes in msgpack, base64 in
    JSON). `streaming: true` sends raw PCM as it is generated. Unknown model or voice: 404; bad
    payload: 400 (malformed) or 422; full queue: 503 + Retry-After."""
    body, _ = await read_body(request, TTSRequest, ctx.settings.max_text_length)
    ctx.check_model(body.model)
    if body.streaming and body.format not in STREAM_FORMATS:
        raise ValueError(f"format: streaming sends raw PCM; ask for wav or pcm, not {body.format!r}.")
    reference, transcript, voice = None, None, None
    if body.reference_id is not None:
        meta = await run_in_threadpool(ctx.voices.get, body.reference_id)  # 404 before any model work
        voice, transcript = SavedVoice(meta), meta["transcript"]
    elif body.references:
        clip = body.references[0]
        if len(clip.text) > ctx.settings.max_text_length:
            raise ValueError(f"references.0.text: longer than {ctx.settings.max_text_length} characters.")
        audio = clip.audio if isinstance(clip.audio, bytes) else decode_base64(clip.audio, "references.0.audio")
        reference, transcript = Reference("references.0.audio", audio=audio, **ctx.clip_limits()), clip.text
    synthesis = SynthesisRequest(
        text=body.text,
        transcript=transcript,
        reference=reference,
        sampling=body.sampling,
        max_frames=body.max_new_tokens,
        seed=body.seed,
        output_format="pcm" if body.streaming else body.format,
        streaming=body.streaming,
    )
    headers = {"Content-Disposition": f"attachment; filename=audio.{synthesis.output_format}"}  # (streamed: pcm)
    return await synthesize(ctx, request, body.model, synthesis, headers, voice, body)

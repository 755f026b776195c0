"""POST /v1/audio/speech: OpenAI's text-to-speech route, so OpenAI SDK clients work with `base_url`.

`voice` is a saved voice id; OpenAI's own model names map to the bundle 'default'. Errors on this
route use OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`), validation errors 400.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from core.request import STREAM_FORMATS, SynthesisRequest

from ..context import ServerContext, get_ctx, text_limited
from ..errors import ApiError
from ..schemas import SpeechRequest
from ..streaming import CONTENT_TYPES
from ..synthesis import SavedVoice, synthesize
from . import OPENAI_ERROR_RESPONSES

OPENAI_MODELS = {"tts-1", "tts-1-hd", "gpt-4o-mini-tts"}
DEFAULT_BUNDLE = "default"
SUPPORTED = ("mp3", "wav", "flac", "pcm")
router = APIRouter(tags=["openai"], responses=OPENAI_ERROR_RESPONSES)


@router.post(
    "/v1/audio/speech",
    response_class=Response,
    responses={200: {"description": "The audio", "content": {CONTENT_TYPES[f]: {} for f in SUPPORTED}}},
)
async def speech(
    request: Request, body: text_limited(SpeechRequest), ctx: Annotated[ServerContext, Depends(get_ctx)]
) -> Response:
    """Synthesize `input` in saved voice `voice`. `speed` is validated but not applied; sampling
    fields (max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed) may be added.
    `stream_format: "audio"` (or `stream: true`) streams pcm or wav as it is generated."""
    streaming = body.stream or body.stream_format == "audio"
    if body.response_format not in SUPPORTED:
        raise ApiError(
            400,
            f"response_format {body.response_format!r} is not supported; use one of {', '.join(SUPPORTED)}.",
            param="response_format",
            code="unsupported_value",
        )
    if streaming and body.response_format not in STREAM_FORMATS:
        raise ApiError(
            400,
            f"response_format {body.response_format!r} cannot be streamed; use pcm or wav.",
            param="response_format",
            code="unsupported_value",
        )
    if body.stream_format == "sse":
        raise ApiError(
            400, "stream_format 'sse' is not supported; use 'audio'.", param="stream_format", code="unsupported_value"
        )
    names = ctx.registry.names() + ctx.registry.loading()
    model = body.model if body.model in names else DEFAULT_BUNDLE if body.model in OPENAI_MODELS else None
    if model is None:
        raise ApiError(404, f"The model {body.model!r} does not exist.", param="model", code="model_not_found")
    meta = await run_in_threadpool(ctx.voices.get, body.voice)
    synthesis = SynthesisRequest(
        text=body.input,
        transcript=meta["transcript"],
        sampling=body.sampling,
        max_frames=body.max_new_tokens,
        seed=body.seed,
        output_format=body.response_format,
        streaming=streaming,
    )
    return await synthesize(ctx, request, model, synthesis, voice=SavedVoice(meta, "voice"), sampling=body)

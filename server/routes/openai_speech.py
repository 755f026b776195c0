"""POST /v1/audio/speech: OpenAI's text-to-speech route, so OpenAI SDK clients work with `base_url`.

`voice` is a saved voice id; OpenAI's own model names map to the bundle 'default'. Errors on this
route use OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`), validation errors 400.
"""

# No `from __future__ import annotations`: FastAPI must see the per-app body class, not its name.
from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from ..context import ServerContext
from ..errors import ApiError
from ..streaming import streamed_synthesis
from ..synthesis import CONTENT_TYPES, STREAM_FORMATS, Reference, SynthesisJob, run_synthesis, sampling_params
from ..voices import VoiceNotFound
from . import OPENAI_ERROR_RESPONSES

OPENAI_MODELS = {"tts-1", "tts-1-hd", "gpt-4o-mini-tts"}
DEFAULT_BUNDLE = "default"
SUPPORTED = ("mp3", "wav", "flac", "pcm")


def build_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter(tags=["openai"], responses=OPENAI_ERROR_RESPONSES)
    SpeechRequest = ctx.schemas.SpeechRequest

    @router.post("/v1/audio/speech", response_class=Response,
                 responses={200: {"description": "The audio", "content": {CONTENT_TYPES[f]: {} for f in SUPPORTED}}})
    async def speech(body: SpeechRequest) -> Response:  # type: ignore[valid-type]
        """Synthesize `input` in saved voice `voice`. `speed` is validated but not applied; sampling
        fields (max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed) may be added.
        `stream_format: "audio"` (or `stream: true`) streams pcm or wav as it is generated."""
        if body.response_format not in SUPPORTED:
            raise ApiError(400, f"response_format {body.response_format!r} is not supported; use one of "
                                f"{', '.join(SUPPORTED)}.", param="response_format", code="unsupported_value")
        if body.stream_format == "sse":
            raise ApiError(400, "stream_format 'sse' is not supported; use 'audio'.", param="stream_format",
                           code="unsupported_value")
        names = ctx.registry.names() + ctx.registry.loading()
        model = body.model if body.model in names else DEFAULT_BUNDLE if body.model in OPENAI_MODELS else None
        if model is None:
            raise ApiError(404, f"The model {body.model!r} does not exist.", param="model", code="model_not_found")
        try:
            meta = await run_in_threadpool(ctx.voices.get, body.voice)
            codes = await run_in_threadpool(ctx.voices.codes, body.voice)
        except VoiceNotFound:
            raise ApiError(400, f"Voice {body.voice!r} does not exist; create it with POST /v1/references.",
                           param="voice", code="voice_not_found") from None
        job = SynthesisJob(
            text=body.input, prompt_text=meta["transcript"], reference=Reference(field="voice", codes=codes),
            max_new_tokens=body.max_new_tokens, sampling=sampling_params(body), seed=body.seed,
            output_format=body.response_format,
        )
        if body.stream or body.stream_format == "audio":
            if body.response_format not in STREAM_FORMATS:
                raise ApiError(400, f"response_format {body.response_format!r} cannot be streamed; use pcm or wav.",
                               param="response_format", code="unsupported_value")
            return await streamed_synthesis(ctx, model, job)
        limit, hidden = ctx.settings.max_reference_seconds, ctx.replacements()
        audio = await ctx.run_with_model(model, lambda engine: run_synthesis(engine, job, limit, hidden))
        return Response(audio, media_type=CONTENT_TYPES[body.response_format])

    return router

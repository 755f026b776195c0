"""POST /v1/models/{name}/invoke: the original's synthesis route, plus uploads and saved voices."""

from __future__ import annotations

from fastapi import APIRouter, Path, Request, Response
from starlette.concurrency import run_in_threadpool

from ..bodies import decode_base64, openapi_body, read_body
from ..context import ServerContext
from ..errors import ApiError
from ..schemas import AUDIO_FORMATS, MODEL_NAME_PATTERN
from ..streaming import check_stream_format, streamed_synthesis
from ..synthesis import CONTENT_TYPES, Reference, SynthesisJob, run_synthesis, sampling_params
from ..voices import VoiceNotFound
from . import ERROR_RESPONSES

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
FILE_FIELDS = ("reference_audio",)


async def saved_voice(ctx: ServerContext, voice_id: str, field: str) -> tuple[dict, Reference]:
    try:
        meta = await run_in_threadpool(ctx.voices.get, voice_id)
        codes = await run_in_threadpool(ctx.voices.codes, voice_id)
    except VoiceNotFound:
        raise ApiError(404, f"Cannot find voice {voice_id!r}.", param=field, code="voice_not_found") from None
    return meta, Reference(field=field, codes=codes)


def prompt_tokens_reference(ctx: ServerContext, user_path: str) -> Reference:
    """The original's server-side path field, confined to the references folder."""
    suffix = "." + user_path.rsplit(".", 1)[-1].lower() if "." in user_path else ""
    if suffix != ".npy" and suffix not in AUDIO_SUFFIXES:
        raise ApiError(400, "Unknown prompt tokens, it should be either .npy or an audio file "
                            "(.wav, .flac, .ogg, .mp3).", param="prompt_tokens")
    path = ctx.references.resolve(user_path, field="prompt_tokens")
    if not path.is_file():
        raise ApiError(400, f"prompt_tokens: {user_path!r} is not a file.", param="prompt_tokens")
    if suffix == ".npy":
        return Reference(field="prompt_tokens", codes_path=path)
    return Reference(field="prompt_tokens", audio_path=path)


def build_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter(tags=["synthesis"], responses=ERROR_RESPONSES)
    schemas = ctx.schemas

    @router.post(
        "/v1/models/{name}/invoke", response_class=Response,
        responses={200: {"description": "The audio", "content": {CONTENT_TYPES[f]: {} for f in AUDIO_FORMATS}}},
        openapi_extra=openapi_body(schemas.InvokeRequest.__name__, FILE_FIELDS),
    )
    async def invoke(request: Request, name: str = Path(..., pattern=MODEL_NAME_PATTERN)) -> Response:
        """Synthesize `text`, optionally in the voice of one reference: `reference_audio` (base64 in JSON,
        or a file part in multipart/form-data; needs `reference_text`), `reference_id` (a saved voice),
        or the original's `prompt_tokens` path (inside the references folder). `streaming: true` sends the
        audio as it is generated. Unknown model: 404; full queue: 503 + Retry-After; reference over
        --max-reference-seconds: 422."""
        body, files = await read_body(request, schemas.InvokeRequest, FILE_FIELDS)
        ctx.check_model(name)  # the original answers an unknown model before looking at the reference
        transcript = body.transcript
        reference = None
        if "reference_audio" in files or body.reference_audio is not None:
            data = files.get("reference_audio")
            if data is None:
                data = decode_base64(body.reference_audio, "reference_audio")
            reference = Reference(field="reference_audio", audio_bytes=data)
            if transcript is None:
                raise ApiError(422, "reference_audio needs its transcript in reference_text (or prompt_text).",
                               param="reference_text")
        elif body.reference_id is not None:
            meta, reference = await saved_voice(ctx, body.reference_id, "reference_id")
            transcript = meta["transcript"] if transcript is None else transcript
        elif body.prompt_tokens is not None:
            reference = await run_in_threadpool(prompt_tokens_reference, ctx, body.prompt_tokens)
        job = SynthesisJob(
            text=body.text, prompt_text=transcript, reference=reference, max_new_tokens=body.max_new_tokens,
            sampling=sampling_params(body), use_g2p=body.use_g2p, speaker=body.speaker, order=body.order,
            seed=body.seed, output_format=body.format,
        )
        if body.streaming:
            check_stream_format(body.format, "format")
            disposition = {"Content-Disposition": f"attachment; filename=audio.{body.format}"}
            return await streamed_synthesis(ctx, name, job, disposition)
        limit, hidden = ctx.settings.max_reference_seconds, ctx.replacements()
        audio = await ctx.run_with_model(name, lambda engine: run_synthesis(engine, job, limit, hidden))
        return Response(audio, media_type=CONTENT_TYPES[body.format],
                        headers={"Content-Disposition": f"attachment; filename=audio.{body.format}"})

    return router

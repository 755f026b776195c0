"""POST /v1/models/{name}/invoke: the original's synthesis route, plus uploads and saved voices."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from starlette.concurrency import run_in_threadpool

from core.request import OUTPUT_FORMATS, Reference, SynthesisRequest

from ..bodies import decode_base64, openapi_body, read_body
from ..context import ServerContext, get_ctx
from ..errors import ApiError
from ..schemas import MODEL_NAME_PATTERN, InvokeRequest
from ..streaming import CONTENT_TYPES
from ..synthesis import SavedVoice, synthesize
from . import ERROR_RESPONSES

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
router = APIRouter(tags=["synthesis"], responses=ERROR_RESPONSES)


@router.post(
    "/v1/models/{name}/invoke",
    response_class=Response,
    openapi_extra=openapi_body(InvokeRequest),
    responses={200: {"description": "The audio", "content": {CONTENT_TYPES[f]: {} for f in OUTPUT_FORMATS}}},
)
async def invoke(
    request: Request, ctx: Annotated[ServerContext, Depends(get_ctx)], name: str = Path(..., pattern=MODEL_NAME_PATTERN)
) -> Response:
    """Synthesize `text`, optionally in the voice of one reference: `reference_audio` (base64 in JSON,
    or a file part in multipart/form-data; needs `reference_text`), `reference_id` (a saved voice),
    or the original's `prompt_tokens` path (inside the references folder). `streaming: true` sends the
    audio as it is generated. For an S1-mini model, `use_g2p`, `order` and `speaker` do not apply
    (ignored); its audio is 44.1 kHz (`X-Sample-Rate`). Unknown model: 404; full queue: 503 +
    Retry-After; reference over --max-reference-seconds: 422."""
    body, files = await read_body(request, InvokeRequest, ctx.settings.max_text_length)
    ctx.check_model(name)  # the original answers an unknown model before looking at the reference
    reference, transcript, voice = await reference_of(ctx, body, files)
    synthesis = SynthesisRequest(
        text=body.text,
        transcript=transcript,
        reference=reference,
        sampling=body.sampling,
        max_frames=body.max_new_tokens,
        seed=body.seed,
        order=body.order,
        use_g2p=body.use_g2p,
        speaker=body.speaker,
        output_format=body.format,
        streaming=body.streaming,
    )
    headers = {"Content-Disposition": f"attachment; filename=audio.{body.format}"}
    return await synthesize(ctx, request, name, synthesis, headers, voice, body)


async def reference_of(
    ctx: ServerContext, body: InvokeRequest, files: dict[str, bytes]
) -> tuple[Reference | None, str | None, SavedVoice | None]:
    """The reference the body names (an upload or a path; None for a saved voice, whose codes depend on
    the model: `synthesize` reads them), its transcript, and the saved voice."""
    limits = ctx.clip_limits()
    if "reference_audio" in files or body.reference_audio is not None:
        data = (
            files["reference_audio"]
            if "reference_audio" in files
            else decode_base64(body.reference_audio, "reference_audio")
        )
        if body.transcript is None:
            raise ValueError("reference_text: reference_audio needs its transcript in reference_text (or prompt_text).")
        return Reference("reference_audio", audio=data, **limits), body.transcript, None
    if body.reference_id is not None:
        meta = await run_in_threadpool(ctx.voices.get, body.reference_id)  # 404 before any model work
        return None, meta["transcript"] if body.transcript is None else body.transcript, SavedVoice(meta)
    if body.prompt_tokens is not None:
        reference = await run_in_threadpool(prompt_tokens_reference, ctx, body.prompt_tokens, limits)
        return reference, body.transcript, None
    return None, body.transcript, None


def prompt_tokens_reference(ctx: ServerContext, user_path: str, limits: dict) -> Reference:
    """The original's server-side path field, confined to the references folder."""
    field = "prompt_tokens"
    suffix = "." + user_path.rsplit(".", 1)[-1].lower() if "." in user_path else ""
    if suffix != ".npy" and suffix not in AUDIO_SUFFIXES:
        raise ApiError(
            400,
            "Unknown prompt tokens, it should be either .npy or an audio file (.wav, .flac, .ogg, .mp3).",
            param=field,
        )
    path = ctx.references.resolve(user_path, field=field)
    if not path.is_file():
        raise ApiError(400, f"prompt_tokens: {user_path!r} is not a file.", param=field)
    if suffix == ".npy":
        return Reference(field, codes=path, **limits)
    return Reference(field, audio=path, **limits)

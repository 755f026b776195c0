"""Saved voices (`/v1/references`): a clip is encoded once and its codes kept for later requests."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response
from starlette.concurrency import run_in_threadpool

from core.reference import prepare_reference
from core.request import Reference

from ..bodies import decode_base64, openapi_body, read_body
from ..context import ServerContext, get_ctx
from ..errors import ApiError
from ..schemas import ErrorBody, Message, Voice, VoiceCreate, VoiceList
from ..voices import VOICE_ID_PATTERN, VoiceExists
from . import ERROR_RESPONSES

VoiceId = Path(..., pattern=VOICE_ID_PATTERN)
Ctx = Annotated[ServerContext, Depends(get_ctx)]
router = APIRouter(prefix="/v1/references", tags=["voices"], responses=ERROR_RESPONSES)


def id_taken(voice_id: str) -> ApiError:
    return ApiError(409, f"A voice with id {voice_id!r} exists; delete it first or choose another id.")


@router.post("", status_code=201, response_model=Voice, openapi_extra=openapi_body(VoiceCreate))
async def create_voice(request: Request, ctx: Ctx) -> dict:
    """Save a voice: `name`, `transcript` and `audio` (base64 in JSON, or a file part in
    multipart/form-data). The clip (0.5 s to --max-reference-seconds) is encoded with `model`'s
    codec; codes, clip (at the upload's rate) and metadata (with the model's family) are written
    atomically. A model of another family using the voice encodes the clip again, once. An `id`
    that exists: 409."""
    body, files = await read_body(request, VoiceCreate, ctx.settings.max_text_length)
    data = files.get("audio")
    if data is None:
        if body.audio is None:
            raise ValueError("audio: required (base64 in JSON, or a file part named 'audio').")
        data = decode_base64(body.audio, "audio")
    return await save_voice(ctx, body.name, body.transcript, data, body.model, body.id)


async def save_voice(ctx: ServerContext, name: str, transcript: str, audio: bytes, model: str, voice_id: str | None):
    """Encode the clip with `model`'s codec and store the voice (409 when `voice_id` is taken)."""
    if voice_id is not None and (ctx.voices.folder / voice_id).exists():
        raise id_taken(voice_id)
    ctx.check_model(model)
    reference = Reference("audio", audio=audio, **ctx.clip_limits())

    def encode_and_store(engine) -> dict:
        prepared = prepare_reference(engine, reference)
        try:
            return ctx.voices.create(
                name=name,
                transcript=transcript,
                codes=prepared.codes,
                audio=prepared.clip,
                sample_rate=prepared.clip_rate,
                model=model,
                family=engine.info.family,
                voice_id=voice_id,
            )
        except VoiceExists:
            raise id_taken(voice_id) from None

    async with ctx.admit(model) as admission:
        return await admission.run(encode_and_store)


@router.get("", response_model=VoiceList)
async def list_voices(ctx: Ctx) -> dict:
    return {"references": await run_in_threadpool(ctx.voices.list)}


@router.get("/{voice_id}", response_model=Voice)
async def get_voice(ctx: Ctx, voice_id: str = VoiceId) -> dict:
    return await run_in_threadpool(ctx.voices.get, voice_id)


@router.get(
    "/{voice_id}/audio",
    response_class=Response,
    responses={
        200: {
            "content": {"audio/wav": {}},
            "description": "The saved clip (mono WAV at the upload's rate, at most 48 kHz).",
        },
        206: {"content": {"audio/wav": {}}, "description": "The byte range asked for (`Range: bytes=...`)."},
        416: {"model": ErrorBody},
    },
)
async def get_voice_audio(request: Request, ctx: Ctx, voice_id: str = VoiceId) -> Response:
    # read whole under the voice's pin (a few MB at most): a file served by path later could be deleted
    # or replaced between its stat and its reading, a 500 or a clip cut short
    clip = await run_in_threadpool(ctx.voices.clip, voice_id)
    headers = {"Accept-Ranges": "bytes", "Content-Disposition": f'attachment; filename="{voice_id}.wav"'}
    span = byte_range(request.headers, len(clip))
    if span is None:
        return Response(clip, media_type="audio/wav", headers=headers)
    start, stop = span
    headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(clip)}"
    return Response(clip[start:stop], status_code=206, media_type="audio/wav", headers=headers)


def byte_range(headers, size: int) -> tuple[int, int] | None:
    """The one range `Range: bytes=first-last` asks for, as (start, stop); None for the whole file: no
    Range, or one served whole as HTTP allows (several ranges, another unit, an If-Range, last < first).
    A range that starts past the end: 416."""
    # (more digits than any file's size: no range to serve, and no int() of thousands of digits)
    match = re.fullmatch(r"bytes=(\d{0,18})-(\d{0,18})", headers.get("range", "").strip())
    if not match or match.groups() == ("", "") or "if-range" in headers:
        return None
    first, last = match.groups()
    if not first:  # the last `last` bytes
        start, stop = max(size - int(last), 0), size
    elif last and int(last) < int(first):
        return None
    else:
        start, stop = int(first), min(int(last) + 1, size) if last else size
    if start >= stop:
        raise ApiError(416, f"Range: the clip has {size} bytes.", headers={"Content-Range": f"bytes */{size}"})
    return start, stop


# (players and download managers ask HEAD first; one operation in the API docs)
router.add_api_route("/{voice_id}/audio", get_voice_audio, methods=["HEAD"], include_in_schema=False)


@router.delete("/{voice_id}", response_model=Message)
async def delete_voice(ctx: Ctx, voice_id: str = VoiceId) -> dict:
    await run_in_threadpool(ctx.voices.delete, voice_id)
    return {"message": "Reference deleted."}

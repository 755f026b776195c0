"""Saved voices (`/v1/references`): a clip is encoded once and its codes kept for later requests."""

from __future__ import annotations

from fastapi import APIRouter, Path, Request
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from ..bodies import decode_base64, openapi_body, read_body
from ..context import ServerContext
from ..errors import ApiError
from ..schemas import VOICE_ID_PATTERN, Message, Voice, VoiceList
from ..synthesis import read_reference_audio
from ..voices import VoiceExists, VoiceNotFound
from . import ERROR_RESPONSES

VoiceId = Path(..., pattern=VOICE_ID_PATTERN)
FILE_FIELDS = ("audio",)


def build_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter(prefix="/v1/references", tags=["voices"], responses=ERROR_RESPONSES)
    schemas = ctx.schemas

    def not_found(voice_id: str) -> ApiError:
        return ApiError(404, f"Cannot find voice {voice_id!r}.", code="voice_not_found")

    def id_taken(voice_id: str) -> ApiError:
        return ApiError(409, f"A voice with id {voice_id!r} exists; delete it first or choose another id.")

    @router.post("", status_code=201, response_model=Voice,
                 openapi_extra=openapi_body(schemas.VoiceCreate.__name__, FILE_FIELDS, FILE_FIELDS))
    async def create_voice(request: Request) -> dict:
        """Save a voice: `name`, `transcript` and `audio` (base64 in JSON, or a file part in
        multipart/form-data). The clip (0.5 s to --max-reference-seconds) is encoded with `model`'s
        VQGAN; codes, clip and metadata are written atomically. An `id` that exists: 409."""
        body, files = await read_body(request, schemas.VoiceCreate, FILE_FIELDS)
        data = files.get("audio")
        if data is None:
            if body.audio is None:
                raise ApiError(422, "audio: required (base64 in JSON, or a file part named 'audio').", param="audio")
            data = decode_base64(body.audio, "audio")
        if body.id is not None and (ctx.voices.folder / body.id).exists():
            raise id_taken(body.id)
        ctx.check_model(body.model)
        limit = ctx.settings.max_reference_seconds

        def encode_and_store(engine) -> dict:
            audio = read_reference_audio(data, limit, "audio")
            codes = engine.encode_reference(audio)
            try:
                return ctx.voices.create(name=body.name, transcript=body.transcript, codes=codes, audio=audio,
                                         model=body.model, voice_id=body.id)
            except VoiceExists:
                raise id_taken(body.id) from None

        return await ctx.run_with_model(body.model, encode_and_store)

    @router.get("", response_model=VoiceList)
    async def list_voices() -> dict:
        return {"references": await run_in_threadpool(ctx.voices.list)}

    @router.get("/{voice_id}", response_model=Voice)
    async def get_voice(voice_id: str = VoiceId) -> dict:
        try:
            return await run_in_threadpool(ctx.voices.get, voice_id)
        except VoiceNotFound:
            raise not_found(voice_id) from None

    @router.get("/{voice_id}/audio", response_class=FileResponse,
                responses={200: {"content": {"audio/wav": {}}, "description": "The saved clip (22050 Hz mono WAV)."}})
    async def get_voice_audio(voice_id: str = VoiceId) -> FileResponse:
        try:
            path = await run_in_threadpool(ctx.voices.audio_path, voice_id)
        except VoiceNotFound:
            raise not_found(voice_id) from None
        return FileResponse(path, media_type="audio/wav", filename=f"{voice_id}.wav")

    @router.delete("/{voice_id}", response_model=Message)
    async def delete_voice(voice_id: str = VoiceId) -> dict:
        try:
            await run_in_threadpool(ctx.voices.delete, voice_id)
        except VoiceNotFound:
            raise not_found(voice_id) from None
        return {"message": "Reference deleted."}

    return router

"""The original S1 server's reference routes over our saved voices, so its clients work unchanged:
`POST /v1/references/add`, `GET /v1/references/list`, `DELETE /v1/references/delete`,
`POST /v1/references/update`. A reference is a saved voice (`id` → its id, `text` → its transcript),
usable by `reference_id` on every synthesis route. Answers are msgpack, or JSON with `?format=json`
or an `Accept` that names JSON and not msgpack (as the original); errors are this server's JSON.
"""

from __future__ import annotations

from typing import Annotated

import msgpack
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..bodies import MSGPACK_TYPES, decode_base64, openapi_body, openapi_msgpack_body, read_body
from ..context import ServerContext, get_ctx
from ..schemas import ReferenceAdd, ReferenceDelete, ReferenceUpdate
from ..voices import VoiceExists, check_new_id
from . import ERROR_RESPONSES
from .voices import id_taken, save_voice

router = APIRouter(prefix="/v1/references", tags=["voices"], responses=ERROR_RESPONSES)
Ctx = Annotated[ServerContext, Depends(get_ctx)]
ANSWER = {200: {"content": {MSGPACK_TYPES[0]: {}, "application/json": {}}, "description": "msgpack, or JSON"}}


def answer(request: Request, data: dict) -> Response:
    accept = request.headers.get("accept", "")
    if request.query_params.get("format") == "json" or ("json" in accept and "msgpack" not in accept):
        return JSONResponse(data)
    return Response(msgpack.packb(data), media_type=MSGPACK_TYPES[0])


@router.post("/add", response_class=Response, openapi_extra=openapi_body(ReferenceAdd), responses=ANSWER)
async def add_reference(request: Request, ctx: Ctx) -> Response:
    """Save the clip `audio` saying `text` as voice `id`, encoded with `model`'s codec. Taken id: 409."""
    body, files = await read_body(request, ReferenceAdd, ctx.settings.max_text_length)
    audio = files.get("audio", body.audio)
    if audio is None:
        raise ValueError("audio: required (a file part, bytes in msgpack or base64 in JSON).")
    if isinstance(audio, str):
        audio = decode_base64(audio, "audio")
    await save_voice(ctx, body.id, body.text, audio, body.model, body.id)
    return answer(request, {"success": True, "message": "Reference added successfully", "reference_id": body.id})


@router.get("/list", response_class=Response, responses=ANSWER)
async def list_references(request: Request, ctx: Ctx) -> Response:
    """The saved voices' ids, sorted."""
    voices = await run_in_threadpool(ctx.voices.list)
    ids = sorted(voice["id"] for voice in voices)
    return answer(request, {"success": True, "reference_ids": ids, "message": "Success"})


@router.delete(
    "/delete", response_class=Response, openapi_extra=openapi_msgpack_body(ReferenceDelete), responses=ANSWER
)
async def delete_reference(request: Request, ctx: Ctx) -> Response:
    """Delete voice `reference_id`; unknown: 404."""
    body, _ = await read_body(request, ReferenceDelete, ctx.settings.max_text_length)
    await run_in_threadpool(ctx.voices.delete, body.reference_id)
    message = "Reference deleted successfully"
    return answer(request, {"success": True, "message": message, "reference_id": body.reference_id})


@router.post("/update", response_class=Response, openapi_extra=openapi_msgpack_body(ReferenceUpdate), responses=ANSWER)
async def update_reference(request: Request, ctx: Ctx) -> Response:
    """Rename voice `old_reference_id` to `new_reference_id` (its codes and clip kept); unknown: 404,
    new id taken: 409."""
    body, _ = await read_body(request, ReferenceUpdate, ctx.settings.max_text_length)
    old, new = body.old_reference_id, body.new_reference_id
    check_new_id(new, "new_reference_id")  # (the store would refuse it too, naming the field `id`)
    try:
        await run_in_threadpool(ctx.voices.rename, old, new)
    except VoiceExists:
        raise id_taken(new) from None
    message = "Reference updated successfully"
    return answer(request, {"success": True, "message": message, "old_reference_id": old, "new_reference_id": new})

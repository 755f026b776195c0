"""POST /v1/vqgan/encode and /v1/vqgan/decode: the original S1 server's codec routes and payloads, for
a model of either family (`model`, an addition; 'default' unless given). Bodies come as msgpack or
JSON; answers are always msgpack, as the original's: `{"tokens": [[[int]]]}` (each [codebooks, T])
and `{"audios": [bytes]}` (each float16 little-endian mono PCM at the model's rate, the
X-Sample-Rate header). They take a place in the model's queue like a synthesis, and a client that leaves
stops its work after the chunk in progress (the engine decodes codes chunk by chunk, and encodes S1's clips so;
v0.2's encoder takes a clip whole).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Annotated

import msgpack
import numpy as np
from fastapi import APIRouter, Depends, Request, Response

from core.engine import Cancelled
from core.reference import prepare_reference
from core.request import Reference

from ..bodies import MSGPACK_TYPES, decode_base64, openapi_msgpack_body, read_body
from ..context import ServerContext, get_ctx
from ..schemas import CodecDecodeRequest, CodecEncodeRequest
from . import ERROR_RESPONSES

router = APIRouter(prefix="/v1/vqgan", tags=["codec"], responses=ERROR_RESPONSES)
Ctx = Annotated[ServerContext, Depends(get_ctx)]
MSGPACK_ANSWER = {200: {"content": {MSGPACK_TYPES[0]: {}}, "description": "A msgpack map"}}


def _until(stop: threading.Event, items: list) -> Iterator:
    """The items, one by one, until `stop` is set (then Cancelled: the rest are not worth the model's time)."""
    for item in items:
        if stop.is_set():
            raise Cancelled()
        yield item


def _msgpack(data: dict, sample_rate: int) -> Response:
    return Response(msgpack.packb(data), media_type=MSGPACK_TYPES[0], headers={"X-Sample-Rate": str(sample_rate)})


@router.post(
    "/encode", response_class=Response, openapi_extra=openapi_msgpack_body(CodecEncodeRequest), responses=MSGPACK_ANSWER
)
async def encode(request: Request, ctx: Ctx) -> Response:
    """Each clip's codes, `{"tokens": [codes, ...]}`. A clip that is not audio, shorter than 0.5 s or
    longer than --max-reference-seconds: 422 naming it (`audios.N`); unknown model: 404."""
    body, _ = await read_body(request, CodecEncodeRequest, ctx.settings.max_text_length)
    ctx.check_model(body.model)
    limits = ctx.clip_limits(voice=False)  # (silence is a clip the codec encodes like any other)
    clips = [
        Reference(
            f"audios.{i}", audio=audio if isinstance(audio, bytes) else decode_base64(audio, f"audios.{i}"), **limits
        )
        for i, audio in enumerate(body.audios)
    ]

    stop = threading.Event()  # the client left: no more items

    def encode_all(engine) -> list:
        return [prepare_reference(engine, clip, stop.is_set).codes.tolist() for clip in _until(stop, clips)]

    async with ctx.admit(body.model) as admission:
        tokens = await admission.run_watched(request, encode_all, stop.set)
        return _msgpack({"tokens": tokens}, admission.engine.info.sample_rate)


@router.post(
    "/decode", response_class=Response, openapi_extra=openapi_msgpack_body(CodecDecodeRequest), responses=MSGPACK_ANSWER
)
async def decode(request: Request, ctx: Ctx) -> Response:
    """Each code array's audio, `{"audios": [float16 PCM bytes, ...]}`. Codes of the wrong shape or out of
    the codec's range, or longer than the model's context: 422 naming the array (`tokens.N`)."""
    body, _ = await read_body(request, CodecDecodeRequest, ctx.settings.max_text_length)
    ctx.check_model(body.model)

    stop = threading.Event()  # the client left: no more items

    def decode_all(engine) -> list[bytes]:
        audios = []
        for i, tokens in enumerate(_until(stop, body.tokens)):
            field = f"tokens.{i}"
            try:
                codes = np.asarray(tokens, dtype=np.int64)
            except (ValueError, OverflowError):
                raise ValueError(f"{field}: codes must be a rectangular integer array [codebooks, T].") from None
            context = engine.info.context
            if codes.ndim == 2 and context is not None and codes.shape[1] > context:
                raise ValueError(f"{field}: {codes.shape[1]} frames exceed the model's context of {context}.")
            codes = prepare_reference(engine, Reference(field, codes=codes)).codes
            audios.append(engine.decode_codes(codes, stop.is_set).astype("<f2").tobytes())
        return audios

    async with ctx.admit(body.model) as admission:
        audios = await admission.run_watched(request, decode_all, stop.set)
        return _msgpack({"audios": audios}, admission.engine.info.sample_rate)

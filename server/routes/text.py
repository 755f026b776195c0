"""POST /v1/text/g2p: the phoneme preview the web UI shows (per non-blank line, like the original UI)."""

# No `from __future__ import annotations`: FastAPI must see the per-app body class, not its name.
from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from ..context import ServerContext
from ..errors import ApiError, scrub
from ..schemas import G2PResponse
from . import ERROR_RESPONSES


def preview(text: str, order: str) -> list[dict]:
    from core.text import TextError, parse_text_to_segments, segments_to_dicts  # lazy: g2p modules are heavy

    rows = []
    for line_index, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            segments = parse_text_to_segments(line, order)
        except (TextError, ValueError) as exc:
            raise ApiError(422, f"line {line_index}: {scrub(str(exc))}", param="text") from None
        rows += [{"line": line_index, **segment} for segment in segments_to_dicts(segments)]
    return rows


def build_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter(tags=["text"], responses=ERROR_RESPONSES)
    G2PRequest = ctx.schemas.G2PRequest

    @router.post("/v1/text/g2p", response_model=G2PResponse)
    async def g2p(body: G2PRequest) -> dict:  # type: ignore[valid-type]
        """Segments (text, language, phones) of each non-blank line, in the language `order`; text the
        front end cannot read: 422. No model is needed."""
        return {"segments": await run_in_threadpool(preview, body.text, body.order)}

    return router

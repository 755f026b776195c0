"""POST /v1/text/g2p: the phoneme preview, read by the engine's own front end (core/frontend.py)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from core.frontend import line_segments, read_text

from ..context import text_limited
from ..schemas import G2PRequest, G2PResponse
from . import ERROR_RESPONSES

router = APIRouter(tags=["text"], responses=ERROR_RESPONSES)


def preview(body: G2PRequest) -> dict:
    """`prompts`: the pieces the engine synthesizes and exactly the strings it reads (for a large
    context: a model with a small one may split a piece further); `segments`: each non-blank line of
    the text on its own, like the original UI (none without g2p: the text is read as written, and a line
    g2p cannot read is still synthesized)."""
    pieces = read_text(body.text, body.reference_text, use_g2p=body.use_g2p, speaker=body.speaker, order=body.order)
    prompts = [
        {
            "text": piece.text,
            "prompt": piece.prompt,
            "segments": [
                {"line": i, "text": s.text, "language": s.language, "phones": s.phones} for s in piece.segments
            ],
        }
        for i, piece in enumerate(pieces)
    ]
    return {"segments": line_segments(body.text, body.order) if body.use_g2p else [], "prompts": prompts}


@router.post("/v1/text/g2p", response_model=G2PResponse)
async def g2p(body: text_limited(G2PRequest)) -> dict:
    """What the engine reads for `text` (after `reference_text`), in the language `order`; text the
    front end cannot read: 422. No model is needed."""
    return await run_in_threadpool(preview, body)

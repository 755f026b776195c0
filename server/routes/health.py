"""GET /v1/health: answers at once, also while models load or generate (no auth needed)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from ..context import ServerContext, get_ctx
from ..schemas import Health

router = APIRouter(tags=["health"])


@router.get("/v1/health", response_model=Health)
async def health(ctx: Annotated[ServerContext, Depends(get_ctx)]) -> dict:
    """Status, the loaded models (with their running requests), loads in progress, the queue."""
    return {
        "status": "ok",
        "models": ctx.registry.describe(),
        "loading": ctx.registry.loading(),
        "load_errors": dict(ctx.load_errors),
        "queue": {"pending": ctx.queue.pending, "limit": ctx.queue.max_pending, "workers": ctx.queue.workers},
    }

"""GET /v1/health: answers at once, also while models load or generate (no auth needed)."""

from __future__ import annotations

from fastapi import APIRouter

from ..context import ServerContext
from ..schemas import Health


def build_router(ctx: ServerContext) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/v1/health", response_model=Health)
    async def health() -> dict:
        """Status, the loaded models (with their running requests), loads in progress, the queue."""
        return {
            "status": "ok",
            "models": ctx.registry.describe(),
            "loading": ctx.registry.loading(),
            "load_errors": dict(ctx.load_errors),
            "queue": {"pending": ctx.queue.pending, "limit": ctx.queue.max_pending, "workers": ctx.queue.workers},
        }

    return router

"""GET /v1/health: answers at once, also while models load or generate (no auth needed).

200 while the server can serve what it was asked to; 503 (same body, with the reason) after a
failed --load or when a model's scheduler died, so monitors and launch.sh notice.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from ..context import ServerContext, get_ctx
from ..schemas import Health

router = APIRouter(tags=["health"])


@router.get("/v1/health", response_model=Health, responses={503: {"model": Health}})
async def health(ctx: Annotated[ServerContext, Depends(get_ctx)]) -> JSONResponse:
    """Status, the loaded models (with their running requests), loads in progress, the queue."""
    models = ctx.registry.describe()
    problems = [f"--load {name} failed: {error}" for name, error in ctx.load_errors.items()]
    problems += [f"model {m['name']!r} failed: {m['failed']}; load it again" for m in models if m["failed"]]
    body = Health(
        status="failed" if problems else "ok",
        reason="; ".join(problems) or None,
        models=models,
        loading=ctx.registry.loading(),
        load_errors=dict(ctx.load_errors),
        queue={"pending": ctx.queue.pending, "limit": ctx.queue.max_pending, "workers": ctx.queue.workers},
    )
    return JSONResponse(body.model_dump(), status_code=503 if problems else 200)


# (what many load balancers and uptime checks send; one operation in the API docs)
router.add_api_route("/v1/health", health, methods=["HEAD"], include_in_schema=False)

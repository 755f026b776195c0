"""Model bundles: PUT (load or replace), GET (list), DELETE; the original's bodies and answers."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from starlette.concurrency import run_in_threadpool

from ..context import ServerContext, get_ctx
from ..errors import ApiError
from ..loading import LoadPlan, plan_load
from ..registry import Bundle, ModelLoading, ModelNotFound, TooManyModels
from ..schemas import MODEL_NAME_PATTERN, LoadModelRequest, LoadModelResponse, Message, ModelList
from . import ERROR_RESPONSES

log = logging.getLogger("fishtts.server")
ModelName = Path(..., pattern=MODEL_NAME_PATTERN, description="Bundle name, e.g. 'default'.")
Ctx = Annotated[ServerContext, Depends(get_ctx)]
router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES)


def load_bundle(ctx: ServerContext, name: str, body: LoadModelRequest) -> Bundle:
    """Check the body against the checkpoints folder, then load (blocking; call off the event loop)."""
    return load_planned(ctx, name, plan_load(body, ctx.settings, ctx.checkpoints))


def load_planned(ctx: ServerContext, name: str, plan: LoadPlan) -> Bundle:
    try:
        bundle = ctx.registry.load(name, plan.build)
    except TooManyModels:
        raise ApiError(
            409, f"{ctx.registry.max_models} model(s) loaded already, the --max-models limit; delete one first."
        ) from None
    ctx.load_errors.pop(name, None)
    log.info("model %r loaded on %s (%s)", name, bundle.info["device"], bundle.info["precision"])
    return bundle


async def models_editable(ctx: Ctx) -> None:
    """409 where the models are fixed by a deployment config (Ray Serve) rather than by clients."""
    if ctx.models_fixed_by:
        raise ApiError(
            409,
            f"Models on this server are set by {ctx.models_fixed_by}; change them there and "
            "redeploy (PUT and DELETE /v1/models/{name} are disabled here).",
            code="models_fixed",
        )


@router.put("/{name}", response_model=LoadModelResponse, dependencies=[Depends(models_editable)])
async def load_model(body: LoadModelRequest, ctx: Ctx, name: str = ModelName) -> dict:
    """Load a bundle (or replace one of that name): Fish Speech v0.2 files (`llama`, `vqgan`) or an
    OpenAudio S1-mini folder (`s1`). Paths name files or folders inside the checkpoints folder
    (400 for `..`/absolute paths, 403 outside it, 404 missing); a file that is not a weights file,
    or a folder whose files are wrong, is refused with 400 naming it, never unpickled. Requests keep
    using the old bundle until the new one is ready; it is freed once its running requests finish.
    409 where a deployment config sets the models."""
    plan = await run_in_threadpool(plan_load, body, ctx.settings, ctx.checkpoints)  # a bad body: 4xx at once
    async with ctx.load_turn:
        bundle = await run_in_threadpool(load_planned, ctx, name, plan)
    return {
        "name": name,
        "device": bundle.info["device"],
        "precision": bundle.info["precision"],
        "compiled": bundle.info["compiled"],
        "family": bundle.info["family"],
    }


@router.get("", response_model=ModelList)
async def list_models(ctx: Ctx) -> dict:
    """Names of the loaded bundles (the original's answer), and their details."""
    return {"models": ctx.registry.names(), "details": ctx.registry.describe()}


@router.delete("/{name}", response_model=Message, dependencies=[Depends(models_editable)])
async def delete_model(ctx: Ctx, name: str = ModelName) -> dict:
    """Unload a bundle: new requests get 404 at once; answers after its running requests finish.
    Unknown name: 400 "Model not found." (as the original); one still being loaded for the first time: 409.
    409 where a deployment config sets the models."""
    try:
        await run_in_threadpool(ctx.registry.delete, name)
    except ModelLoading:  # (its first load: nothing to delete yet, but not "not found")
        raise ApiError(409, f"Model {name!r} is still loading; delete it once it is loaded.") from None
    except ModelNotFound:
        raise ApiError(400, "Model not found.") from None
    return {"message": "Model deleted."}

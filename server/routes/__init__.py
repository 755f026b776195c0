"""HTTP routes, one module-level router per area; each route gets the ServerContext via `Depends(get_ctx)`."""

from __future__ import annotations

from fastapi import FastAPI

from ..schemas import ErrorBody, OpenAIErrorBody

# Documented on every route so /docs shows the error shape; the codes each route uses are in its docstring.
ERROR_RESPONSES = {status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409, 413, 415, 422, 503)}
# The OpenAI route answers in OpenAI's shape, and invalid parameters with 400, never 422 ("default"
# documents the rest and keeps FastAPI from adding its own 422).
OPENAI_ERROR_RESPONSES = {
    **{status: {"model": OpenAIErrorBody} for status in (400, 401, 403, 404, 413, 503)},
    "default": {"model": OpenAIErrorBody, "description": "Any other error, in OpenAI's shape."},
}


def include_routes(app: FastAPI) -> None:
    from . import codec, fish_references, health, invoke, models, openai_speech, text, tts, voices

    # fish_references before voices: its fixed paths (/v1/references/list, ...) win over /v1/references/{id}
    for module in (health, models, invoke, tts, codec, fish_references, voices, openai_speech, text):
        app.include_router(module.router)

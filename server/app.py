"""The FastAPI app factory: `create_app(settings)` wires context, middleware, error handlers, routes."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from .auth import install_access_control, install_cors
from .context import ServerContext
from .errors import ApiError, install_error_handlers, scrub
from .middleware import BodyLimitsMiddleware, RequestIdMiddleware
from .routes import include_routes
from .routes.models import load_bundle
from .schemas import MODEL_NAME_PATTERN, TEXT_LIMIT_MARK, LoadModelRequest
from .settings import Settings

log = logging.getLogger("fishtts.server")


class QuietHealthPolls(logging.Filter):
    """Drops uvicorn's access line for GET /v1/health: monitors and launch.sh poll it every second."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (len(args) >= 3 and str(args[2]).partition("?")[0] == "/v1/health")


QUIET_HEALTH_POLLS = QuietHealthPolls()

DESCRIPTION = """Text-to-speech with zero-shot voice cloning: Fish Speech v0.2 and OpenAudio S1-mini models.

Load a model with `PUT /v1/models/default` (v0.2 files in `llama`/`vqgan`, or an S1-mini folder in `s1`),
then `POST /v1/models/default/invoke` (or the fish-speech server's own `POST /v1/tts`). Errors are
`{"statusCode", "message", "error", "requestId"}` (OpenAI's shape on `/v1/audio/speech`)."""


def parse_load_spec(spec: str) -> tuple[str, LoadModelRequest]:
    """`NAME` (official files, defaults) or `NAME=BODY.json` (a PUT /v1/models body, from the operator)."""
    name, _, body_file = spec.partition("=")
    if not re.match(MODEL_NAME_PATTERN, name):
        raise ValueError(f"--load: invalid model name {name!r}")
    if not body_file:
        return name, LoadModelRequest()
    return name, LoadModelRequest.model_validate_json(Path(body_file).read_text(encoding="utf-8"))


async def load_at_start(ctx: ServerContext, specs: tuple[str, ...]) -> None:
    for spec in specs:
        name = spec.partition("=")[0]
        try:
            name, body = parse_load_spec(spec)
            await run_in_threadpool(load_bundle, ctx, name, body)
        except (ApiError, ValueError) as exc:
            message = exc.message if isinstance(exc, ApiError) else scrub(str(exc), ctx.replacements())
            ctx.load_errors[name] = message
            log.error("--load %s failed: %s", spec, message)
        except Exception as exc:  # noqa: BLE001 - keep serving; /v1/health reports the failure
            ctx.load_errors[name] = f"{exc.__class__.__name__}: see the server log"
            log.exception("--load %s failed", spec)


def openapi_with_text_limit(app: FastAPI, limit: int) -> dict:
    """FastAPI's document, with this server's --max-text-length as the text fields' maxLength."""
    if app.openapi_schema is None:

        def mark(node):
            if isinstance(node, dict):
                if node.pop(TEXT_LIMIT_MARK, False):
                    node["maxLength"] = limit
                for value in node.values():
                    mark(value)
            elif isinstance(node, list):
                for value in node:
                    mark(value)

        mark(FastAPI.openapi(app))  # FastAPI's own (cached in app.openapi_schema), marked in place
    return app.openapi_schema


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    ctx = ServerContext.create(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.log_level.lower() != "debug":  # uvicorn has set up its loggers by now
            logging.getLogger("uvicorn.access").addFilter(QUIET_HEALTH_POLLS)
        # Loads run in the background so /v1/health answers (and reports "loading") meanwhile.
        task = asyncio.create_task(load_at_start(ctx, settings.load)) if settings.load else None
        yield
        if task is not None:
            task.cancel()
        ctx.queue.shutdown()
        ctx.registry.close_all()

    app = FastAPI(title="fishtts", version="0.1.0", description=DESCRIPTION, lifespan=lifespan, redoc_url=None)
    app.state.ctx = ctx
    install_error_handlers(app)
    include_routes(app)
    app.openapi = functools.partial(openapi_with_text_limit, app, settings.max_text_length)
    # Added innermost first; a request passes: request id -> CORS -> body limit -> access control -> app.
    install_access_control(app, settings.api_key, settings.allowed_origins, settings.allowed_host_names)
    app.add_middleware(
        BodyLimitsMiddleware,
        max_bytes=settings.max_body_bytes,
        idle_seconds=settings.body_timeout,
        max_total_bytes=settings.max_bodies_bytes,
    )
    install_cors(app, settings.allowed_origins)
    app.add_middleware(RequestIdMiddleware)
    return app

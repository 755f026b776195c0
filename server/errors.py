"""Every error as JSON: the original's `{"statusCode", "message", "error"}` (plus `requestId`), or
OpenAI's `{"error": {...}}` on the OpenAI-compatible route.

Where exceptions become statuses, in one place: `ApiError` says its own; a `ValueError` from core
(bad text, audio, reference, a prompt longer than the context) is the client's: 422 with the field
its message starts with; the folder guard's refusals are 400 / 403 / 404; an unknown voice or model
is 404, a model still loading or failed 503; anything else 500 (UnexpectedErrorMiddleware).

Responses never carry a traceback or a server path: unexpected exceptions are logged with the
request id and answered with that id only; messages from core are scrubbed of absolute paths.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.engine import SchedulerFailed
from core.paths import BadPath, FolderError, NotInFolder, OutsideFolder

from .registry import ModelFailed, ModelLoading, ModelNotFound
from .voices import VoiceNotFound, VoicesUnwritable

log = logging.getLogger("fishtts.server")

OPENAI_PREFIX = "/v1/audio/"
_FIELD = re.compile(r"^([A-Za-z_][\w.]*): ")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~<])(?:[A-Za-z]:)?[/\\](?:[^\s'\"`:,;()\[\]{}<>]+)")
MAX_MESSAGE = 300
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class ApiError(Exception):
    """An expected failure with a status and a message safe to show to the client."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        param: str | None = None,
        code: str | None = None,
    ):
        Exception.__init__(self, message)  # (not super(): BodyError's next class is Starlette's HTTPException)
        self.status, self.message, self.headers, self.param, self.code = status, message, headers, param, code


def scrub(message: str, replacements: dict[str, str] | None = None) -> str:
    """One line, no server paths: known paths become their client-facing names, others `<path>`."""
    for secret, shown in sorted((replacements or {}).items(), key=lambda kv: -len(kv[0])):
        message = message.replace(secret, shown)
    message = _ABSOLUTE_PATH.sub(_hide_path, message)
    message = message.strip().splitlines()[0] if message.strip() else "error"
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


def _hide_path(match: re.Match) -> str:
    """`<path>` for what names a place on this machine (its first folder exists) or a Windows drive;
    text that only looks like one (`a </s> tag`, `1/2`) stays as it is."""
    text = match.group(0)
    if text[0] not in "/\\":
        return "<path>"
    top = re.split(r"[/\\]", text.lstrip("/\\"), maxsplit=1)[0]
    return "<path>" if top and os.path.exists(os.sep + top) else text


def request_id(request: Request) -> str:
    return getattr(request.state, "request_id", "-")


def is_openai_route(path: str) -> bool:
    return path.startswith(OPENAI_PREFIX)


OPENAI_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def error_body(
    status: int, message: str, rid: str, *, openai: bool = False, param: str | None = None, code: str | None = None
) -> dict:
    if openai:
        kind = OPENAI_ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        return {"error": {"message": message, "type": kind, "param": param, "code": code, "request_id": rid}}
    return {"statusCode": status, "message": message, "error": _reason(status), "requestId": rid}


def error_response(
    request: Request | None,
    status: int,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    param: str | None = None,
    code: str | None = None,
    path: str | None = None,
    rid: str | None = None,
) -> JSONResponse:
    path = path if path is not None else (request.url.path if request is not None else "")
    rid = rid or (request_id(request) if request is not None else "-")
    openai = is_openai_route(path)
    if openai and status == 422:
        status = 400  # OpenAI answers every invalid parameter with 400 invalid_request_error
    body = error_body(status, message, rid, openai=openai, param=param, code=code)
    return JSONResponse(body, status_code=status, headers=headers)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


MAX_DETAILS = 20  # entries in a 422's `details`


def _describe_validation(errors: list[dict]) -> tuple[str, str | None, list[dict]]:
    details = []
    for err in errors[:MAX_DETAILS]:
        loc = [str(part) for part in err.get("loc", ()) if part not in ("body",)] or ["body"]
        details.append({"loc": loc, "msg": err.get("msg", "invalid"), "type": err.get("type", "value_error")})
    first = details[0] if details else {"loc": ["body"], "msg": "invalid request"}
    message = f"{'.'.join(first['loc'])}: {first['msg']}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return scrub(message), first["loc"][-1] if first["loc"] else None, details


async def validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        log.info("[%s] malformed JSON on %s", request_id(request), request.url.path)
        return error_response(request, 400, "Malformed JSON body.", code="json_invalid")
    message, param, details = _describe_validation(errors)
    log.info("[%s] validation failed on %s: %s", request_id(request), request.url.path, message)
    if is_openai_route(request.url.path):
        return error_response(request, 422, message, param=param, code="invalid_value")
    body = error_body(422, message, request_id(request))
    body["details"] = details  # the per-field list (its first MAX_DETAILS), without echoing the input back
    return JSONResponse(body, status_code=422)


async def http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else _reason(exc.status_code)
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:  # Starlette names only the first route of the path; list them all
        headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
    return error_response(request, exc.status_code, message, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on this path (asked route by route: FastAPI nests routers)."""
    return [
        method
        for method in HTTP_METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in request.app.routes)
    ]


async def api_error_handler(request: Request, exc: ApiError) -> JSONResponse:
    log.info("[%s] %s %s -> %d %s", request_id(request), request.method, request.url.path, exc.status, exc.message)
    return error_response(request, exc.status, exc.message, headers=exc.headers, param=exc.param, code=exc.code)


async def model_failed_handler(request: Request, exc: SchedulerFailed) -> JSONResponse:
    log.warning("[%s] %s %s -> 503: %s", request_id(request), request.method, request.url.path, exc)
    return error_response(
        request, 503, f"The model failed: {exc}; load it again (PUT /v1/models/NAME).", code="model_failed"
    )


async def voices_unwritable_handler(request: Request, exc: VoicesUnwritable) -> JSONResponse:
    """507 Insufficient Storage: the request was fine, the server's voices folder takes no writes."""
    log.warning("[%s] %s %s -> 507: %s", request_id(request), request.method, request.url.path, exc)
    return error_response(request, 507, str(exc), code="voices_unwritable")


class UnexpectedErrorMiddleware:
    """Any other exception: logged once with its traceback and the request id, answered 500 with the
    id only. (Starlette's own handler for `Exception` re-raises after answering, so the server logged
    every traceback a second time.) After the response has started it can only be logged."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, rid = False, scope.get("state", {}).get("request_id", "-")  # (set by RequestIdMiddleware, outside)

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:  # gone while its body was read or its answer made: no one to answer
            log.info("[%s] %s %s: the client left before its answer", rid, scope["method"], scope["path"])
        except asyncio.CancelledError:  # uvicorn stopping, past its graceful wait: a JSON 503, not its text 500
            log.info("[%s] %s %s: stopped, the server is shutting down", rid, scope["method"], scope["path"])
            if not started:
                message, close = "The server is shutting down; retry once it is back.", {"Connection": "close"}
                response = error_response(None, 503, message, path=scope["path"], rid=rid, headers=close)
                await response(scope, receive, send)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            log.error("[%s] %s %s failed", rid, scope["method"], scope["path"], exc_info=exc)
            if started:
                return
            message = f"Internal server error; the server log has the details under request id {rid}."
            await error_response(None, 500, message, path=scope["path"], rid=rid)(scope, receive, send)


FOLDER_STATUS = {BadPath: 400, OutsideFolder: 403, NotInFolder: 404}


def replacements(request: Request) -> dict[str, str]:
    ctx = getattr(request.app.state, "ctx", None)
    return {} if ctx is None else ctx.replacements()


async def client_error_handler(request: Request, exc: ValueError) -> JSONResponse:
    """A ValueError is the client's input (core raises nothing else for it): 422, or the folder guard's status."""
    message = scrub(str(exc) or exc.__class__.__name__, replacements(request))
    status = next((code for kind, code in FOLDER_STATUS.items() if isinstance(exc, kind)), 422)
    field = exc.field if isinstance(exc, FolderError) else (_FIELD.match(message) or [None, None])[1]
    return await api_error_handler(request, ApiError(status, message, param=field))


async def not_found_handler(request: Request, exc: Exception) -> JSONResponse:
    """Unknown voices and models (and models still loading or failed), wherever they are looked up."""
    if isinstance(exc, ModelFailed):
        name, reason = exc.args
        error = ApiError(
            503, f"Model {name!r} failed: {reason}; load it again (PUT /v1/models/{name}).", code="model_failed"
        )
    elif isinstance(exc, ModelLoading):
        error = ApiError(
            503,
            f"Model {exc.args[0]!r} is still loading; retry shortly.",
            headers={"Retry-After": "5"},
            code="model_loading",
        )
    elif isinstance(exc, ModelNotFound):
        error = ApiError(404, "Cannot find model.", param="model", code="model_not_found")
    elif is_openai_route(request.url.path):  # OpenAI answers a bad parameter (the voice) with 400
        error = ApiError(
            400,
            f"Voice {exc.args[0]!r} does not exist; create it with POST /v1/references.",
            param="voice",
            code="voice_not_found",
        )
    else:
        error = ApiError(404, f"Cannot find voice {exc.args[0]!r}.", code="voice_not_found")
    return await api_error_handler(request, error)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(ValueError, client_error_handler)
    for kind in (VoiceNotFound, ModelNotFound, ModelLoading, ModelFailed):
        app.add_exception_handler(kind, not_found_handler)
    app.add_exception_handler(SchedulerFailed, model_failed_handler)
    app.add_exception_handler(VoicesUnwritable, voices_unwritable_handler)
    app.add_middleware(UnexpectedErrorMiddleware)  # the innermost middleware: right outside the routes

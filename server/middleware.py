"""ASGI middleware: a request id on every request, and the request body's limits (size, and a
deadline for each piece of it).

Pure ASGI (no BaseHTTPMiddleware) so streaming bodies are counted as they arrive and an oversized
upload is refused before it is buffered.
"""

from __future__ import annotations

import asyncio
import re
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError, error_response

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestIdMiddleware:
    """Use the client's `X-Request-ID` if it is a plain token, else a fresh one; echo it back."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _CLIENT_ID.match(given) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodyError(ApiError, HTTPException):
    """An ApiError raised while a body is read, which FastAPI's own JSON body reader passes on (it turns any
    other error into a 400 "There was an error parsing the body": 413 and 408 were lost on its routes)."""

    def __init__(self, status: int, message: str, **options):
        super().__init__(status, message, **options)
        self.status_code, self.detail = status, message  # (what HTTPException's str() reads)


class BodyTooLarge(BodyError):
    def __init__(self, limit: int):
        super().__init__(
            413,
            f"Request body is larger than the server's limit of {limit / 2**20:g} MiB (--max-upload-mb).",
            code="body_too_large",
        )


class BodyStalled(BodyError):
    def __init__(self, seconds: float):
        super().__init__(
            408,
            f"The request body stopped arriving for {seconds:g} s (--body-timeout); send it again.",
            headers={"Connection": "close"},
            code="body_timeout",
        )


class BodyLimitsMiddleware:
    """413 for a declared Content-Length over the limit, and for chunked bodies once they pass it; 408
    for a body none of which arrives for `idle_seconds` (what it sent is let go)."""

    def __init__(self, app: ASGIApp, max_bytes: int, idle_seconds: float):
        self.app, self.max_bytes, self.idle_seconds = app, max_bytes, idle_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > self.max_bytes
            except ValueError:
                too_large = False  # the server itself rejects a malformed Content-Length
            if too_large:
                rid = scope.get("state", {}).get("request_id", "-")
                exc = BodyTooLarge(self.max_bytes)
                response = error_response(
                    None, 413, exc.message, path=scope["path"], rid=rid, code=exc.code, headers={"Connection": "close"}
                )
                return await response(scope, receive, send)
        seen, complete = 0, False

        async def counting_receive() -> Message:
            nonlocal seen, complete
            if complete:  # (after the body, receive waits for the disconnect: no deadline)
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_seconds)
            except TimeoutError:
                raise BodyStalled(self.idle_seconds) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)

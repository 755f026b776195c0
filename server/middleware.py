"""ASGI middleware: a request id on every request, and the request body's limits (size, and a
deadline for each piece of it).

Pure ASGI (no BaseHTTPMiddleware) so streaming bodies are counted as they arrive and an oversized
upload is refused before it is buffered.
"""

from __future__ import annotations

import asyncio
import re
import time
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


class BodyTooSlow(BodyError):
    def __init__(self, seconds: float):
        super().__init__(
            408,
            f"The request body arrived slower than {MIN_BODY_RATE // 1024} KiB/s on average after its first "
            f"{seconds:g} s (--body-timeout); send it again.",
            headers={"Connection": "close"},
            code="body_timeout",
        )


# A body past this size must average this much once --body-timeout's grace has passed: it holds its bytes
# (and a share of the bodies' total) while it arrives, so one dripping a byte at a time held them for hours.
MIN_BODY_RATE = 64 * 1024


BODIES_RETRY_AFTER_S = 2


class BodiesBusy(BodyError):
    def __init__(self, limit: int):
        super().__init__(
            503,
            f"The server is receiving {limit / 2**20:g} MiB of request bodies at once, its limit; send it again "
            "in a moment.",
            headers={"Retry-After": str(BODIES_RETRY_AFTER_S), "Connection": "close"},
            code="server_busy",
        )


class BodyLimitsMiddleware:
    """413 for a declared Content-Length over the limit, and for chunked bodies once they pass it; 408
    for a body none of which arrives for `idle_seconds`, or one past MIN_BODY_RATE bytes that averages
    under MIN_BODY_RATE a second after that grace (what it sent is let go); 503 for a body that would take
    the bodies held by requests in progress past `max_total_bytes` (an upload flood: each body is bounded,
    their sum was not)."""

    def __init__(self, app: ASGIApp, max_bytes: int, idle_seconds: float, max_total_bytes: int):
        self.app, self.max_bytes, self.idle_seconds = app, max_bytes, idle_seconds
        self.max_total_bytes, self.held = max_total_bytes, 0  # body bytes received by requests not yet done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = 0  # the server itself rejects a malformed Content-Length
            exc = None
            if size > self.max_bytes:
                exc = BodyTooLarge(self.max_bytes)
            elif self.held + size > self.max_total_bytes:
                exc = BodiesBusy(self.max_total_bytes)
            if exc is not None:
                rid = scope.get("state", {}).get("request_id", "-")
                headers = {"Connection": "close", **(exc.headers or {})}
                response = error_response(
                    None, exc.status, exc.message, path=scope["path"], rid=rid, code=exc.code, headers=headers
                )
                return await response(scope, receive, send)
        seen, complete, started = 0, False, time.monotonic()

        async def counting_receive() -> Message:
            nonlocal seen, complete
            if complete:  # (after the body, receive waits for the disconnect: no deadline)
                return await receive()
            wait, late = self.idle_seconds, BodyStalled
            if seen >= MIN_BODY_RATE:  # (less is too little to matter, whatever its pace)
                slow_in = started + self.idle_seconds + seen / MIN_BODY_RATE - time.monotonic()  # average short then
                if slow_in < wait:
                    wait, late = max(slow_in, 0), BodyTooSlow
            try:
                message = await asyncio.wait_for(receive(), wait)
            except TimeoutError:
                raise late(self.idle_seconds) from None
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                if self.held + size > self.max_total_bytes:
                    raise BodiesBusy(self.max_total_bytes)
                seen += size
                self.held += size
                complete = not message.get("more_body", False)
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, counting_receive, send)
        finally:
            self.held -= seen

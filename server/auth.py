"""Who may call the server: the optional API key, cross-site browser requests, and CORS.

- `--api-key`: every route but health and the docs needs `Authorization: Bearer KEY` (401 otherwise).
- Browsers can send cross-site form POSTs without a CORS preflight; a state-changing request that
  carries an `Origin` which is neither this server nor a `--cors-origins` entry is refused (403),
  so a web page cannot drive a local server. Non-browser clients send no Origin and are unaffected.
- CORS headers only for `--cors-origins`; by default there are none (the original allowed `.*`).
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_response

PUBLIC_PATHS = {"/v1/health", "/docs", "/docs/oauth2-redirect", "/openapi.json"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class AccessMiddleware:
    def __init__(self, app: ASGIApp, api_key: str | None, allowed_origins: list[str]):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.allowed_origins = set(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        method, path = scope["method"], scope["path"]
        rid = scope.get("state", {}).get("request_id", "-")
        if method not in SAFE_METHODS and not self._origin_allowed(headers):
            response = error_response(None, 403, "Cross-site requests are not allowed (see --cors-origins).",
                                      path=path, rid=rid, code="cross_site_request")
            return await response(scope, receive, send)
        if self.api_key is not None and path not in PUBLIC_PATHS and method != "OPTIONS":
            if not self._key_matches(headers.get(b"authorization", b"")):
                response = error_response(None, 401, "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                                          path=path, rid=rid, code="invalid_api_key",
                                          headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        await self.app(scope, receive, send)

    def _key_matches(self, header: bytes) -> bool:
        scheme, _, token = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)

    def _origin_allowed(self, headers: dict[bytes, bytes]) -> bool:
        origin = headers.get(b"origin", b"").decode("latin-1")
        if not origin:
            # No Origin: not a browser, or a same-origin navigation; Sec-Fetch-Site settles the latter.
            return headers.get(b"sec-fetch-site", b"same-origin") in (b"same-origin", b"none")
        if origin in self.allowed_origins or "*" in self.allowed_origins:
            return True
        host = headers.get(b"host", b"").decode("latin-1")
        return urlsplit(origin).netloc == host  # same origin (e.g. the /docs page of this server)


def install_access_control(app: FastAPI, api_key: str | None, allowed_origins: list[str]) -> None:
    app.add_middleware(AccessMiddleware, api_key=api_key, allowed_origins=allowed_origins)


def install_cors(app: FastAPI, allowed_origins: list[str]) -> None:
    """CORS headers for the configured origins only; add it outside the access and size checks so
    browsers can read their error responses and preflights are answered first."""
    if allowed_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=allowed_origins, allow_credentials=False,
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After", "Content-Disposition"], max_age=600,
        )

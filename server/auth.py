"""Who may call the server: the Host it was called by, the optional API key, cross-site browser
requests, and CORS.

- Host: loopback names (`localhost`, `*.localhost`), IP addresses, the `--listen` host and the
  `--allowed-hosts` names; any other name is refused (400). A web page on a name that an attacker
  re-points at 127.0.0.1 (DNS rebinding) is same-origin with us as far as the browser knows, so only
  the Host header shows it; an IP address cannot be rebound, so any is accepted.
- `--api-key`: every route but health and the docs needs `Authorization: Bearer KEY` (401 otherwise);
  a request with the header twice, or with several tokens in it, is ambiguous (proxies may pick
  another one than we do): 400, and neither is compared.
- Browsers can send cross-site form POSTs without a CORS preflight; a state-changing request that
  carries an `Origin` which is neither this server nor a `--cors-origins` entry is refused (403),
  so a web page cannot drive a local server. Non-browser clients send no Origin and are unaffected.
- CORS headers only for `--cors-origins`; by default there are none (the original allowed `.*`).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_response

PUBLIC_PATHS = {"/v1/health", "/docs", "/docs/oauth2-redirect", "/openapi.json"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^:\[\]]*)(:\d*)?$")


def host_allowed(host_header: str, allowed: set[str]) -> bool:
    """Is the name in a Host header (port and brackets ignored) one we answer to?"""
    match = _HOST_PORT.match(host_header.strip())
    if match is None:
        return False
    name = match.group(1).strip("[]").rstrip(".").lower()
    if "*" in allowed or name in allowed or name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class AccessMiddleware:
    def __init__(self, app: ASGIApp, api_key: str | None, allowed_origins: list[str], allowed_hosts: list[str]):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.allowed_origins = set(allowed_origins)
        self.allowed_hosts = {h.strip("[]").rstrip(".").lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        method, path = scope["method"], scope["path"]
        rid = scope.get("state", {}).get("request_id", "-")
        host = headers.get(b"host")  # none: HTTP/1.0, not a browser
        if host is not None and not host_allowed(host.decode("latin-1"), self.allowed_hosts):
            response = error_response(
                None,
                400,
                f"Host {host.decode('latin-1')[:100]!r} is not allowed; the server "
                "answers to loopback names, IP addresses and --allowed-hosts.",
                path=path,
                rid=rid,
                code="host_not_allowed",
            )
            return await response(scope, receive, send)
        if method not in SAFE_METHODS and not self._origin_allowed(headers):
            response = error_response(
                None,
                403,
                "Cross-site requests are not allowed (see --cors-origins).",
                path=path,
                rid=rid,
                code="cross_site_request",
            )
            return await response(scope, receive, send)
        if self.api_key is not None and path not in PUBLIC_PATHS and method != "OPTIONS":
            given = [value for name, value in scope["headers"] if name == b"authorization"]
            if _ambiguous(given):
                response = error_response(
                    None,
                    400,
                    "Send one 'Authorization: Bearer <key>' header with one token.",
                    path=path,
                    rid=rid,
                    code="ambiguous_authorization",
                )
                return await response(scope, receive, send)
            if not self._key_matches(given[0] if given else b""):
                response = error_response(
                    None,
                    401,
                    "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                    path=path,
                    rid=rid,
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
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
        try:
            return urlsplit(origin).netloc == host  # same origin (e.g. the /docs page of this server)
        except ValueError:  # not a URL (`http://[`): no origin of ours
            return False


def _ambiguous(authorization: list[bytes]) -> bool:
    """The header more than once, or more than one token after the scheme (`Bearer a, Bearer b`)."""
    if len(authorization) != 1:
        return len(authorization) > 1
    credentials = authorization[0].split(None, 1)[-1]
    return len(credentials.replace(b",", b" ").split()) > 1


def install_access_control(
    app: FastAPI, api_key: str | None, allowed_origins: list[str], allowed_hosts: list[str]
) -> None:
    app.add_middleware(AccessMiddleware, api_key=api_key, allowed_origins=allowed_origins, allowed_hosts=allowed_hosts)


def install_cors(app: FastAPI, allowed_origins: list[str]) -> None:
    """CORS headers for the configured origins only; add it outside the access and size checks so
    browsers can read their error responses and preflights are answered first."""
    if allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=allowed_origins,
            allow_credentials=False,
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            # any request header (the OpenAI SDKs send X-Stainless-*): the origins are the check, and a header
            # opens nothing the API key does not
            allow_headers=["*"],
            # (X-Sample-Rate: the only way a page tells raw pcm's rate)
            expose_headers=["X-Request-ID", "Retry-After", "Content-Disposition", "X-Sample-Rate"],
            max_age=600,
        )

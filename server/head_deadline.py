"""uvicorn's HTTP protocol with a deadline for each request's head (its request line and headers).

uvicorn has none: a connection that sends nothing, or its headers a byte at a time, was kept open forever,
so a few thousand of them took every file descriptor the server had and locked every other client out.
The deadline runs from the connection's start, and again from the end of each response, until the app is
called (uvicorn calls it once the head is complete); a body that stalls is BodyLimitsMiddleware's.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.auto import AutoHTTPProtocol


def head_deadline_protocol(seconds: float) -> type[asyncio.Protocol]:
    """The protocol class to give uvicorn (`http=`): connections whose head takes over `seconds` are closed."""

    class HeadDeadlineProtocol(AutoHTTPProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _requests = 0  # heads that arrived on this connection

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            served = getattr(self, "app", None)
            if served is None:  # (a uvicorn that keeps its app elsewhere: no deadline rather than no server)
                return

            async def app(scope, receive, send):
                self._head_arrived()
                self._requests += 1
                number = self._requests
                try:
                    await served(scope, receive, send)
                finally:
                    # the next request's head, unless it came already: uvicorn may start it before this app
                    # returns (a stream's last send completes the response in a task of its own)
                    if self._requests == number:
                        self._await_head()

            self.app = app
            self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_arrived()
            super().connection_lost(exc)

        def _await_head(self) -> None:
            self._head_arrived()
            if not self.transport.is_closing():
                self._head_timer = asyncio.get_running_loop().call_later(seconds, self._head_overdue)

        def _head_arrived(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_overdue(self) -> None:
            self._head_timer = None
            # (an upgraded connection belongs to another protocol now: not ours to close)
            if self.transport.get_protocol() is self and not self.transport.is_closing():
                self.transport.close()

    return HeadDeadlineProtocol

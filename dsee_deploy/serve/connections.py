"""What a connection may cost dsee-serve before it has sent a request: bounded time and bytes for the request
head, and no hold on the capacity that requests need.

uvicorn bounds neither: its keep-alive timer runs only between requests, so a client that sends half a request
head holds its connection for as long as it likes, httptools buffers an unfinished header without limit, and
uvicorn's `limit_concurrency` counts such connections with the requests in progress, so 600 of them turned every
real request away (503) for as long as they stayed. Hence, here:

- `GuardedHttpToolsProtocol`, uvicorn's httptools protocol with a deadline (`header_timeout_s`, counted from
  the connection or the end of the previous response to the end of the head: 408, then closed) and a size
  bound (`max_header_bytes`: 431, then closed) on every request head; and connections waiting for a head
  (new, idle between requests, or slow) are capped at `max_idle_connections`, the oldest closed for a new one;
- `RequestLimit`, an ASGI middleware that answers 503 beyond `max_connections` requests in progress, counting
  requests rather than connections.

These are subclasses and a middleware rather than a reverse proxy's work done by hand because the server must
be safe on its own (tests, a container without a proxy); in production a proxy in front (nginx, Envoy) still
buffers slow clients and terminates TLS: see docs/serving-production.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .options import ServeOptions

log = logging.getLogger("dsee_deploy.serve")


def error_response(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 response in the {"error": ...} shape of every other answer, closing the connection."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"connection: close\r\n\r\n"
    )
    return head.encode() + body


def guarded_protocol(options: ServeOptions) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol bounded by `options` (pass the class as uvicorn.Config(http=...))."""
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout_s": options.header_timeout_s,
            "max_header_bytes": options.max_header_bytes,
            "max_idle_connections": options.max_idle_connections,
        },
    )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout_s = ServeOptions.header_timeout_s
    max_header_bytes = ServeOptions.max_header_bytes
    max_idle_connections = ServeOptions.max_idle_connections

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._await_head()
        idle = self._idle()
        while len(idle) > self.max_idle_connections:
            oldest, _ = idle.popitem(last=False)  # the longest waiting: a new client is likelier to be real
            oldest._close(None)

    def connection_lost(self, exc) -> None:
        self._head_done()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        waiting = self._head_timer is not None
        if waiting:
            # Counted before parsing: a chunk that completes the head and carries body bytes is not refused for
            # them, since the head ends (on_headers_complete) while it is parsed.
            self._head_bytes += len(data)
        super().data_received(data)
        if self._head_timer is not None and self._head_bytes > self.max_header_bytes:
            self._close(
                error_response(
                    431,
                    "Request Header Fields Too Large",
                    f"the request head has more than {self.max_header_bytes} bytes: send shorter headers "
                    f"(the server's --max-header-bytes)",
                )
            )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._await_head()  # armed already, unless a pipelined head follows a body in one chunk

    def on_headers_complete(self) -> None:
        self._head_done()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline and self.cycle.response_complete:
            self._await_head()  # the next request's head, on a kept-alive connection

    # --- the head's deadline and the idle connections ----------------------------------------------------

    def _idle(self) -> OrderedDict:
        """Connections of this server waiting for a request head, oldest first."""
        state = self.server_state
        if not hasattr(state, "dsee_idle"):
            state.dsee_idle = OrderedDict()
        return state.dsee_idle

    def _await_head(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)
            self._idle()[self] = None

    def _head_done(self) -> None:
        self._head_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._idle().pop(self, None)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        # A connection that sent nothing is closed quietly (a browser's preconnect, a kept-alive client).
        reply = None
        if self._head_bytes:
            reply = error_response(
                408,
                "Request Timeout",
                f"the request head took longer than {self.header_timeout_s:g} s to arrive: send it at once "
                f"(the server's --header-timeout)",
            )
        self._close(reply)

    def _close(self, reply: bytes | None) -> None:
        self._head_done()
        if self.transport.is_closing():
            return
        if reply is not None:
            self.transport.write(reply)
        self.transport.close()


class RequestLimit:
    """ASGI middleware: at most `limit` HTTP requests in progress; beyond it 503 in the {"error": ...} shape.
    It counts requests, not connections: a connection counts only while its request is read, run or answered."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit
        self.active = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.active >= self.limit:
            body = json.dumps(
                {
                    "error": f"the server has {self.limit} requests in progress, its limit: retry shortly, or "
                    f"start dsee-serve with a larger --max-connections"
                }
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"retry-after", b"1"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1

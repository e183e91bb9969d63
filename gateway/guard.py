"""Connection hygiene at the edge, as reverse proxies do it (nginx's client_header_timeout,
client_body_timeout and limit_conn; aiohttp's keep-alive timeout for idle connections):

* **Header timeout**: a connection that has begun a request has `HEADER_TIMEOUT_S` to finish its
  request line and headers (slowloris sends them a byte at a time), else it is closed.
* **Body timeout**: a request declaring a body must deliver all of it within `BODY_TIMEOUT_S`
  (408 REQUEST_TIMEOUT, connection closed), not hold its connection for ever.
* **Idle timeout**: a keep-alive connection with no request for `IDLE_TIMEOUT_S` is closed.
* **Per-address cap**: at most `MAX_PER_ADDRESS` open connections from one address; the next
  gets 503 UNAVAILABLE and is closed, so one client cannot take every descriptor (loopback,
  i.e. a reverse proxy or tools on this machine, is not capped).
* **Malformed requests** are counted by kind (``/metrics``) and logged one line per kind at most
  every `LOG_EVERY_S`, with no traceback: a client's garbage is not the server's error.

    guard = Guard()
    runner = web.AppRunner(app, keepalive_timeout=guard.idle_timeout_s)
    site = GuardedSite(runner, guard, host, port)     # instead of web.TCPSite
    app.middlewares.append(guard.body_timeout)         # (before the app is frozen)
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from exchange.errors import ApiError

log = logging.getLogger("gpux.gateway")
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
IDLE_TIMEOUT_S = 75.0
LINGERING_S = 1.0  # after an answer sent before the request's body was read, the rest is read at most this long
MAX_PER_ADDRESS = 256
LOG_EVERY_S = 10.0
_FULL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
         b"Content-Length: %d\r\n\r\n%s")


class Guard:
    """The limits and their counters (one per server)."""

    def __init__(self, max_per_address: int = MAX_PER_ADDRESS, header_timeout_s: float = HEADER_TIMEOUT_S,
                 body_timeout_s: float = BODY_TIMEOUT_S, idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
        self.max_per_address = max_per_address
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.lingering_s = LINGERING_S
        # loopback is this machine: a reverse proxy in front (which keeps its own limits), or local
        # tools and benchmarks with many connections
        self.cap_loopback = False
        self.open: dict[str, int] = {}  # address -> open connections
        self.counts: dict[str, int] = {"over_cap": 0, "header_timeout": 0, "body_timeout": 0}
        self.malformed: dict[str, int] = {}  # kind -> count
        self._logged: dict[str, float] = {}

    def handler(self, server: web.Server, loop: asyncio.AbstractEventLoop) -> RequestHandler:
        return _Handler(self, server, loop=loop, **server._kwargs)

    def note_malformed(self, kind: str, peer: str, why: str) -> None:
        self.malformed[kind] = self.malformed.get(kind, 0) + 1
        now = time.monotonic()
        if now - self._logged.get(kind, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._logged[kind] = now
            log.warning("malformed request (%s) from %s: %s (%d so far; logged at most every %g s)",
                        kind, peer, why, self.malformed[kind], LOG_EVERY_S)

    @web.middleware
    async def body_timeout(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Read a declared body within the body timeout (handlers read it from the cache after)."""
        if request.body_exists and request.method in ("POST", "PUT", "PATCH", "DELETE"):
            try:
                await asyncio.wait_for(request.read(), self.body_timeout_s)
            except TimeoutError:
                self.counts["body_timeout"] += 1
                err = ApiError("REQUEST_TIMEOUT", f"the request body did not arrive within {self.body_timeout_s:g} s")
                resp = web.json_response(err.body(), status=err.status)
                resp.force_close()  # the rest of the body is not waited for
                return resp
        return await handler(request)

    def metric_samples(self) -> list[tuple[str, Any, str, str]]:
        out: list[tuple[str, Any, str, str]] = [
            ("gpux_connections_over_cap_total", self.counts["over_cap"],
             f"connections refused: more than {self.max_per_address} open from one address", "counter"),
            ("gpux_header_timeouts_total", self.counts["header_timeout"],
             "connections closed: request headers not complete in time", "counter"),
            ("gpux_body_timeouts_total", self.counts["body_timeout"],
             "requests refused: the declared body did not arrive in time", "counter"),
            ("gpux_connection_addresses", len(self.open), "addresses with open connections", "gauge")]
        out += [(f'gpux_malformed_requests_total{{kind="{k}"}}', n, "malformed HTTP requests", "counter")
                for k, n in sorted(self.malformed.items())]
        return out


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a Unix socket
        return True


class _Handler(RequestHandler):
    """aiohttp's request handler with the guard's header timeout, address cap and quiet logging."""

    def __init__(self, guard: Guard, server: web.Server, **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self._guard = guard
        self._peer = ""
        self._partial_since = 0.0  # when the request head now being received began (0: none)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) else str(peer or "")
        g = self._guard
        n = g.open[self._peer] = g.open.get(self._peer, 0) + 1
        if n > g.max_per_address and (g.cap_loopback or not _loopback(self._peer)):
            g.counts["over_cap"] += 1
            data = msgspec.json.encode(ApiError("UNAVAILABLE", f"more than {g.max_per_address} connections "
                                                         "from one address").body())
            transport.write(_FULL % (len(data), data))  # type: ignore[attr-defined]
            self.force_close()
            transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        g = self._guard
        n = g.open.get(self._peer, 0) - 1
        if n > 0:
            g.open[self._peer] = n
        else:
            g.open.pop(self._peer, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        if self._upgraded or self._payload_parser is not None or self._request_count != before:
            self._partial_since = 0.0  # a head completed (or the bytes were a body / WebSocket frames)
        elif data and not self._partial_since:
            since = self._partial_since = self._loop.time()
            self._loop.call_later(self._guard.header_timeout_s, self._header_deadline, since)

    def _header_deadline(self, since: float) -> None:
        if self._partial_since != since or self.transport is None or self.transport.is_closing():
            return
        self._guard.counts["header_timeout"] += 1
        self._guard.note_malformed("header_timeout", self._peer, "request headers not complete in time")
        self.force_close()
        self.transport.close()

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, BaseException) and getattr(exc, "status", getattr(exc, "code", 500)) in range(400, 500):
            self._guard.note_malformed(type(exc).__name__, self._peer, str(exc).splitlines()[0][:200])
            return
        super().log_exception(*args, **kw)


class GuardedSite(web.TCPSite):
    """A TCP site whose connections are handled by the guard's request handler."""

    def __init__(self, runner: web.AppRunner, guard: Guard, host: str, port: int,
                 sock: socket.socket | None = None, **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self._guard = guard
        self._sock = sock  # a socket bound already (`gpux serve` binds before it creates anything)

    async def start(self) -> None:
        self._runner._reg_site(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        guard = self._guard
        if self._sock is not None:
            self._server = await loop.create_server(lambda: guard.handler(server, loop), sock=self._sock,
                                                    ssl=self._ssl_context, backlog=self._backlog)
        else:
            self._server = await loop.create_server(
                lambda: guard.handler(server, loop), self._host, self._port, ssl=self._ssl_context,
                backlog=self._backlog, reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port

"""Time and number limits on the HTTP API's connections (aiohttp has neither a header timeout
nor a connection cap).

Each connection is wrapped in a protocol that tracks where it is:
- headers: a new connection, or bytes of the next request on a kept-alive one: the request's
  headers must be complete within ``header_timeout`` (slowloris);
- request: a handler runs; while its body has not all arrived, ``body_timeout`` from the
  start of the request bounds it (a dribbled or never-ending body);
- idle: between requests, at most ``keepalive_timeout``.
A connection past its deadline is aborted. At ``max_connections`` open, a new connection
takes the place of the one that has waited longest for headers or idled longest; when every
open connection is inside a request, the new one is answered 503 and closed. Closes and
refusals are counted (smsagg_http_connections_closed_total{reason}) and logged at most once
per LOG_WINDOW per reason, with a count."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import resource
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

from aiohttp import web

from aggregator import metrics
from aggregator.config import HttpConfig
from aggregator.ingress import fastpost
from aggregator.log import get_logger

log = get_logger("smsagg.http")

LOG_WINDOW = 10.0  # seconds: at most one log line per reason in this time

HEADERS, REQUEST, IDLE = "headers", "request", "idle"

_BODY = json.dumps({"error": {"code": "too_many_connections",
                              "message": "too many open connections; try again"}}).encode()
# The fast lane (fastpost.py): bytes that arrive while its answer is pending are kept, in order,
# and reading pauses beyond this many.
HOLD_LIMIT = 256 * 1024
# Seconds a stopping site waits for the fast lane's answers under way (aiohttp's own default
# for the requests it runs).
FAST_DRAIN = 60.0
FastPost = Callable[[str, fastpost.FastRequest], Awaitable[bytes]]

REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
           b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
           % (len(_BODY), _BODY))


class _Connection(asyncio.Protocol):
    """Stands between the transport and aiohttp's protocol; only watches."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self.transport: asyncio.Transport | None = None
        self.admitted = False
        self.state = HEADERS
        self.since = 0.0
        self.body: Any = None  # the request's payload while a handler runs
        # The fast lane (fastpost.py) until a read it cannot take: then aiohttp's for good.
        self._fast = False  # from connection_made on, for an admitted connection
        self._answering: _Drive | None = None  # a fast-lane answer under way
        self._held = bytearray()  # bytes that came meanwhile
        self._paused = False  # reading, for holding too much of them
        self._blocked = False  # reading, for the peer not reading our answers
        self._peer = ""
        self._loop = asyncio.get_running_loop()  # once (each lookup is a getpid() on 3.11)

    @property
    def held(self) -> int:
        """Bytes received while a fast-lane answer was under way, not handled yet."""
        return len(self._held)

    # -- asyncio protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
        if not self._guard.admit(self):
            return
        self.admitted = True
        self._fast = self._guard.fast_post is not None
        self.enter(HEADERS)
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple | list) and peer else ""
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._fast and self._fast_take(data):
            return
        if self.state == IDLE:
            self.enter(HEADERS)  # the next request has begun
        self._inner.data_received(data)

    def _fast_take(self, data: bytes) -> bool:
        """Whether the fast lane took `data` (answers it, or keeps it until its answer under
        way is written); False once it cannot: from then on aiohttp has the connection."""
        if self._answering is not None:
            self._held += data
            if len(self._held) > HOLD_LIMIT and self.transport is not None and not self._paused:
                self._paused = True
                self.transport.pause_reading()
            return True
        request = fastpost.parse(data, self._guard.max_body)
        if request is None:
            self._fast = False
            self._guard.to_aiohttp.inc()
            log.debug("http_fast_lane_left", peer=self._peer)
            return False
        self._guard.fast.inc()
        self.enter(REQUEST)
        # Marked under way before its first step, which may answer at once (a 401, a 400).
        self._answering = _Drive(self._answer(request), self._loop, self._guard.answering)
        self._answering.step()
        return True

    async def _answer(self, request: fastpost.FastRequest) -> None:
        fast_post = self._guard.fast_post
        assert fast_post is not None
        close = False
        try:
            answer = await fast_post(self._peer, request)
        except Exception as exc:  # as aiohttp does: logged, 500, and the connection closed
            log.error("http_request_failed", path="/v1/messages", error=type(exc).__name__,
                      exc_info=exc)
            answer = fastpost.render(500, b"500 Internal Server Error\n\nServer got itself in "
                                     b"trouble", content_type=b"text/plain", close=True)
            close = True
        self._answering = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(answer)
        if close:
            transport.close()
            return
        self.enter(IDLE)
        if self._held:
            held = bytes(self._held)
            self._held.clear()
            if self._paused:
                self._paused = False
                if not self._blocked:
                    transport.resume_reading()
            self.data_received(held)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self.admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.forget(self)
        if self.admitted:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._fast and self.transport is not None:  # answers pile up: stop taking requests
            self._blocked = True
            self.transport.pause_reading()
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._blocked:
            self._blocked = False
            if self.transport is not None and not self._paused:
                self.transport.resume_reading()
        self._inner.resume_writing()

    # -- states -----------------------------------------------------------------------------

    def enter(self, state: str, body: Any = None) -> None:
        self.state, self.since, self.body = state, time.monotonic(), body

    def leave_request(self) -> None:
        if self.body is not None and not self.body.is_eof():
            return  # the body is still arriving: its deadline stands
        self.enter(IDLE)

    def overdue(self, now: float) -> str | None:
        """Why the connection is past its deadline (the close reason), or None."""
        if now - self.since < self._guard.timeout(self.state):
            return None
        if self.state == REQUEST:
            # The handler's own time is not bounded here; only a body still arriving.
            return None if self.body is None or self.body.is_eof() else "body_timeout"
        return "header_timeout" if self.state == HEADERS else "idle_timeout"

    def close(self, reason: str) -> None:
        self._guard.closed(reason)
        if self.transport is not None:
            self.transport.abort()


class _Drive:
    """A fast-lane answer's coroutine, run step by step as a Task would run it, without one:
    its first step (key, JSON, validation, rules, up to the wait for the store's commit) runs
    at once, in the read that brought the request, where a Task would start a loop turn later.
    Each later step runs when the future it waits for is done, in the same context copy.
    `done` (in the guard's `answering` while under way) resolves when the coroutine ends.
    It saves a Task, a loop turn and a cold start per request: scenario f's ingress worker with
    a stub instead of the accept path 74 -> 58-68 µs a request (tests/e2e/test_http_fast_drive.py
    keeps what a Task gave: order, context, the 500)."""

    __slots__ = ("_context", "_coro", "_loop", "_under_way", "done")

    def __init__(self, coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop,
                 under_way: set[asyncio.Future[None]]) -> None:
        self._coro = coro
        self._loop = loop
        self._context = contextvars.copy_context()
        self._under_way = under_way
        self.done: asyncio.Future[None] = loop.create_future()
        under_way.add(self.done)

    def step(self, _: object = None) -> None:
        try:
            waited = self._context.run(self._coro.send, None)
        except StopIteration:
            self._end(None)
            return
        except asyncio.CancelledError as exc:  # the future it waited for was cancelled
            self._end(exc)
            return
        except Exception as exc:  # _answer answers every Exception: a failed write, ...
            log.error("http_fast_lane_failed", error=type(exc).__name__, exc_info=exc)
            self._end(exc)
            return
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: on up
            self._end(exc)
            raise
        if getattr(waited, "_asyncio_future_blocking", False):  # an awaited future
            waited._asyncio_future_blocking = False
            waited.add_done_callback(self.step)
        elif waited is None:  # a bare yield (asyncio.sleep(0)): the next loop turn
            self._loop.call_soon(self.step)
        else:  # as a Task refuses it
            self._coro.close()
            error = RuntimeError(f"the fast lane's answer yielded {waited!r}")
            log.error("http_fast_lane_failed", error=str(error))
            self._end(error)

    def _end(self, exc: BaseException | None) -> None:
        self._under_way.discard(self.done)
        if exc is None or isinstance(exc, Exception):
            self.done.set_result(None)  # an error was logged here: nobody waits for it
        else:  # cancelled (or stopping the process): so is the answer
            self.done.cancel()


class ConnectionGuard:
    def __init__(self, *, header_timeout: float, body_timeout: float,
                 keepalive_timeout: float, max_connections: int) -> None:
        self._timeouts = {HEADERS: header_timeout, REQUEST: body_timeout,
                          IDLE: keepalive_timeout}
        self.max_connections = max_connections
        self._open: dict[asyncio.BaseTransport, _Connection] = {}
        self._unlogged: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}
        self._flush: dict[str, asyncio.TimerHandle] = {}
        # Deadlines are checked by one sweep (no timer per request): closes come at most this
        # late.
        self.sweep_interval = min(1.0, max(0.05, min(self._timeouts.values()) / 4))
        self._sweeper: asyncio.Task[None] | None = None
        # POST /v1/messages in plain form, answered without aiohttp (fastpost.py); set by
        # HttpApi.app() with the body limit.
        self.fast_post: FastPost | None = None
        self.max_body = 0
        self.answering: set[asyncio.Future[None]] = set()  # fast-lane answers under way
        self.fast = metrics.http_fast_lane.labels("fast")
        self.to_aiohttp = metrics.http_fast_lane.labels("aiohttp")

    @property
    def open(self) -> int:
        return len(self._open)

    def timeout(self, state: str) -> float:
        return self._timeouts[state]

    def runner_options(self) -> dict[str, Any]:
        """aiohttp's own keep-alive close, later than ours: a backstop only."""
        return {"keepalive_timeout": max(self._timeouts.values()) + 1.0}

    def publish(self) -> None:
        metrics.watch_buffer("http_connections", self.max_connections, lambda: self.open)

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(), name="http-connection-sweep")

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            now = time.monotonic()
            for conn in [c for c in self._open.values() if now - c.since >= self.sweep_interval]:
                reason = conn.overdue(now)
                if reason is not None:
                    self._open.pop(conn.transport, None)  # type: ignore[arg-type]
                    conn.close(reason)

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Connection(self, inner())

    # -- admission --------------------------------------------------------------------------

    def admit(self, conn: _Connection) -> bool:
        assert conn.transport is not None
        if len(self._open) >= self.max_connections:
            victim = min((c for c in self._open.values() if c.state != REQUEST),
                         key=lambda c: c.since, default=None)
            if victim is None:
                self.closed("refused")
                conn.transport.write(REFUSAL)
                conn.transport.close()
                return False
            self._open.pop(victim.transport)  # type: ignore[arg-type]
            victim.close("evicted")
        self._open[conn.transport] = conn
        return True

    def forget(self, conn: _Connection) -> None:
        if conn.transport is not None and self._open.get(conn.transport) is conn:
            del self._open[conn.transport]

    # -- requests ---------------------------------------------------------------------------

    @web.middleware
    async def middleware(
        self, request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        conn = self._open.get(request.transport) if request.transport is not None else None
        if conn is None:
            return await handler(request)
        conn.enter(REQUEST, request.content if request.body_exists else None)
        try:
            return await handler(request)
        except ConnectionResetError:
            # Its body stopped: closed here at the body timeout, or by the peer. Nothing can
            # be answered; without this aiohttp logs a traceback for each (a log flood).
            if conn.transport is None or not conn.transport.is_closing():
                raise
            return web.Response(status=408)
        finally:
            conn.leave_request()

    # -- accounting -------------------------------------------------------------------------

    def closed(self, reason: str) -> None:
        """Count a close or refusal; log the first in a window at once, the rest at its end."""
        metrics.http_connections_closed.labels(reason).inc()
        self._unlogged[reason] += 1
        now = time.monotonic()
        if now - self._logged_at.get(reason, -LOG_WINDOW) >= LOG_WINDOW:
            self._log(reason)
        elif reason not in self._flush:
            wait = self._logged_at[reason] + LOG_WINDOW - now
            self._flush[reason] = asyncio.get_running_loop().call_later(wait, self._log, reason)

    def _log(self, reason: str) -> None:
        self._flush.pop(reason, None)
        count = self._unlogged.pop(reason, 0)
        if not count:
            return
        self._logged_at[reason] = time.monotonic()
        fields: dict[str, Any] = {"reason": reason, "count": count, "open": len(self._open),
                                  "window_seconds": LOG_WINDOW}
        if reason in ("evicted", "refused"):
            log.warning("http_connection_cap", max_connections=self.max_connections, **fields)
        else:
            log.info("http_connections_timed_out",
                     timeout=self._timeouts[_STATE_OF[reason]], **fields)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for handle in self._flush.values():
            handle.cancel()
        for reason in list(self._flush):
            self._log(reason)


_STATE_OF = {"header_timeout": HEADERS, "body_timeout": REQUEST, "idle_timeout": IDLE}


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through a ConnectionGuard. It keeps its own copy of
    what it was given rather than reading TCPSite's private fields; `_server` is the one
    attribute BaseSite asks its subclasses to set (its `stop` closes it)."""

    def __init__(self, guard: ConnectionGuard, runner: web.BaseRunner, host: str, port: int,
                 *, ssl_context: ssl.SSLContext | None = None, backlog: int = 128,
                 reuse_address: bool | None = None, reuse_port: bool | None = None) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self.guard = guard
        self.handler = runner.server
        self.host, self.port = host, port
        self.tls = ssl_context
        self.listen_backlog = backlog
        self.reuse_address, self.reuse_port = reuse_address, reuse_port

    @property
    def name(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host or '0.0.0.0'}:{self.port}"

    async def start(self) -> None:
        await super().start()  # registers the site with its runner
        self.guard.start()
        assert self.handler is not None
        # A TLS handshake counts as headers: a peer that stalls it goes as soon.
        handshake: dict[str, Any] = (
            {"ssl_handshake_timeout": self.guard.timeout(HEADERS)} if self.tls else {})
        server = await asyncio.get_running_loop().create_server(
            self.guard.factory(self.handler), self.host, self.port, ssl=self.tls,
            backlog=self.listen_backlog, reuse_address=self.reuse_address,
            reuse_port=self.reuse_port, **handshake,
        )
        self._server = server
        if server.sockets:
            self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening, then let the fast lane's answers under way finish (aiohttp lets
        its own requests finish after this)."""
        await super().stop()
        if self.guard.answering:
            await asyncio.wait(set(self.guard.answering), timeout=FAST_DRAIN)


FD_RESERVE = 256  # file descriptors kept for everything else (SMPP, store, callbacks, ...)


def guard_for(http: HttpConfig) -> ConnectionGuard:
    """The guard an [http] section configures, its cap within the file descriptor limit."""
    return ConnectionGuard(header_timeout=http.header_timeout, body_timeout=http.body_timeout,
                           keepalive_timeout=http.keepalive_timeout,
                           max_connections=fd_bounded(http.max_connections))


def fd_bounded(max_connections: int) -> int:
    """Raise the soft RLIMIT_NOFILE (up to the hard one) so that max_connections and
    FD_RESERVE fit; when they cannot, a lower cap, with a warning: at the descriptor limit
    nothing at all could be accepted (health checks, SMPP binds, the store)."""
    need = max_connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft == resource.RLIM_INFINITY or soft >= need:
        return max_connections
    cap = max(1, soft - FD_RESERVE)
    log.warning("http_max_connections_lowered", configured=max_connections, used=cap,
                nofile_limit=soft, why="the file descriptor limit leaves no room for more")
    return cap

"""Thin asyncio adapter for SmppSession: feeds it bytes, writes what it returns, owns one timer.

Responses, timeouts and aborts of requests sent with `request()` resolve that request's future
(the future is the session's request context); every other event goes to `on_event`.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
from collections.abc import Callable
from typing import Any, cast

from .session import (
    BindFailed,
    BindMode,
    Bound,
    Event,
    Pdu,
    RequestAborted,
    RequestTimedOut,
    ResponseReceived,
    Role,
    SessionClosed,
    SessionState,
    SmppSession,
)


class RequestTimeout(Exception):
    """No response within the session's response_timeout."""


class ConnectionLost(Exception):
    """The connection closed with the request unanswered."""


class BindError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"bind failed with command_status 0x{status:08X}")
        self.status = status


EventHandler = Callable[["SmppConnection", Event], None]

# Seconds a closing connection may take to hand its last bytes to a peer that does not read;
# then it is aborted, so that a stalled peer cannot hold the connection and its buffer.
CLOSE_GRACE = 2.0
# Answers queued by one read that are written at once rather than at the end of the loop turn.
FLUSH_NOW = 64 * 1024


class SmppConnection(asyncio.Protocol):
    def __init__(self, session: SmppSession, on_event: EventHandler | None = None) -> None:
        self.session = session
        self.on_event = on_event
        # Called in the same turn as a response, timeout or abort that freed window slots, so
        # the owner can send the next requests at once.
        self.on_window_free: Callable[[], None] | None = None
        # Called once the peer's address is known (connection_made), e.g. to cap connections.
        self.on_connected: Callable[[SmppConnection], None] | None = None
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[str] = self._loop.create_future()
        self.peername = ""
        self.writable = True
        self._transport: asyncio.Transport | None = None
        self._close_reason: str | None = None
        self._closed_notified = False
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when: float | None = None
        # The shortest timeout a send or read can start (see _rearm_if_sooner).
        self._min_gap = min(session.response_timeout, session.bind_timeout,
                            session.enquire_link_interval,
                            session.idle_timeout if session.idle_timeout is not None
                            else session.response_timeout)

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they have the same interface.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peername = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._flush()
        self._rearm()
        if self.on_connected is not None:
            self.on_connected(self)

    def data_received(self, data: bytes) -> None:
        self._process(self.session.receive_data(data, self._loop.time()))

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._cancel_timer()
        reason = self._close_reason or (f"connection lost: {exc!r}" if exc else "connection lost")
        self._close_reason = reason
        events = self.session.abort()
        if not self._closed_notified:
            events.append(SessionClosed(reason))
        self._process(events)
        if not self.closed.done():
            self.closed.set_result(reason)

    def pause_writing(self) -> None:
        # The peer does not read what we send: stop reading what it sends (each request read
        # queues an answer), until its side drains below the low-water mark.
        self.writable = False
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    def resume_writing(self) -> None:
        self.writable = True
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    # -- API ---------------------------------------------------------------------------------

    def request(self, pdu: Pdu, future: asyncio.Future[Any] | None = None) -> asyncio.Future[Any]:
        """Send a request; the future (``future`` if given) gets the response PDU (any status,
        or a generic_nack), or RequestTimeout / ConnectionLost."""
        if future is None:
            future = self._loop.create_future()
        self.session.send_request(pdu, self._loop.time(), future)  # WindowFull / NotBound
        self._after_send()
        return future

    def respond(self, request: Pdu, response: Pdu) -> None:
        self.session.send_response(request, response)
        self._schedule_flush()

    def respond_deliver(self, request: Pdu, status: int = 0) -> None:
        """respond(request, DeliverSmResp(command_status=status)), without building it."""
        self.session.send_deliver_resp(request.sequence_num, status)
        self._schedule_flush()

    def start_bind(
        self, mode: BindMode, system_id: str, password: str, system_type: str = ""
    ) -> None:
        """CLIENT: send the bind; Bound / BindFailed arrive through on_event."""
        self.session.start_bind(mode, system_id, password, self._loop.time(), system_type)
        self._after_send()

    def accept_bind(self, request: Pdu, system_id: str) -> None:
        """SERVER: answer a BindRequested OK; on_event gets Bound."""
        events = self.session.accept_bind(request, system_id, self._loop.time())
        self._after_send()
        self._process(events)

    def reject_bind(self, request: Pdu, status: int) -> None:
        self.session.reject_bind(request, status, self._loop.time())
        self._after_send()

    async def unbind(self, timeout: float = 5.0) -> None:
        """Polite close: unbind, wait for unbind_resp (or timeout), close."""
        if self.session.state is SessionState.BOUND and self._transport is not None:
            self.session.unbind(self._loop.time())
            self._after_send()
            try:
                await asyncio.wait_for(asyncio.shield(self.closed), timeout)
                return
            except TimeoutError:
                pass
        self.close()
        await self.closed

    def close(self) -> None:
        """Hard close: flushes what is queued and closes the connection."""
        if self._close_reason is None:
            self._close_reason = "closed locally"
        if self._transport is not None:
            self._close_transport()
        elif not self.closed.done():
            # Never connected: nothing will call connection_lost.
            self.connection_lost(None)

    # -- internals ---------------------------------------------------------------------------

    def _after_send(self) -> None:
        self._schedule_flush()
        self._rearm_if_sooner()

    def _rearm_if_sooner(self) -> None:
        """_rearm, skipped while the timer is due no later than any deadline this turn can have
        added: what a send or a read adds is `now` plus one of the session's timeouts (a
        request's response, enquire_link after the last read, idle), never sooner. Saves a
        deadline walk per PDU (about 1.5 us each, two a message)."""
        when = self._timer_when
        if when is None or when > self._loop.time() + self._min_gap:
            self._rearm()

    def _process(self, events: list[Event]) -> None:
        pending = self.session.pending_output
        if pending >= FLUSH_NOW:
            # Many answers from one read: write them now, so that a peer that does not read
            # pauses our reading at once (uvloop reads up to 2 MB per loop turn).
            self._flush()
        elif pending:  # e.g. automatic enquire_link_resp, nacks
            self._schedule_flush()
        freed = False
        for event in events:
            if isinstance(event, ResponseReceived):
                freed = True
                fut = event.context
                if isinstance(fut, asyncio.Future) and not fut.done():
                    fut.set_result(event.pdu)
            elif isinstance(event, RequestTimedOut):
                freed = True
                fut = event.context
                if isinstance(fut, asyncio.Future) and not fut.done():
                    fut.set_exception(RequestTimeout(f"sequence_num {event.sequence_num}"))
            elif isinstance(event, RequestAborted):
                freed = True
                fut = event.context
                if isinstance(fut, asyncio.Future) and not fut.done():
                    fut.set_exception(ConnectionLost(self._close_reason or "connection lost"))
            else:
                if isinstance(event, SessionClosed):
                    self._on_session_closed(event.reason)
                self._emit(event)
        if freed and self.on_window_free is not None:
            self.on_window_free()
        if self._transport is not None:
            self._rearm_if_sooner()

    def _on_session_closed(self, reason: str) -> None:
        self._closed_notified = True
        if self._close_reason is None:
            self._close_reason = reason
        if self._transport is not None:
            self._close_transport()  # e.g. our unbind_resp or generic_nack goes out first

    def _close_transport(self) -> None:
        """Flush and close; abort if the peer has not taken the rest within CLOSE_GRACE."""
        transport = self._transport
        if transport is None:
            return
        self._flush()
        transport.close()
        if transport.get_write_buffer_size() > 0:
            self._loop.call_later(CLOSE_GRACE, self._abort_if_open, transport)

    def _abort_if_open(self, transport: asyncio.Transport) -> None:
        if self._transport is transport:
            transport.abort()

    def _emit(self, event: Event) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(self, event)
        except Exception as exc:  # one bad handler must not stall the other events
            self._loop.call_exception_handler(
                {"message": "SMPP on_event handler failed", "exception": exc, "protocol": self}
            )

    def _schedule_flush(self) -> None:
        # Coalesce: everything queued during this loop turn goes out in one write.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self.session.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _rearm(self) -> None:
        deadline = self.session.next_deadline()
        if deadline is None:
            self._cancel_timer()
            return
        # Only move the timer earlier; a later deadline is picked up when the timer fires. This
        # keeps timer churn off the per-PDU path.
        if self._timer is not None and self._timer_when is not None:
            if self._timer_when <= deadline:
                return
            self._timer.cancel()
        self._timer_when = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_when = None

    def _on_timer(self) -> None:
        when = self._timer_when
        self._timer = None
        self._timer_when = None
        # asyncio may fire a timer up to its clock resolution early.
        now = self._loop.time()
        if when is not None and now < when:
            now = when
        self._process(self.session.handle_timers(now))


async def open_client(
    host: str,
    port: int,
    *,
    mode: BindMode,
    system_id: str,
    password: str,
    window: int = 10,
    response_timeout: float = 10.0,
    enquire_link_interval: float = 30.0,
    bind_timeout: float = 10.0,
    system_type: str = "",
    on_event: EventHandler | None = None,
    ssl: _ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    lean_receipts: bool = False,
) -> SmppConnection:
    """Connect and bind. Raises BindError, TimeoutError (bind timeout) or ConnectionLost; with
    ``ssl`` the connection is TLS (``server_hostname``: SNI and the name to verify, default
    ``host``), and a failed handshake raises ssl.SSLError. ``lean_receipts``: see
    SmppSession."""
    loop = asyncio.get_running_loop()
    bind_result: asyncio.Future[Event] = loop.create_future()

    def handler(conn: SmppConnection, event: Event) -> None:
        # A tuple, not `Bound | BindFailed` (a union object made per event).
        if isinstance(event, (Bound, BindFailed)) and not bind_result.done():
            bind_result.set_result(event)
        if on_event is not None:
            on_event(conn, event)

    session = SmppSession(
        Role.CLIENT,
        now=loop.time(),
        window=window,
        response_timeout=response_timeout,
        enquire_link_interval=enquire_link_interval,
        bind_timeout=bind_timeout,
        lean_receipts=lean_receipts,
    )
    tls: dict[str, Any] = {}
    if ssl is not None:
        tls = {"ssl": ssl, "server_hostname": server_hostname or host}
    _, conn = await asyncio.wait_for(
        loop.create_connection(lambda: SmppConnection(session, handler), host, port, **tls),
        bind_timeout,
    )
    conn.start_bind(mode, system_id, password, system_type)
    # The session's own bind timer closes the connection; the outer wait is a safety net.
    waiting: set[asyncio.Future[Any]] = {bind_result, conn.closed}
    done, _ = await asyncio.wait(
        waiting, timeout=bind_timeout + 1.0,
        return_when=asyncio.FIRST_COMPLETED,
    )
    if bind_result in done:
        result = bind_result.result()
        if isinstance(result, Bound):
            conn.on_event = on_event  # bound: the caller's handler takes events directly
            return conn
        conn.close()
        assert isinstance(result, BindFailed)
        raise BindError(result.status)
    bind_result.cancel()
    conn.close()
    if conn.closed.done() and conn.closed.result() != "bind timeout":
        raise ConnectionLost(conn.closed.result())
    raise TimeoutError("bind timeout")


async def start_server(
    host: str, port: int, connection_factory: Callable[[], SmppConnection],
    ssl: _ssl.SSLContext | None = None,
) -> asyncio.Server:
    """Listen; port 0 picks a free port (read server.sockets[0].getsockname()[1]). With
    ``ssl`` every connection is TLS."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(connection_factory, host, port, ssl=ssl)

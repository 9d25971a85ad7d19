"""Smsc: the SMPP server (listening, TLS, stopping), its connections, binds and the requests
it routes to the submit_sm / query_sm layer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiosmpplib import DeliverSm, DeliverSmResp, GenericNack, SubmitSm

from aggregator.smpp.querysm import QuerySm
from aggregator.smpp.session import (
    BindRequested,
    Bound,
    ProtocolError,
    RequestReceived,
    Role,
    SessionClosed,
    SmppSession,
)
from aggregator.smpp.status import CommandStatus
from aggregator.smpp.transport import SmppConnection, start_server
from aggregator.tls import server_context
from simulator.smsc.pdus import response
from simulator.smsc.profile import SmscProfile
from simulator.smsc.records import CAN_RECEIVE, BindStats, Peer
from simulator.smsc.submits import SmscSubmits

log = logging.getLogger("simulator.smsc")

SMSC_SYSTEM_ID = "smsagg-sim"


class Smsc(SmscSubmits):
    """SMPP server simulating an operator SMSC with a configurable profile.

    `profile` is a plain mutable attribute: assign a new SmscProfile (validated on creation)
    or change its fields while the SMSC runs, and the next submit_sm or bind follows it.
    Tests use this to flip a healthy operator to failing and back. Exceptions: `seed` is read
    once (here), `window` when a connection opens, and a change of `disconnect_every` is seen
    at the next due drop, or within DISCONNECT_POLL seconds when it was off. `handsets` is the
    profile's HandsetBook (read and set through either), looked up at each submit_sm.
    With `tls_cert` and `tls_key` (PEM files, loaded by start()) it serves SMPP over TLS only.
    """

    def __init__(
        self, profile: SmscProfile | None = None, host: str = "127.0.0.1", port: int = 0,
        *, tls_cert: str | None = None, tls_key: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        # TLS only (like a provider's TLS port) when given: PEM certificate chain and its key.
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        super().__init__(profile if profile is not None else SmscProfile())
        self._handlers: dict[type[Any], Callable[[SmppConnection, Any], None]] = {
            BindRequested: self._on_bind_requested,
            Bound: self._on_bound,
            RequestReceived: self._on_request,
            SessionClosed: self._on_closed,
            ProtocolError: self._on_protocol_error,
        }

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        tls = None
        if self.tls_cert is not None and self.tls_key is not None:
            tls = server_context(self.tls_cert, self.tls_key)  # TlsFileError: a ValueError
        self._server = await start_server(self.host, self.port, self._new_connection, ssl=tls)
        sockets = self._server.sockets
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self._stopping = False
        if not self._ticking:  # it still runs after abort()
            self._ticking = True
            self._disconnect_tick()
        log.info("smsc listening on %s:%d%s", self.host, self.port, " (TLS)" if tls else "")

    async def stop(self, timeout: float = 2.0) -> None:
        """Stop listening, unbind every session (closing those that do not answer)."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        self._ticking = False
        self._paused = False
        self._held.clear()
        conns = list(self._peers)
        if conns:
            await asyncio.gather(
                *(self._unbind(conn, timeout) for conn in conns), return_exceptions=True
            )
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout)
            self._server = None

    async def _unbind(self, conn: SmppConnection, timeout: float) -> None:
        try:
            await conn.unbind(timeout=timeout)  # closes unbound sessions right away
        except Exception as exc:  # the peer may be gone or misbehaving: close anyway
            log.debug("unbind of %s failed: %r", conn.peername, exc)
            conn.close()

    def _new_connection(self) -> SmppConnection:
        session = SmppSession(Role.SERVER, now=self._now(), window=self.profile.window)
        conn = SmppConnection(session, on_event=self._on_event)
        self._peers[conn] = Peer(conn)
        return conn

    def _on_event(self, conn: SmppConnection, event: object) -> None:
        handler = self._handlers.get(type(event))
        if handler is None:
            return
        try:
            handler(conn, event)
        except Exception:  # a bug or a misbehaving client must not take the server down
            log.exception("smsc: error handling %s from %s", type(event).__name__, conn.peername)

    def _on_bind_requested(self, conn: SmppConnection, event: BindRequested) -> None:
        request = event.pdu
        if self.profile.refuse_binds:
            status: int | None = CommandStatus.ESME_RBINDFAIL
        else:
            status = self._check_credentials(request.system_id, request.password)
        if status is None:
            conn.accept_bind(request, SMSC_SYSTEM_ID)  # on_event gets Bound from within
        else:
            self.bind_failures += 1
            conn.reject_bind(request, status)

    def _check_credentials(self, system_id: str, password: str) -> int | None:
        wanted_id, wanted_password = self.profile.system_id, self.profile.password
        if wanted_id is not None and system_id != wanted_id:
            return CommandStatus.ESME_RINVSYSID
        if wanted_password is not None and password != wanted_password:
            return CommandStatus.ESME_RINVPASWD
        return None

    def _on_bound(self, conn: SmppConnection, event: Bound) -> None:
        peer = self._peers.get(conn)
        if peer is None:
            peer = self._peers[conn] = Peer(conn)
        self.binds_total += 1
        bind_id = f"b{self.binds_total}"
        peer.stats = BindStats(bind_id, event.system_id, mode=event.mode.value)
        self.bind_stats[bind_id] = peer.stats
        log.info("smsc: %s bound as %s (%s) from %s",
                 event.system_id, event.mode.value, bind_id, conn.peername)
        if event.mode in CAN_RECEIVE:
            self._drain(event.system_id)
        self._notify()

    def _on_closed(self, conn: SmppConnection, event: SessionClosed) -> None:
        peer = self._peers.pop(conn, None)
        if peer is not None and peer.stats is not None:
            peer.stats.bound = False
            peer.stats.outstanding = 0
            peer.stats.close_reason = event.reason
        log.info("smsc: session from %s closed: %s", conn.peername, event.reason)
        self._notify()

    def _on_protocol_error(self, conn: SmppConnection, event: ProtocolError) -> None:
        log.warning("smsc: protocol error from %s: %s", conn.peername, event.reason)

    def _on_request(self, conn: SmppConnection, event: RequestReceived) -> None:
        pdu = event.pdu
        if isinstance(pdu, DeliverSm):  # an SMSC does not take deliver_sm from an ESME
            conn.respond(pdu, response(DeliverSmResp, CommandStatus.ESME_RINVCMDID))
        elif isinstance(pdu, SubmitSm):
            self._on_submit(conn, pdu, event.raw)
        elif isinstance(pdu, QuerySm):
            self._on_query(conn, pdu)
        else:
            conn.respond(pdu, response(GenericNack, CommandStatus.ESME_RINVCMDID))

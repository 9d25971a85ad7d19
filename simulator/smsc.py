"""Operator SMSC simulator: an SMPP server built on aggregator.smpp's session and transport.

It answers submit_sm (after a configurable latency, or ESME_RTHROTTLED above a rate) and sends
delivery receipts back as deliver_sm, in the text form and as TLVs. Everything runs on the event
loop: timers are loop.call_later handles, never a sleeping task per message.

Faults for tests (all off by default, see SmscProfile): error answers, dropped submits (no answer
at all), link drops after N submits per session or every T seconds, refused binds and latency
jitter. `Smsc.profile` may be replaced or changed at run time; see Smsc. Whole-SMSC faults are
methods: `abort()` crashes it (start() restarts it on the same port) and `pause()` / `resume()`
hang it and bring it back.

Handsets (simulator.handsets, `SmscProfile.handsets`): per destination number or prefix, a
message is delivered, unreachable (UNDELIV), roaming (DELIVRD after an extra roaming_delay) or
invalid (ESME_RINVDSTADR at once); a handset with a reply answers each message it receives with
a mobile-originated deliver_sm, queued and retried like a receipt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import struct
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from aiosmpplib import (
    DeliverSm,
    DeliverSmResp,
    GenericNack,
    PhoneNumber,
    SubmitSm,
    SubmitSmResp,
)
from aiosmpplib.state import NPI, TON

from aggregator.ratelimit import TokenBucket
from aggregator.smpp import querysm as query
from aggregator.smpp.deliver_pdu import mo_pdu, receipt_pdu
from aggregator.smpp.fields import RawSubmit, parse_submit
from aggregator.smpp.querysm import DELIVERED, UNDELIVERABLE, QuerySm, QuerySmResp
from aggregator.smpp.session import (
    BindMode,
    BindRequested,
    Bound,
    ProtocolError,
    RequestReceived,
    Role,
    SessionClosed,
    SessionError,
    SessionState,
    SmppSession,
)
from aggregator.smpp.status import CommandStatus
from aggregator.smpp.transport import ConnectionLost, SmppConnection, start_server
from aggregator.text import ESM_CLASS_UDHI, parse_udh
from aggregator.tls import server_context
from simulator.handsets import Handset, HandsetBook

log = logging.getLogger(__name__)

SMSC_SYSTEM_ID = "smsagg-sim"
RECEIVED_MAX = 200_000
PENDING_MAX = 100_000
RECEIPT_RETRIES = 3
SUBMIT_SM_RESP = 0x80000004
# How often a disabled disconnect_every is checked for having been enabled at run time.
DISCONNECT_POLL = 0.25
_CAN_RECEIVE = (BindMode.RECEIVER, BindMode.TRANSCEIVER)
_HEADER = struct.Struct("!IIII")


@dataclass(slots=True)
class SmscProfile:
    """How the simulated SMSC behaves. The defaults are a healthy, fast operator.

    Fault fields: of the submit_sm that are not throttled, a share `drop_ratio` gets no answer
    at all (the client times out) and a share `error_ratio` is answered with `error_status`
    (after the latency, and without a receipt); drop_ratio + error_ratio must not exceed 1.
    `disconnect_after` closes a session's TCP connection (no unbind) when that session sends
    its Nth submit_sm, which stays unanswered, as do its submits still waiting for their
    latency. `disconnect_every` closes every bound session's connection every T seconds.
    `refuse_binds` answers every bind with ESME_RBINDFAIL. `latency_jitter` spreads the
    answer latency uniformly over [latency - jitter, latency + jitter], floored at 0.
    """

    latency: float = 0.0  # seconds before answering submit_sm
    receipt_delay: float = 0.0  # seconds after the submit_sm_resp before the receipt is sent
    undeliverable_ratio: float = 0.0  # share of receipts with stat:UNDELIV (state 5, err:001)
    max_tps: float | None = None  # submits/s per system_id above which: ESME_RTHROTTLED
    receipts: bool = True
    # "same": the receipt carries the submit_sm_resp id (hex); "decimal": that number in decimal
    receipt_id_format: str = "same"
    system_id: str | None = None  # when set, binds with another system_id get ESME_RINVSYSID
    password: str | None = None  # when set, binds with another password get ESME_RINVPASWD
    window: int = 100  # our window for deliver_sm receipts per session
    seed: int | None = None  # seeds the undeliverable choice, for reproducible runs
    # Like a real SMSC, send a receipt only if registered_delivery asks for one
    # (bits 1-0: 01 always, 10 on failure only); False sends one for every submit.
    honor_registered_delivery: bool = True
    # Each receipt on the next bound receiver/transceiver session of the system_id in turn,
    # not the one its submit came on: real SMSCs deliver on any bind of the system_id, so a
    # receipt for one smsagg instance's submit may reach another instance.
    receipts_any_bind: bool = False
    error_ratio: float = 0.0  # share of submit_sm answered with error_status (no receipt)
    error_status: int = int(CommandStatus.ESME_RSYSERR)
    drop_ratio: float = 0.0  # share of submit_sm never answered (counted in dropped_total)
    disconnect_after: int | None = None  # close a session's connection at its Nth submit_sm
    disconnect_every: float | None = None  # close every bound session every T seconds
    refuse_binds: bool = False  # answer every bind with ESME_RBINDFAIL (0x0D)
    latency_jitter: float = 0.0  # seconds; latency uniform in [latency -/+ jitter], floor 0
    # What happens per destination number/prefix, and which handsets reply (simulator.handsets);
    # None: every number is a handset that takes the message and does not reply.
    handsets: HandsetBook | None = None
    roaming_delay: float = 5.0  # seconds added to receipt_delay for "roaming" handsets
    # Receipts that never come: this share of the receipts asked for is never sent (counted in
    # receipts_lost); query_sm still tells the message's state.
    lose_receipts: float = 0.0
    # False: query_sm gets generic_nack ESME_RINVCMDID, like an SMSC that does not take it.
    answer_query_sm: bool = True

    def __post_init__(self) -> None:
        if self.receipt_id_format not in ("same", "decimal"):
            raise ValueError(f"receipt_id_format must be 'same' or 'decimal', "
                             f"not {self.receipt_id_format!r}")
        if not 0.0 <= self.undeliverable_ratio <= 1.0:
            raise ValueError("undeliverable_ratio must be within 0..1")
        if self.max_tps is not None and self.max_tps <= 0:
            raise ValueError("max_tps must be positive")
        if self.window < 1:
            raise ValueError("window must be at least 1")
        for name in ("latency", "receipt_delay", "latency_jitter", "roaming_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("error_ratio", "drop_ratio", "lose_receipts"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1")
        if self.error_ratio + self.drop_ratio > 1.0:
            raise ValueError("error_ratio + drop_ratio must not exceed 1")
        if not 0 < self.error_status <= 0xFFFFFFFF:
            raise ValueError("error_status must be a non-zero 32-bit command_status")
        if self.disconnect_after is not None and self.disconnect_after < 1:
            raise ValueError("disconnect_after must be at least 1")
        if self.disconnect_every is not None and self.disconnect_every <= 0:
            raise ValueError("disconnect_every must be positive")


@dataclass(slots=True)
class BindStats:
    bind_id: str
    system_id: str
    submits: int = 0
    max_outstanding: int = 0
    outstanding: int = 0  # submits received, not yet answered
    mode: str = ""
    bound: bool = True  # False once the session has closed
    close_reason: str = ""  # why it closed: "peer unbound" after a clean unbind from the client


@dataclass(slots=True)
class ReceivedSubmit:
    smsc_id: str
    source: str
    destination: str
    esm_class: int
    data_coding: int
    short_message: bytes  # raw octets, UDH included (re-encoded from the decoded PDU)
    bind_id: str
    received_at: float  # time.time()


@dataclass(slots=True)
class _Receipt:
    message_id: str
    system_id: str
    origin: SmppConnection | None  # preferred session: the one the submit came on
    source: PhoneNumber  # the submit's destination
    destination: PhoneNumber  # the submit's source
    submitted_at: float
    delivered: bool
    attempts: int = 0  # deliver_sm sent that timed out or were refused
    # Set: not a receipt but a handset's mobile-originated reply with this text (source: the
    # handset, destination: the sender it replies to); it shares the receipts' queue and retries.
    mo_text: str | None = None


@dataclass(slots=True)
class _Peer:
    """What we know about one connection; stats exists once it is bound."""

    conn: SmppConnection
    stats: BindStats | None = None


class _ErrorResp:
    """A bodiless submit_sm_resp with any command_status (aiosmpplib's takes only its enum).

    SMPP 3.4 leaves the body out of an error response; the client decodes it as such.
    """

    def __init__(self, status: int) -> None:
        self.status = status
        self.sequence_num = 0  # set by SmppSession.send_response

    def pdu(self) -> bytes:
        return _HEADER.pack(_HEADER.size, SUBMIT_SM_RESP, self.status, self.sequence_num)


@dataclass(slots=True)
class _Waiter:
    condition: Callable[[], bool]
    future: asyncio.Future[None]


class Smsc:
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
        self.profile = profile if profile is not None else SmscProfile()
        self.host = host
        self.port = port
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        # TLS only (like a provider's TLS port) when given: PEM certificate chain and its key.
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.submits_total = 0
        self.throttled_total = 0
        self.receipts_sent = 0
        self.receipts_acked = 0
        self.receipts_failed = 0  # given up after RECEIPT_RETRIES
        self.receipts_dropped = 0  # pushed out of the full pending queue
        self.binds_total = 0
        self.bind_failures = 0
        self.accepted_total = 0  # submits answered ESME_ROK (or about to be: latency)
        self.errors_total = 0  # answered with profile.error_status
        self.dropped_total = 0  # never answered (drop_ratio)
        self.disconnects_total = 0  # links dropped by disconnect_after/every, abort()
        self.invalid_total = 0  # answered ESME_RINVDSTADR: the handset is "invalid"
        self.mo_sent_total = 0  # handset replies (MO deliver_sm) sent, retries included
        self.mo_acked_total = 0
        self.mo_failed_total = 0  # given up after RECEIPT_RETRIES
        self.receipts_lost = 0  # not sent: lose_receipts
        self.queries_total = 0  # query_sm received
        self.queries_answered = 0  # answered with the message's state
        # Each accepted message's state for query_sm: (message_state, final time or 0), the
        # last RECEIVED_MAX.
        self._states: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self.bind_stats: dict[str, BindStats] = {}
        self._any_bind_turn = 0  # receipts_any_bind: whose turn it is
        self.receipts_elsewhere = 0  # receipts_any_bind: sent on a session not the submit's
        # The last RECEIVED_MAX (up to 10% more: trimmed in chunks so appends stay O(1)).
        self.received: list[ReceivedSubmit] = []
        self._peers: dict[SmppConnection, _Peer] = {}
        # Receipts waiting for a bound RX/TRX session with a free slot, per system_id.
        self._pending: dict[str, deque[_Receipt]] = {}
        self._pending_count = 0
        self._buckets: dict[str, TokenBucket] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._waiters: list[_Waiter] = []
        self._rng = random.Random(self.profile.seed)
        # Random high part so that ids differ between runs (as a restarted SMSC's would).
        self._id_base = secrets.randbits(24) << 40
        self._id_counter = 0
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._ticking = False  # the _disconnect_tick timer chain runs
        self._paused = False
        self._held: list[tuple[Callable[..., None], tuple[Any, ...]]] = []  # answers pause() held
        self._last_link_drop: float | None = None  # disconnect_every: base of the next drop
        self._handlers: dict[type[Any], Callable[[SmppConnection, Any], None]] = {
            BindRequested: self._on_bind_requested,
            Bound: self._on_bound,
            RequestReceived: self._on_request,
            SessionClosed: self._on_closed,
            ProtocolError: self._on_protocol_error,
        }

    @property
    def handsets(self) -> HandsetBook | None:
        return self.profile.handsets

    @handsets.setter
    def handsets(self, book: HandsetBook | None) -> None:
        self.profile.handsets = book

    # -- lifecycle ----------------------------------------------------------------------------

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

    def abort(self) -> int:
        """Crash: close the listener and every connection at once, with no unbind and no answer
        to the submit_sm still outstanding. Returns how many submit_sm were left unanswered
        (received and recorded, no submit_sm_resp sent): a client sends those again.

        What an operator keeps on disk survives for a restart with start() on the same port: the
        counters, `received`, and the receipts not sent yet (they go out on the next binds).
        """
        if self._server is not None:
            self._server.close()
            self._server = None
        unanswered = sum(p.stats.outstanding for p in self._peers.values() if p.stats is not None)
        self._paused = False
        self._held.clear()  # their connections go now
        for conn in list(self._peers):
            self._drop_link(conn, "abort")
        self._notify()
        log.info("smsc: aborted with %d submits unanswered", unanswered)
        return unanswered

    def pause(self) -> None:
        """Hang: connections stay open and submit_sm are still read (and recorded) but none is
        answered, and no receipt is sent, until resume(). The session layer still answers
        enquire_link, so the links look alive."""
        self._paused = True

    def resume(self) -> int:
        """End pause(): send the held answers now (late: the client has probably given up on
        them and sends those messages again) and the queued receipts. Returns how many submit_sm
        answers were held."""
        self._paused = False
        held, self._held = self._held, []
        for callback, args in held:
            callback(*args)
        for system_id in list(self._pending):
            self._drain(system_id)
        self._notify()
        return len(held)

    def _hold(self, callback: Callable[..., None], *args: Any) -> bool:
        """While paused, keep this answer for resume() and return True."""
        if self._paused:
            self._held.append((callback, args))
        return self._paused

    async def _unbind(self, conn: SmppConnection, timeout: float) -> None:
        try:
            await conn.unbind(timeout=timeout)  # closes unbound sessions right away
        except Exception as exc:  # the peer may be gone or misbehaving: close anyway
            log.debug("unbind of %s failed: %r", conn.peername, exc)
            conn.close()

    # -- stats --------------------------------------------------------------------------------

    @property
    def max_outstanding(self) -> int:
        return max((s.max_outstanding for s in self.bind_stats.values()), default=0)

    @property
    def pending_receipts(self) -> int:
        return self._pending_count

    def summary(self) -> dict[str, Any]:
        return {
            "submits": self.submits_total,
            "accepted": self.accepted_total,
            "throttled": self.throttled_total,
            "errors": self.errors_total,
            "dropped": self.dropped_total,
            "disconnects": self.disconnects_total,
            "receipts_sent": self.receipts_sent,
            "receipts_acked": self.receipts_acked,
            "receipts_failed": self.receipts_failed,
            "receipts_dropped": self.receipts_dropped,
            "receipts_pending": self._pending_count,
            "invalid": self.invalid_total,
            "mo_sent": self.mo_sent_total,
            "mo_acked": self.mo_acked_total,
            "mo_failed": self.mo_failed_total,
            "receipts_lost": self.receipts_lost,
            "queries": self.queries_total,
            "queries_answered": self.queries_answered,
            "binds": self.binds_total,
            "bind_failures": self.bind_failures,
            "active_binds": sum(1 for s in self.bind_stats.values() if s.bound),
            "max_outstanding": self.max_outstanding,
            "bind_stats": [asdict(s) for s in self.bind_stats.values()],
        }

    async def wait_for_submits(self, n: int, timeout: float) -> None:
        """Wait until submits_total >= n; raises TimeoutError after `timeout` seconds."""
        await self.wait_until(lambda: self.submits_total >= n, timeout)

    async def wait_until(self, condition: Callable[[], bool], timeout: float) -> None:
        """Wait until `condition()` holds; it is re-checked whenever a counter changes."""
        if condition():
            return
        waiter = _Waiter(condition, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.future.done() and waiter.condition():
                waiter.future.set_result(None)

    # -- connections and events -----------------------------------------------------------------

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _new_connection(self) -> SmppConnection:
        session = SmppSession(Role.SERVER, now=self._now(), window=self.profile.window)
        conn = SmppConnection(session, on_event=self._on_event)
        self._peers[conn] = _Peer(conn)
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
            peer = self._peers[conn] = _Peer(conn)
        self.binds_total += 1
        bind_id = f"b{self.binds_total}"
        peer.stats = BindStats(bind_id, event.system_id, mode=event.mode.value)
        self.bind_stats[bind_id] = peer.stats
        log.info("smsc: %s bound as %s (%s) from %s",
                 event.system_id, event.mode.value, bind_id, conn.peername)
        if event.mode in _CAN_RECEIVE:
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
            conn.respond(pdu, _resp(DeliverSmResp, CommandStatus.ESME_RINVCMDID))
        elif isinstance(pdu, SubmitSm):
            self._on_submit(conn, pdu, event.raw)
        elif isinstance(pdu, QuerySm):
            self._on_query(conn, pdu)
        else:
            conn.respond(pdu, _resp(GenericNack, CommandStatus.ESME_RINVCMDID))

    # -- query_sm -------------------------------------------------------------------------------

    def _set_state(self, message_id: str, state: int) -> None:
        states = self._states
        states[message_id] = (state, time.time() if state != query.ENROUTE else 0.0)
        states.move_to_end(message_id)
        if len(states) > RECEIVED_MAX:
            states.popitem(last=False)

    def _on_query(self, conn: SmppConnection, pdu: QuerySm) -> None:
        """The state of a message this SMSC accepted; ESME_RINVMSGID for an id it does not
        know (or no longer keeps)."""
        self.queries_total += 1
        if not self.profile.answer_query_sm:
            self._respond(conn, pdu, _resp(GenericNack, CommandStatus.ESME_RINVCMDID))
        else:
            known = self._states.get(pdu.message_id)
            if known is None:
                resp = QuerySmResp(command_status=CommandStatus.ESME_RINVMSGID)
            else:
                state, done_at = known
                self.queries_answered += 1
                resp = QuerySmResp(pdu.message_id, query.final_date(done_at) if done_at else "",
                                   state, 0 if state != query.UNDELIVERABLE else 1)
            self._respond(conn, pdu, resp)
        self._notify()

    # -- submit_sm ------------------------------------------------------------------------------

    def _on_submit(self, conn: SmppConnection, pdu: Any, raw: bytes) -> None:
        peer = self._peers.get(conn)
        stats = peer.stats if peer is not None else None
        if stats is None:  # the session lets only bound peers submit; be safe anyway
            conn.respond(pdu, _resp(SubmitSmResp, CommandStatus.ESME_RINVBNDSTS))
            return
        try:
            fields = parse_submit(raw)  # the octets as sent: aiosmpplib keeps only the text
        except ValueError as exc:  # e.g. both short_message and message_payload
            log.info("smsc: malformed submit_sm from %s: %s", conn.peername, exc)
            self._respond(conn, pdu, _ErrorResp(CommandStatus.ESME_RINVMSGLEN))
            return
        profile = self.profile
        self.submits_total += 1
        stats.submits += 1
        if profile.disconnect_after is not None and stats.submits >= profile.disconnect_after:
            self._drop_link(conn, f"disconnect_after={profile.disconnect_after}")
            self._notify()
            return
        if not self._take_token(stats.system_id):
            self.throttled_total += 1
            self._respond(conn, pdu, _resp(SubmitSmResp, CommandStatus.ESME_RTHROTTLED))
            self._notify()
            return
        handset = profile.handsets.lookup(pdu.destination.number) if profile.handsets else None
        if handset is not None and handset.behaviour == "invalid":
            self.invalid_total += 1
            self._respond(conn, pdu, _ErrorResp(CommandStatus.ESME_RINVDSTADR))
            self._notify()
            return
        fault = self._roll_fault(profile)
        if fault == "drop":
            self.dropped_total += 1
            self._notify()
            return
        stats.outstanding += 1
        stats.max_outstanding = max(stats.max_outstanding, stats.outstanding)
        if fault == "error":
            self.errors_total += 1
            self._notify()
            self._after_latency(profile, self._answer_error, conn, stats, pdu,
                                profile.error_status)
            return
        self.accepted_total += 1
        message_id = self._next_id()
        self._record(_received_submit(pdu, fields, message_id, stats.bind_id))
        self._notify()
        completes = completes_message(fields)
        self._after_latency(profile, self._answer, conn, stats, pdu, message_id, handset,
                            completes)

    def _roll_fault(self, profile: SmscProfile) -> str | None:
        """None (answer normally), "drop" or "error"; one draw, only when a ratio is set."""
        drop, error = profile.drop_ratio, profile.error_ratio
        if drop <= 0 and error <= 0:
            return None
        draw = self._rng.random()
        if draw < drop:
            return "drop"
        if draw < drop + error:
            return "error"
        return None

    def _after_latency(
        self, profile: SmscProfile, callback: Callable[..., None], *args: Any
    ) -> None:
        delay = profile.latency
        if profile.latency_jitter > 0:
            delay = max(0.0, delay + self._rng.uniform(-profile.latency_jitter,
                                                       profile.latency_jitter))
        if delay > 0:
            self._later(delay, callback, *args)
        else:
            callback(*args)

    def _record(self, submit: ReceivedSubmit) -> None:
        received = self.received
        received.append(submit)
        if len(received) >= RECEIVED_MAX + RECEIVED_MAX // 10:
            del received[: len(received) - RECEIVED_MAX]

    def _take_token(self, system_id: str) -> bool:
        """max_tps per system_id, with one second of burst; a rate changed at run time applies
        from now on."""
        rate = self.profile.max_tps
        if rate is None:
            return True
        bucket = self._buckets.get(system_id)
        if bucket is None:
            bucket = self._buckets[system_id] = TokenBucket(rate, burst=max(rate, 1.0),
                                                            clock=self._now)
        elif bucket.max_rate != rate:
            bucket.set_rate(rate, burst=max(rate, 1.0))
        return bucket.try_take() == 0.0

    def _next_id(self) -> str:
        self._id_counter += 1
        return f"{self._id_base + self._id_counter:x}"

    def _respond(self, conn: SmppConnection, pdu: Any, resp: Any) -> None:
        """An immediate answer (throttled, invalid number), unless paused."""
        if not self._hold(self._respond, conn, pdu, resp) and conn in self._peers:
            conn.respond(pdu, resp)

    def _settle(self, conn: SmppConnection, stats: BindStats) -> bool:
        """One outstanding submit is answered now; False if there is nobody to answer."""
        if stats.outstanding > 0:
            stats.outstanding -= 1
            self._notify()
        # The session may have gone away while we were "processing" (or we dropped it).
        return conn in self._peers and not conn.session.closed

    def _answer_error(
        self, conn: SmppConnection, stats: BindStats, pdu: Any, status: int
    ) -> None:
        if self._hold(self._answer_error, conn, stats, pdu, status) or not self._settle(
            conn, stats
        ):
            return
        try:
            conn.respond(pdu, _ErrorResp(status))
        except Exception as exc:
            log.debug("smsc: could not answer submit on %s: %r", conn.peername, exc)

    def _answer(
        self, conn: SmppConnection, stats: BindStats, pdu: Any, message_id: str,
        handset: Handset | None, completes: bool,
    ) -> None:
        """`completes`: the submit is a whole message or its last part (a handset replies)."""
        if self._hold(self._answer, conn, stats, pdu, message_id, handset,
                      completes) or not self._settle(conn, stats):
            return
        try:
            conn.respond(pdu, SubmitSmResp(sequence_num=pdu.sequence_num, message_id=message_id))
        except Exception as exc:
            log.debug("smsc: could not answer submit on %s: %r", conn.peername, exc)
            return
        profile = self.profile
        if handset is not None and handset.behaviour == "unreachable":
            delivered = False
        else:
            ratio = profile.undeliverable_ratio
            delivered = not (ratio > 0 and self._rng.random() < ratio)
        receipt = self._make_receipt(conn, stats.system_id, pdu, message_id, delivered)
        reply = None
        if delivered and handset is not None and handset.reply and completes:
            reply = _Receipt(
                message_id=message_id, system_id=stats.system_id, origin=conn,
                source=PhoneNumber(_strip_plus(pdu.destination.number), TON(1), NPI(1)),
                destination=pdu.source, submitted_at=time.time(), delivered=True,
                mo_text=handset.reply,
            )
        delay = profile.receipt_delay
        if handset is not None and handset.behaviour == "roaming":
            delay += profile.roaming_delay
        # What query_sm answers: en route until the handset has it (or not), then final.
        self._set_state(message_id, query.ENROUTE)
        final = query.DELIVERED if delivered else query.UNDELIVERABLE
        if delay > 0:
            self._later(delay, self._set_state, message_id, final)
        else:
            self._set_state(message_id, final)
        if receipt is None and reply is None:
            return
        reply_delay = handset.reply_delay if handset is not None else 0.0
        if delay > 0:
            self._later(delay, self._delivered, receipt, reply, reply_delay)
        else:
            self._delivered(receipt, reply, reply_delay)

    def _delivered(
        self, receipt: _Receipt | None, reply: _Receipt | None, reply_delay: float
    ) -> None:
        """The handset has the message: send the receipt, then (after its delay) the reply."""
        if receipt is not None:
            self._dispatch(receipt)
        if reply is not None:
            if reply_delay > 0:
                self._later(reply_delay, self._dispatch, reply)
            else:
                self._dispatch(reply)

    def _make_receipt(
        self, conn: SmppConnection, system_id: str, pdu: Any, message_id: str, delivered: bool
    ) -> _Receipt | None:
        if not self.profile.receipts:
            return None
        if self.profile.honor_registered_delivery:
            wanted = pdu.registered_delivery & 0x03
            if wanted == 0 or (wanted == 2 and delivered):
                return None
        lose = self.profile.lose_receipts
        if lose > 0 and self._rng.random() < lose:  # the operator's link or store loses it
            self.receipts_lost += 1
            return None
        return _Receipt(
            message_id=message_id, system_id=system_id, origin=conn,
            source=pdu.destination, destination=pdu.source,
            submitted_at=time.time(), delivered=delivered,
        )

    # -- link drops -----------------------------------------------------------------------------

    def _drop_link(self, conn: SmppConnection, reason: str) -> None:
        """Close the TCP connection without unbind; its unanswered submits stay unanswered."""
        peer = self._peers.pop(conn, None)  # from now on, nothing is answered or sent on it
        if peer is not None and peer.stats is not None:
            peer.stats.bound = False
            peer.stats.outstanding = 0
            peer.stats.close_reason = reason
        self.disconnects_total += 1
        log.info("smsc: dropping the link of %s (%s)", conn.peername, reason)
        conn.close()

    def _disconnect_tick(self) -> None:
        """disconnect_every: drop every bound session when due; re-read the profile each time."""
        if self._stopping:
            self._ticking = False
            return
        every = self.profile.disconnect_every
        now = self._now()
        if every is None:
            self._last_link_drop = None
            self._later(DISCONNECT_POLL, self._disconnect_tick)
            return
        if self._last_link_drop is None:  # just switched on (or at start)
            self._last_link_drop = now
        elif now >= self._last_link_drop + every - 0.001:  # timers may fire a little early
            self._last_link_drop = now
            for conn, peer in list(self._peers.items()):
                if peer.stats is not None:
                    self._drop_link(conn, f"disconnect_every={every}")
            self._notify()
        delay = min(DISCONNECT_POLL, self._last_link_drop + every - now)
        self._later(max(delay, 0.001), self._disconnect_tick)

    # -- receipts -------------------------------------------------------------------------------

    def _dispatch(self, receipt: _Receipt) -> None:
        """Send the receipt on a bound RX/TRX session with a free slot, or queue it."""
        conn = None if self._paused else self._pick_session(receipt)
        if conn is None:
            self._enqueue(receipt)
        else:
            self._send_receipt(conn, receipt)

    def _pick_session(self, receipt: _Receipt) -> SmppConnection | None:
        if self.profile.receipts_any_bind:
            conn = self._next_session(receipt.system_id)
            if conn is not None and conn is not receipt.origin:
                self.receipts_elsewhere += 1
            return conn
        origin = receipt.origin
        if origin is not None and self._can_deliver(origin, receipt.system_id):
            return origin
        receipt.origin = None  # no longer useful; lets a closed connection be collected
        best: SmppConnection | None = None
        for conn in self._peers:
            if self._can_deliver(conn, receipt.system_id) and (
                best is None or conn.session.free_window > best.session.free_window
            ):
                best = conn
        return best

    def _next_session(self, system_id: str) -> SmppConnection | None:
        """The next session of `system_id` able to take a receipt, round robin."""
        able = [conn for conn in self._peers if self._can_deliver(conn, system_id)]
        if not able:
            return None
        self._any_bind_turn += 1
        return able[self._any_bind_turn % len(able)]

    def _can_deliver(self, conn: SmppConnection, system_id: str) -> bool:
        peer = self._peers.get(conn)
        if peer is None or peer.stats is None or peer.stats.system_id != system_id:
            return False
        session = conn.session
        return (
            session.state is SessionState.BOUND
            and session.mode in _CAN_RECEIVE
            and session.free_window > 0
        )

    def _enqueue(self, receipt: _Receipt) -> None:
        queue = self._pending.setdefault(receipt.system_id, deque())
        if self._pending_count >= PENDING_MAX:
            # Bounded: drop the oldest receipt of this system_id (or refuse if it has none).
            if not queue:
                self.receipts_dropped += 1
                return
            queue.popleft()
            self._pending_count -= 1
            self.receipts_dropped += 1
        queue.append(receipt)
        self._pending_count += 1
        self._notify()

    def _drain(self, system_id: str) -> None:
        queue = self._pending.get(system_id)
        while queue and not self._paused:
            conn = self._pick_session(queue[0])
            if conn is None:
                return
            receipt = queue.popleft()
            self._pending_count -= 1
            self._send_receipt(conn, receipt)

    def _send_receipt(self, conn: SmppConnection, receipt: _Receipt) -> None:
        pdu = self._receipt_pdu(receipt)
        try:
            future = conn.request(pdu)
        except SessionError as exc:  # WindowFull / NotBound: raced with the session
            log.debug("smsc: receipt not sent on %s: %r", conn.peername, exc)
            self._enqueue(receipt)
            return
        if receipt.mo_text is None:
            self.receipts_sent += 1
        else:
            self.mo_sent_total += 1
        future.add_done_callback(
            lambda fut: self._on_receipt_result(fut, receipt)
        )

    def _on_receipt_result(self, future: asyncio.Future[Any], receipt: _Receipt) -> None:
        if future.cancelled():
            self._enqueue(receipt)
            return
        exc = future.exception()
        if exc is None and future.result().command_status == CommandStatus.ESME_ROK:
            if receipt.mo_text is None:
                self.receipts_acked += 1
            else:
                self.mo_acked_total += 1
        elif exc is not None and not _counts_as_attempt(exc):
            # The connection went away (or the window was full): not the receipt's fault.
            self._enqueue(receipt)
        else:
            receipt.attempts += 1
            if receipt.attempts > RECEIPT_RETRIES:
                if receipt.mo_text is None:
                    self.receipts_failed += 1
                else:
                    self.mo_failed_total += 1
                log.info("smsc: giving up %s %s after %d attempts",
                         "receipt" if receipt.mo_text is None else "reply to",
                         receipt.message_id, receipt.attempts)
            else:
                self._dispatch(receipt)
        # A slot has freed on some session: send what waits for this system_id.
        self._drain(receipt.system_id)
        self._notify()

    def _receipt_pdu(self, receipt: _Receipt) -> Any:
        if receipt.mo_text is not None:
            return mo_pdu(receipt.mo_text, receipt.source, receipt.destination)
        receipt_id = receipt.message_id
        if self.profile.receipt_id_format == "decimal":
            receipt_id = str(int(receipt_id, 16))
        stat, state = ("DELIVRD", DELIVERED) if receipt.delivered else ("UNDELIV", UNDELIVERABLE)
        return receipt_pdu(receipt_id, stat, state, receipt.submitted_at, time.time(),
                           source=receipt.source, destination=receipt.destination)

    # -- timers ---------------------------------------------------------------------------------

    def _later(self, delay: float, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            try:
                callback(*args)
            except Exception:
                log.exception("smsc: timer callback failed")

        handle = self._loop.call_later(delay, fire)
        self._timers.add(handle)


def _resp(cls: Any, status: CommandStatus) -> Any:
    """An aiosmpplib response carrying `status` (its constructors take only its own enum);
    the session sets the sequence number."""
    resp = cls()
    resp.command_status = status
    return resp


def _counts_as_attempt(exc: BaseException) -> bool:
    """A timeout counts against the receipt's retries; a lost connection does not."""
    return not isinstance(exc, ConnectionLost | SessionError)


def _strip_plus(number: str) -> str:
    return number[1:] if number.startswith("+") else number


def completes_message(fields: RawSubmit) -> bool:
    """True unless the submit is a part, other than the last, of a concatenated message."""
    if fields.esm_class & ESM_CLASS_UDHI:
        try:
            concat, _ = parse_udh(fields.message)
        except ValueError:  # not a header the SMSC can read: a message of its own
            return True
        return concat is None or concat.seq >= concat.total
    return fields.sar is None or fields.sar.seq >= fields.sar.total


def _received_submit(
    pdu: Any, fields: RawSubmit, message_id: str, bind_id: str
) -> ReceivedSubmit:
    return ReceivedSubmit(
        smsc_id=message_id,
        source=pdu.source.number,
        destination=pdu.destination.number,
        esm_class=fields.esm_class,
        data_coding=fields.data_coding,
        short_message=fields.message,
        bind_id=bind_id,
        received_at=time.time(),
    )


def raw_short_message(pdu: Any) -> tuple[int, bytes]:
    """(data_coding, octets with their UDH) of an aiosmpplib submit_sm built here, read back
    from its encoding (a received one's octets are in its RequestReceived.raw)."""
    fields = parse_submit(pdu.pdu())
    return fields.data_coding, fields.message


__all__ = ["BindStats", "ReceivedSubmit", "Smsc", "SmscProfile", "raw_short_message"]

"""The SMPP 3.4 session as a plain state machine: bytes and `now` in, events and bytes out.

No sockets, no asyncio, no logging (h11 / aioquic style). The caller feeds received bytes with
`receive_data`, sends what `data_to_send` returns, and calls `handle_timers` at `next_deadline`.
PDUs are aiosmpplib's classes; the header is read here with struct because aiosmpplib's
`parse_header` raises on unknown command ids and command statuses.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, TypeAlias

from aiosmpplib.protocol import (
    MESSAGE_TYPE_MAP,
    BindReceiver,
    BindReceiverResp,
    BindTransceiver,
    BindTransceiverResp,
    BindTransmitter,
    BindTransmitterResp,
    EnquireLink,
    PduHeader,
    SmppMessage,
    SubmitSm,
    Unbind,
)
from aiosmpplib.state import SmppCommandStatus

from aggregator.smpp.deliver_fast import decode_deliver_sm, decode_receipt
from aggregator.smpp.header import (
    ALERT_NOTIFICATION,
    BIND_RECEIVER,
    BIND_TRANSCEIVER,
    BIND_TRANSMITTER,
    CANCEL_SM,
    DATA_SM,
    DELIVER_SM,
    ENQUIRE_LINK,
    GENERIC_NACK,
    HEADER,
    HEADER_LENGTH,
    REPLACE_SM,
    RESP_BIT,
    SUBMIT_MULTI,
    SUBMIT_SM,
    UNBIND,
)
from aggregator.smpp.querysm import QUERY_SM, QuerySm, QuerySmResp
from aggregator.smpp.resp_fast import MESSAGE_ID_RESPONSES, decode_message_id_resp, deliver_sm_resp
from aggregator.smpp.status import CommandStatus
from aggregator.text import GSM7_CODECS

# aiosmpplib ships no type information: its PDU objects are Any to mypy.
Pdu: TypeAlias = SmppMessage

MAX_SEQUENCE: Final = 0x7FFFFFFF


class Role(Enum):
    CLIENT = "client"
    SERVER = "server"


class BindMode(Enum):
    TRANSMITTER = "tx"
    RECEIVER = "rx"
    TRANSCEIVER = "trx"


class SessionState(Enum):
    OPEN = "open"
    BINDING = "binding"
    BOUND = "bound"
    UNBINDING = "unbinding"
    CLOSED = "closed"


# ---------------------------------------------------------------------------------------------
# Events


@dataclass(slots=True)  # not frozen, as ResponseReceived: made for every message
class RequestReceived:
    """A data request from the peer on a bound session; answer it with `send_response`.
    `raw` is the whole PDU as received, for fields aiosmpplib decodes wrongly (UDH)."""

    pdu: Pdu
    raw: bytes = b""


@dataclass(slots=True, frozen=True)
class BindRequested:
    """SERVER: the peer sent bind_*; call `accept_bind` or `reject_bind`."""

    pdu: Pdu


@dataclass(slots=True, frozen=True)
class Bound:
    mode: BindMode
    system_id: str


@dataclass(slots=True, frozen=True)
class BindFailed:
    status: int


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field through object.__setattr__
class ResponseReceived:
    """Response (or generic_nack) to a request we sent; `context` is what send_request got."""

    pdu: Pdu
    context: object


@dataclass(slots=True, frozen=True)
class RequestTimedOut:
    sequence_num: int
    context: object


@dataclass(slots=True, frozen=True)
class RequestAborted:
    """The connection is gone with this request unanswered (from `abort`)."""

    sequence_num: int
    context: object


@dataclass(slots=True, frozen=True)
class RequestRefused:
    """The peer sent a request this session does not support (data_sm); it was answered with
    its own response and `status` (ESME_RINVCMDID). For the owner's metrics and log."""

    command_id: int
    status: int


@dataclass(slots=True, frozen=True)
class SessionClosed:
    """The transport must flush `data_to_send()` and close the connection."""

    reason: str


@dataclass(slots=True, frozen=True)
class ProtocolError:
    """blame is "remote" or "local". Unless followed by SessionClosed, already handled."""

    reason: str
    blame: str


Event: TypeAlias = (
    RequestReceived
    | BindRequested
    | Bound
    | BindFailed
    | ResponseReceived
    | RequestTimedOut
    | RequestAborted
    | RequestRefused
    | SessionClosed
    | ProtocolError
)


class SessionError(Exception):
    """A local misuse of the session (wrong state, wrong role, ...)."""


class WindowFull(SessionError):
    pass


class NotBound(SessionError):
    pass


# ---------------------------------------------------------------------------------------------
# Static tables

# Decoders by command id, including responses.
_PDU_CLASSES: Final[dict[int, Any]] = {int(cmd): cls for cmd, cls in MESSAGE_TYPE_MAP.items()}
# Response class for each request we can decode or send.
_RESP_CLASSES: Final[dict[int, Any]] = {
    cmd: _PDU_CLASSES[cmd | RESP_BIT]
    for cmd in _PDU_CLASSES
    if not cmd & RESP_BIT and cmd | RESP_BIT in _PDU_CLASSES
}

_BIND_COMMANDS: Final[dict[BindMode, int]] = {
    BindMode.TRANSMITTER: BIND_TRANSMITTER,
    BindMode.RECEIVER: BIND_RECEIVER,
    BindMode.TRANSCEIVER: BIND_TRANSCEIVER,
}
_BIND_MODES: Final[dict[int, BindMode]] = {cmd: mode for mode, cmd in _BIND_COMMANDS.items()}
_BIND_CLASSES: Final[dict[BindMode, tuple[Any, Any]]] = {
    BindMode.TRANSMITTER: (BindTransmitter, BindTransmitterResp),
    BindMode.RECEIVER: (BindReceiver, BindReceiverResp),
    BindMode.TRANSCEIVER: (BindTransceiver, BindTransceiverResp),
}

# Requests that occupy a window slot.
_DATA_COMMANDS: Final = frozenset({SUBMIT_SM, DELIVER_SM, DATA_SM})
# Body decode errors in these get ESME_RINVMSGLEN; other requests get ESME_RSYSERR.
_MESSAGE_COMMANDS: Final = frozenset({SUBMIT_SM, DELIVER_SM, DATA_SM, SUBMIT_MULTI})
# Commands that only the session itself sends (start_bind / unbind / send_response).
_RESERVED_COMMANDS: Final = frozenset({BIND_RECEIVER, BIND_TRANSMITTER, BIND_TRANSCEIVER, UNBIND})

# Tuples, not sets: `mode in` compares by identity, where a set would hash the member through
# Enum.__hash__, Python code run twice per message.
_TX: Final = (BindMode.TRANSMITTER, BindMode.TRANSCEIVER)
_RX: Final = (BindMode.RECEIVER, BindMode.TRANSCEIVER)
# Which bind modes allow a request, keyed by the role of the side that SENDS it. Used both to
# refuse a local send (NotBound) and to answer a peer's request with ESME_RINVBNDSTS.
# Commands not listed (enquire_link) are allowed in every bound mode.
_ALLOWED_MODES: Final[dict[tuple[Role, int], tuple[BindMode, ...]]] = {
    (Role.CLIENT, SUBMIT_SM): _TX,
    (Role.CLIENT, DATA_SM): _TX,
    (Role.CLIENT, SUBMIT_MULTI): _TX,
    (Role.CLIENT, QUERY_SM): _TX,
    (Role.CLIENT, REPLACE_SM): _TX,
    (Role.CLIENT, CANCEL_SM): _TX,
    (Role.CLIENT, DELIVER_SM): (),
    (Role.SERVER, DELIVER_SM): _RX,
    (Role.SERVER, DATA_SM): _RX,
    (Role.SERVER, ALERT_NOTIFICATION): _RX,
    (Role.SERVER, SUBMIT_SM): (),
    (Role.SERVER, QUERY_SM): (),  # an SMSC does not query its ESME
}
_PEER_ROLE: Final = {Role.CLIENT: Role.SERVER, Role.SERVER: Role.CLIENT}


# _ALLOWED_MODES by the sender's role, then command id: a session looks its own and its peer's
# up per PDU without hashing a (Role, int) key.
_ALLOWED_BY_ROLE: Final[dict[Role, dict[int, tuple[BindMode, ...]]]] = {
    role: {cmd: modes for (sender, cmd), modes in _ALLOWED_MODES.items() if sender is role}
    for role in Role
}

# Known statuses become SmppCommandStatus (aiosmpplib's constructors insist on it); others
# (vendor-specific 0x400-0x4FF, ...) are set as plain ints after decoding.
_STATUSES: Final[dict[int, Any]] = {int(s): s for s in SmppCommandStatus}
_ROK_STATUS: Final = SmppCommandStatus.ESME_ROK

# What an outstanding request is, to decide what its response or timeout means.
_KIND_DATA: Final = 0  # counts toward the window -> ResponseReceived / RequestTimedOut
_KIND_OTHER: Final = 1  # app's non-data request (enquire_link) -> same events, no window
_KIND_BIND: Final = 2  # our bind -> Bound / BindFailed; timeout closes
_KIND_ENQUIRE: Final = 3  # our automatic enquire_link -> silent; timeout closes
_KIND_UNBIND: Final = 4  # our unbind -> closes either way


@dataclass(slots=True)
class _Outstanding:
    """A request sent and not yet answered: what its response or timeout means."""

    command_id: int
    kind: int
    deadline: float
    context: object


def _status_of(status: int) -> Any:
    return _STATUSES.get(status, _ROK_STATUS)


_CODECS = GSM7_CODECS
# By PDU class: is it a SubmitSm (or a DeliverSm), whose text the session encodes with _CODECS?
_CODED: dict[type, bool] = {}


def request_status(status: int) -> Any:
    """The command_status decode_pdu leaves on a request: aiosmpplib's from_pdu drops the header's,
    so ESME_ROK for any status it knows, and decode_pdu sets the number it does not."""
    return _ROK_STATUS if status in _STATUSES else status


def decode_pdu(cls: Any, data: bytes, length: int, command_id: int, status: int, seq: int) -> Pdu:
    """Decode with aiosmpplib; raises whatever aiosmpplib raises on a bad body."""
    known = _STATUSES.get(status)
    # data_coding 0 is GSM 03.38 here (SMPP-REFERENCE.md), not aiosmpplib's ASCII fallback.
    pdu = cls.from_pdu(
        data, PduHeader(length, command_id, known or _ROK_STATUS, seq), "gsm0338", _CODECS
    )
    if known is None:
        pdu.command_status = status
    return pdu


def _bind_body_status(body: bytes) -> int:
    """The status for a bind body aiosmpplib refused: a system_id or password longer than SMPP
    allows (15 / 8 octets) is a wrong system_id or password, not a server error."""
    system_id, found, rest = body.partition(b"\0")
    if not found or len(system_id) > 15:
        return CommandStatus.ESME_RINVSYSID
    password, found, _ = rest.partition(b"\0")
    if not found or len(password) > 8:
        return CommandStatus.ESME_RINVPASWD
    return CommandStatus.ESME_RSYSERR


_Handler: TypeAlias = Callable[["SmppSession", int, int, int, bytes, list[Event]], None]


class SmppSession:
    """One SMPP session, either side. See the module docstring for how to drive it."""

    def __init__(
        self,
        role: Role,
        *,
        now: float,
        window: int = 10,
        response_timeout: float = 10.0,
        enquire_link_interval: float = 30.0,
        idle_timeout: float | None = None,
        bind_timeout: float = 10.0,
        max_pdu_length: int = 65536,
        first_sequence_num: int = 1,
        lean_receipts: bool = False,
    ) -> None:
        """`lean_receipts`: a delivery receipt's deliver_sm is handed on as a ReceiptPdu
        (deliver_fast.py: its text and TLVs only) rather than a DeliverSm, when that decodes."""
        if window < 1:
            raise ValueError("window must be at least 1")
        if not 1 <= first_sequence_num <= MAX_SEQUENCE:
            raise ValueError("first_sequence_num must be in 1..0x7FFFFFFF")
        self.role: Role = role
        self.state: SessionState = SessionState.OPEN
        self.mode: BindMode | None = None
        self.system_id: str = ""
        self.window: int = window
        self.in_flight: int = 0
        self.response_timeout = response_timeout
        self.enquire_link_interval = enquire_link_interval
        self.idle_timeout = idle_timeout
        self.bind_timeout = bind_timeout
        self.max_pdu_length = max_pdu_length
        self.lean_receipts = lean_receipts
        self._seq = first_sequence_num
        self._in = bytearray()
        self._out = bytearray()
        self._pending: dict[int, _Outstanding] = {}
        # (deadline, seq) min-heap of response deadlines; entries whose request was answered
        # stay until they surface (lazy deletion: no O(n) removal per response).
        self._timers: list[tuple[float, int]] = []
        self._opened_at = now
        self._last_rx = now
        self._enquire_outstanding = False
        self._own_allowed = _ALLOWED_BY_ROLE[role]
        self._peer_allowed = _ALLOWED_BY_ROLE[_PEER_ROLE[role]]

    # -- properties --------------------------------------------------------------------------

    @property
    def free_window(self) -> int:
        if self.state is not SessionState.BOUND:
            return 0
        return self.window - self.in_flight

    @property
    def closed(self) -> bool:
        return self.state is SessionState.CLOSED

    @property
    def pending_output(self) -> int:
        """Bytes queued for `data_to_send`."""
        return len(self._out)

    @property
    def outstanding(self) -> int:
        """All requests awaiting a response, including bind/enquire_link/unbind."""
        return len(self._pending)

    # -- local actions -----------------------------------------------------------------------

    def start_bind(
        self, mode: BindMode, system_id: str, password: str, now: float, system_type: str = ""
    ) -> None:
        if self.role is not Role.CLIENT:
            raise SessionError("only a client session binds")
        if self.state is not SessionState.OPEN:
            raise SessionError(f"cannot bind in state {self.state.name}")
        request_cls = _BIND_CLASSES[mode][0]
        pdu = request_cls(system_id=system_id, password=password, system_type=system_type)
        self._send(pdu, _KIND_BIND, now + self.bind_timeout, mode)
        self.state = SessionState.BINDING

    def accept_bind(self, request: Pdu, system_id: str, now: float) -> list[Event]:
        """SERVER: answer the bind OK. Returns [Bound] (also what the client side sees)."""
        mode = self._check_bind_answer(request)
        resp = _BIND_CLASSES[mode][1](sequence_num=request.sequence_num, system_id=system_id)
        self._out += resp.pdu()
        self.state = SessionState.BOUND
        self.mode = mode
        self.system_id = request.system_id
        self._last_rx = max(self._last_rx, now)
        return [Bound(mode, self.system_id)]

    def reject_bind(self, request: Pdu, status: int, now: float) -> None:
        """SERVER: answer the bind with an error status; the session stays OPEN."""
        mode = self._check_bind_answer(request)
        if status == CommandStatus.ESME_ROK:
            raise SessionError("reject_bind needs an error status")
        self._out += HEADER.pack(
            HEADER_LENGTH, _BIND_COMMANDS[mode] | RESP_BIT, status, request.sequence_num
        )
        self.state = SessionState.OPEN

    def send_request(self, pdu: Pdu, now: float, context: object = None) -> int:
        """Queue a request; returns its sequence number. Raises NotBound / WindowFull."""
        command_id = int(pdu.smpp_command)
        if command_id & RESP_BIT or command_id in _RESERVED_COMMANDS:
            raise SessionError(f"command 0x{command_id:08X} is not sent with send_request")
        if self.state is not SessionState.BOUND:
            raise NotBound(f"session is {self.state.name}")
        allowed = self._own_allowed.get(command_id)
        if allowed is not None and self.mode not in allowed:
            raise NotBound(f"command 0x{command_id:08X} not allowed for {self.role.value}"
                           f" bound as {self.mode}")
        if command_id in _DATA_COMMANDS:
            if self.in_flight >= self.window:
                raise WindowFull(f"{self.in_flight} requests in flight")
            seq = self._send(pdu, _KIND_DATA, now + self.response_timeout, context)
            self.in_flight += 1
            return seq
        return self._send(pdu, _KIND_OTHER, now + self.response_timeout, context)

    def send_response(self, request: Pdu, response: Pdu) -> None:
        if self.state is SessionState.CLOSED:
            return  # the connection is going away; nobody will read it
        response.sequence_num = request.sequence_num
        self._out += response.pdu()

    def send_deliver_resp(self, seq: int, status: int = 0) -> None:
        """send_response(request, DeliverSmResp(command_status=status)) for the deliver_sm
        numbered `seq`, without building the object (resp_fast.py)."""
        if self.state is SessionState.CLOSED:
            return
        self._out += deliver_sm_resp(seq, status)

    def unbind(self, now: float) -> None:
        if self.state is SessionState.UNBINDING:
            return
        if self.state is not SessionState.BOUND:
            raise NotBound(f"session is {self.state.name}")
        self._send(Unbind(), _KIND_UNBIND, now + self.response_timeout, None)
        self.state = SessionState.UNBINDING

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def abort(self) -> list[Event]:
        """The connection is lost: fail every outstanding app request."""
        events: list[Event] = [
            RequestAborted(seq, p.context)
            for seq, p in self._pending.items()
            if p.kind <= _KIND_OTHER
        ]
        self._pending.clear()
        self._timers.clear()
        self.in_flight = 0
        self.state = SessionState.CLOSED
        self._in.clear()
        return events

    # -- timers ------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        if self.state is SessionState.CLOSED:
            return None
        timers = self._timers
        pending = self._pending
        while timers:  # drop answered entries from the top so they cause no wake-ups
            deadline, seq = timers[0]
            p = pending.get(seq)
            if p is not None and p.deadline == deadline:
                break
            heapq.heappop(timers)
        best = timers[0][0] if timers else None
        for candidate in self._session_deadlines():
            if best is None or candidate < best:
                best = candidate
        return best

    def _session_deadlines(self) -> list[float]:
        deadlines = []
        if self.state is SessionState.BOUND and not self._enquire_outstanding:
            deadlines.append(self._last_rx + self.enquire_link_interval)
        if self.idle_timeout is not None:
            deadlines.append(self._last_rx + self.idle_timeout)
        if self.role is Role.SERVER and self.state in (SessionState.OPEN, SessionState.BINDING):
            deadlines.append(self._opened_at + self.bind_timeout)
        return deadlines

    def handle_timers(self, now: float) -> list[Event]:
        events: list[Event] = []
        if self.state is SessionState.CLOSED:
            return events
        timers = self._timers
        pending = self._pending
        while timers and timers[0][0] <= now:
            deadline, seq = heapq.heappop(timers)
            p = pending.get(seq)
            if p is None or p.deadline != deadline:
                continue
            del pending[seq]
            self._expire(seq, p, events)
            if self.closed:
                return events
        if self.idle_timeout is not None and now >= self._last_rx + self.idle_timeout:
            self._close("idle timeout", events)
        elif (
            self.role is Role.SERVER
            and self.state in (SessionState.OPEN, SessionState.BINDING)
            and now >= self._opened_at + self.bind_timeout
        ):
            self._close("bind timeout", events)
        elif (
            self.state is SessionState.BOUND
            and not self._enquire_outstanding
            and now >= self._last_rx + self.enquire_link_interval
        ):
            self._send(EnquireLink(), _KIND_ENQUIRE, now + self.response_timeout, None)
            self._enquire_outstanding = True
        return events

    def _expire(self, seq: int, p: _Outstanding, events: list[Event]) -> None:
        kind = p.kind
        if kind == _KIND_DATA:
            self.in_flight -= 1
            events.append(RequestTimedOut(seq, p.context))
        elif kind == _KIND_OTHER:
            events.append(RequestTimedOut(seq, p.context))
        elif kind == _KIND_BIND:
            self._close("bind timeout", events)
        elif kind == _KIND_ENQUIRE:
            self._close("enquire_link timeout", events)
        else:
            self._close("unbind timeout", events)

    # -- receiving ---------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        events: list[Event] = []
        if self.state is SessionState.CLOSED or not data:
            return events
        self._last_rx = now
        held = self._in
        if held:  # the start of a PDU from an earlier read
            held += data
            buf = bytes(held)
            held.clear()
        else:  # the usual read: whole PDUs, sliced from it with one copy each (not two)
            buf = data if type(data) is bytes else bytes(data)
        end = len(buf)
        pos = 0
        handlers = _HANDLERS
        while end - pos >= HEADER_LENGTH:
            length, command_id, status, seq = HEADER.unpack_from(buf, pos)
            if length < HEADER_LENGTH or length > self.max_pdu_length:
                # We cannot find the next PDU boundary: answer and give up on the connection.
                self._nack(CommandStatus.ESME_RINVCMDLEN, seq)
                events.append(ProtocolError(f"invalid command_length {length}", "remote"))
                self._close("invalid command_length", events)
                return events
            if end - pos < length:
                break
            pdu_bytes = buf[pos : pos + length]
            pos += length
            handler = handlers.get(command_id)
            if handler is None:
                self._nack(CommandStatus.ESME_RINVCMDID, seq)
                events.append(ProtocolError(f"unknown command_id 0x{command_id:08X}", "remote"))
                continue
            handler(self, command_id, status, seq, pdu_bytes, events)
            if self.closed:
                return events
        if pos < end:
            held += buf[pos:]
        return events

    # Handlers: (self, command_id, command_status, sequence_num, pdu bytes, events out).

    def _on_data_request(
        self, command_id: int, status: int, seq: int, data: bytes, events: list[Event]
    ) -> None:
        allowed = self._peer_allowed.get(command_id)
        if self.state is not SessionState.BOUND or (
            allowed is not None and self.mode not in allowed
        ):
            # Also during our UNBINDING: refusing makes the peer keep the message for later.
            self._respond_error(command_id, CommandStatus.ESME_RINVBNDSTS, seq)
            return
        pdu: Any = None
        if command_id == DELIVER_SM:  # receipts' fast paths (deliver_fast.py)
            if self.lean_receipts:
                pdu = decode_receipt(data, seq, _CODECS)
            if pdu is None:
                pdu = decode_deliver_sm(data, request_status(status), seq, _CODECS)
        try:
            if pdu is None:
                pdu = decode_pdu(_PDU_CLASSES[command_id], data, len(data), command_id, status, seq)
        except Exception as exc:  # aiosmpplib raises many types on bad bodies
            self._respond_error(command_id, CommandStatus.ESME_RINVMSGLEN, seq)
            events.append(ProtocolError(f"bad body in 0x{command_id:08X}: {exc!r}", "remote"))
            return
        events.append(RequestReceived(pdu, bytes(data)))

    def _on_refused(
        self, command_id: int, status: int, seq: int, data: bytes, events: list[Event]
    ) -> None:
        """A request we do not support although the spec defines it (data_sm): its own
        response with ESME_RINVCMDID, as the spec allows, rather than a generic_nack."""
        self._out += HEADER.pack(
            HEADER_LENGTH, command_id | RESP_BIT, CommandStatus.ESME_RINVCMDID, seq
        )
        events.append(RequestRefused(command_id, CommandStatus.ESME_RINVCMDID))

    def _on_bind(
        self, command_id: int, status: int, seq: int, data: bytes, events: list[Event]
    ) -> None:
        if self.role is Role.CLIENT:
            self._respond_error(command_id, CommandStatus.ESME_RINVBNDSTS, seq)
            events.append(ProtocolError("bind sent to a client session", "remote"))
            return
        if self.state is not SessionState.OPEN:
            self._respond_error(command_id, CommandStatus.ESME_RALYBND, seq)
            return
        try:
            pdu = decode_pdu(_PDU_CLASSES[command_id], data, len(data), command_id, status, seq)
        except Exception as exc:  # aiosmpplib raises many types on bad bodies
            self._respond_error(command_id, _bind_body_status(data[HEADER_LENGTH:]), seq)
            events.append(ProtocolError(f"bad bind body: {exc!r}", "remote"))
            return
        self.state = SessionState.BINDING
        events.append(BindRequested(pdu))

    def _on_enquire_link(
        self, command_id: int, status: int, seq: int, data: bytes, events: list[Event]
    ) -> None:
        self._out += HEADER.pack(HEADER_LENGTH, command_id | RESP_BIT, CommandStatus.ESME_ROK, seq)

    def _on_unbind(
        self, command_id: int, status: int, seq: int, data: bytes, events: list[Event]
    ) -> None:
        self._out += HEADER.pack(HEADER_LENGTH, command_id | RESP_BIT, CommandStatus.ESME_ROK, seq)
        self._close("peer unbound", events)

    def _on_response(
        self, command_id: int, status: int, seq: int, data: bytes, events: list[Event]
    ) -> None:
        p = self._pending.get(seq)
        if p is None:
            events.append(ProtocolError(
                f"response 0x{command_id:08X} for unknown sequence_num {seq}", "remote"))
            return
        if command_id != p.command_id | RESP_BIT and command_id != GENERIC_NACK:
            events.append(ProtocolError(
                f"response 0x{command_id:08X} to request 0x{p.command_id:08X}", "remote"))
            return  # leave the request to its timeout
        del self._pending[seq]
        cls = _PDU_CLASSES[command_id]
        pdu = None
        if command_id in MESSAGE_ID_RESPONSES:  # submit_sm_resp: the short cut (resp_fast.py)
            known = _STATUSES.get(status)
            pdu = decode_message_id_resp(cls, data, status if known is None else known, seq)
        try:
            if pdu is None:
                pdu = decode_pdu(cls, data, len(data), command_id, status, seq)
        except Exception as exc:  # aiosmpplib raises many types on bad bodies
            # Error responses usually come without a body (aiosmpplib's bind_resp decoder
            # requires one); a bodiless object still carries the status to the caller.
            pdu = cls(sequence_num=seq, command_status=_status_of(status))
            if status not in _STATUSES:
                pdu.command_status = status
            if status == CommandStatus.ESME_ROK:
                events.append(ProtocolError(f"bad body in 0x{command_id:08X}: {exc!r}", "remote"))
        kind = p.kind
        if kind == _KIND_DATA:
            self.in_flight -= 1
            events.append(ResponseReceived(pdu, p.context))
        elif kind == _KIND_OTHER:
            events.append(ResponseReceived(pdu, p.context))
        elif kind == _KIND_ENQUIRE:
            self._enquire_outstanding = False
        elif kind == _KIND_BIND:
            if status == CommandStatus.ESME_ROK and command_id != GENERIC_NACK:
                assert isinstance(p.context, BindMode)
                self.state = SessionState.BOUND
                self.mode = p.context
                self.system_id = pdu.system_id
                events.append(Bound(p.context, self.system_id))
            else:
                self.state = SessionState.OPEN
                events.append(BindFailed(status or CommandStatus.ESME_RBINDFAIL))
        else:
            self._close("unbound", events)

    def _on_generic_nack(
        self, command_id: int, status: int, seq: int, data: bytes, events: list[Event]
    ) -> None:
        if seq in self._pending:
            self._on_response(command_id, status, seq, data, events)
        else:
            # The peer could not parse something we sent (often sequence_num 0).
            events.append(ProtocolError(
                f"generic_nack status 0x{status:08X} sequence_num {seq}", "local"))

    # -- helpers -----------------------------------------------------------------------------

    def _send(self, pdu: Pdu, kind: int, deadline: float, context: object) -> int:
        seq = self._seq
        pending = self._pending
        while seq in pending:  # only after a wrap with a very old request still outstanding
            seq = seq + 1 if seq < MAX_SEQUENCE else 1
        pdu.sequence_num = seq
        kind_of = type(pdu)
        coded = _CODED.get(kind_of)
        if coded is None:  # isinstance on aiosmpplib's ABC classes: 0.5 us a submit, so once
            coded = _CODED[kind_of] = isinstance(pdu, SubmitSm)
        if coded:  # and DeliverSm: text not yet encoded takes the fast coder
            pdu.set_encoding_info("gsm0338", _CODECS)
        self._out += pdu.pdu()  # encode before registering: a local encode error leaves no trace
        self._seq = seq + 1 if seq < MAX_SEQUENCE else 1
        pending[seq] = _Outstanding(int(pdu.smpp_command), kind, deadline, context)
        heapq.heappush(self._timers, (deadline, seq))
        return seq

    def _nack(self, status: int, seq: int) -> None:
        self._out += HEADER.pack(HEADER_LENGTH, GENERIC_NACK, status, seq)

    def _respond_error(self, command_id: int, status: int, seq: int) -> None:
        """Answer a request with its own *_resp, header only (the spec omits error bodies)."""
        if command_id in _RESP_CLASSES or command_id in _DATA_COMMANDS:
            self._out += HEADER.pack(HEADER_LENGTH, command_id | RESP_BIT, status, seq)
        else:
            self._nack(CommandStatus.ESME_RINVCMDLEN, seq)

    def _check_bind_answer(self, request: Pdu) -> BindMode:
        if self.role is not Role.SERVER:
            raise SessionError("only a server session answers binds")
        if self.state is not SessionState.BINDING:
            raise SessionError(f"no bind to answer in state {self.state.name}")
        mode = _BIND_MODES.get(int(request.smpp_command))
        if mode is None:
            raise SessionError("not a bind request")
        return mode

    def _close(self, reason: str, events: list[Event]) -> None:
        self.state = SessionState.CLOSED
        events.append(SessionClosed(reason))


# All receive-side transitions, by command id. A missing id is answered with generic_nack.
_HANDLERS: Final[dict[int, _Handler]] = {
    BIND_RECEIVER: SmppSession._on_bind,
    BIND_TRANSMITTER: SmppSession._on_bind,
    BIND_TRANSCEIVER: SmppSession._on_bind,
    SUBMIT_SM: SmppSession._on_data_request,
    DELIVER_SM: SmppSession._on_data_request,
    DATA_SM: SmppSession._on_refused,
    ENQUIRE_LINK: SmppSession._on_enquire_link,
    UNBIND: SmppSession._on_unbind,
    GENERIC_NACK: SmppSession._on_generic_nack,
    **{
        cmd | RESP_BIT: SmppSession._on_response
        for cmd in (BIND_RECEIVER, BIND_TRANSMITTER, BIND_TRANSCEIVER, SUBMIT_SM, DELIVER_SM,
                    ENQUIRE_LINK, UNBIND)
    },
}

# query_sm / query_sm_resp (aggregator.smpp.querysm: aiosmpplib has no classes for them): a
# client asks an SMSC for the state of a message, the SMSC answers. Not data commands: they take
# no window slot.
_PDU_CLASSES[QUERY_SM] = QuerySm
_PDU_CLASSES[QUERY_SM | RESP_BIT] = QuerySmResp
_RESP_CLASSES[QUERY_SM] = QuerySmResp
_HANDLERS[QUERY_SM] = SmppSession._on_data_request
_HANDLERS[QUERY_SM | RESP_BIT] = SmppSession._on_response

__all__ = [
    "BindFailed",
    "BindMode",
    "BindRequested",
    "Bound",
    "Event",
    "NotBound",
    "ProtocolError",
    "RequestAborted",
    "RequestReceived",
    "RequestRefused",
    "RequestTimedOut",
    "ResponseReceived",
    "Role",
    "SessionClosed",
    "SessionError",
    "SessionState",
    "SmppSession",
    "WindowFull",
]

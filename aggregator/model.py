"""Plain data types shared by every stage, and the error codes the API returns. No I/O."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class MessageStatus(StrEnum):
    ACCEPTED = "accepted"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SUBMITTED = "submitted"
    DELIVERED = "delivered"
    UNDELIVERABLE = "undeliverable"
    EXPIRED = "expired"
    REJECTED = "rejected"
    FAILED = "failed"
    # No receipt came within [messages] receipt_timeout, and querying the provider (if it
    # is asked) did not tell: the message may or may not have arrived.
    UNKNOWN = "unknown"
    CANCELLED = "cancelled"  # by the client (DELETE /v1/messages/{id}) before it was submitted

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {
        MessageStatus.DELIVERED,
        MessageStatus.UNDELIVERABLE,
        MessageStatus.EXPIRED,
        MessageStatus.REJECTED,
        MessageStatus.FAILED,
        MessageStatus.UNKNOWN,
        MessageStatus.CANCELLED,
    }
)


class Encoding(StrEnum):
    GSM7 = "gsm7"
    UCS2 = "ucs2"


class SenderKind(StrEnum):
    ALPHANUMERIC = "alphanumeric"  # TON 5, NPI 0
    INTERNATIONAL = "international"  # TON 1, NPI 1
    SHORTCODE = "shortcode"  # TON 3, NPI 0


class ErrorCode(StrEnum):
    """Machine-readable error codes shared by the HTTP API and (mapped) SMPP ingress."""

    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    BODY_TOO_LARGE = "body_too_large"
    INVALID_NUMBER = "invalid_number"
    NOT_MOBILE = "not_mobile"
    NO_ROUTE = "no_route"
    TOO_LONG = "too_long"
    INVALID_SENDER = "invalid_sender"
    EMPTY_TEXT = "empty_text"
    STORE_UNAVAILABLE = "store_unavailable"
    QUEUE_FULL = "queue_full"
    CALLBACK_URL_FORBIDDEN = "callback_url_forbidden"  # an address callbacks may not reach
    # Country rules (policy/)
    SENDER_NOT_REGISTERED = "sender_not_registered"
    SENDER_TYPE_UNSUPPORTED = "sender_type_unsupported"
    OPTED_OUT = "opted_out"
    CONTENT_REJECTED = "content_rejected"
    FREQUENCY_CAPPED = "frequency_capped"
    # DELETE /v1/messages/{id} on a message already taken for submission
    NOT_CANCELLABLE = "not_cancellable"
    # A batch request with an Idempotency-Key header (only single messages take one).
    IDEMPOTENCY_KEY_UNSUPPORTED = "idempotency_key_unsupported"
    CONSENT_REQUIRED = "consent_required"


class ApiError(Exception):
    """A request refused with an HTTP status, a code and a human message."""

    def __init__(self, status: int, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


_ID_RANDOM = 10  # random bytes in a message id
# Random bytes drawn for this many ids at once: one getrandom() call per 256 ids instead of one
# per id (new_message_id was 1.5% of the daemon's samples at 1,000 msg/s, most of it the call).
_ID_POOL = 256 * _ID_RANDOM
_id_pool = b""
_id_used = 0


def new_message_id() -> str:
    """32 hex chars: 48-bit milliseconds (sortable; retention reads "created before" from
    them) + 80 random bits. Fits SMPP's 65 octets. For the event loop's thread: the pool of
    random bytes is not shared between threads."""
    global _id_pool, _id_used
    if _id_used >= len(_id_pool):
        _id_pool, _id_used = os.urandom(_ID_POOL), 0
    start = _id_used
    _id_used = start + _ID_RANDOM
    return f"{int(time.time() * 1000):012x}{_id_pool[start:start + _ID_RANDOM].hex()}"


def _forget_id_pool() -> None:
    """A forked child draws its own bytes: the parent's unused ones would repeat its ids."""
    global _id_pool, _id_used
    _id_pool, _id_used = b"", 0


os.register_at_fork(after_in_child=_forget_id_pool)


DECIMAL_ID_EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
DECIMAL_ID_NODES = 128  # the daemon (0) and up to 127 ingress workers
_SEQ_BITS = 15
_NODE_BITS = 7


class DecimalIds:
    """Message ids for clients that need a number (a gateway's numeric msg-id-type): decimal
    strings of positive 63-bit integers (at most 19 digits), unique over the processes that
    make them: milliseconds since 2024 (41 bits, to 2093), the maker's `node` (7 bits: 0 the
    daemon, n the ingress worker n) and a sequence within the millisecond (15 bits). Within a
    process the clock never steps back: a clock set back, or more than 32,768 ids in one
    millisecond, go on from the last millisecond used."""

    __slots__ = ("_clock", "_last_ms", "_node", "_seq")

    def __init__(self, node: int = 0, clock: Callable[[], float] = time.time) -> None:
        if not 0 <= node < DECIMAL_ID_NODES:
            raise ValueError(f"node must be 0..{DECIMAL_ID_NODES - 1}")
        self._node = node << _SEQ_BITS
        self._clock = clock
        self._last_ms = -1
        self._seq = 0

    def next(self) -> str:
        ms = int(self._clock() * 1000) - DECIMAL_ID_EPOCH_MS
        if ms > self._last_ms:
            self._last_ms, self._seq = ms, 0
        else:
            self._seq += 1
            if self._seq >> _SEQ_BITS:
                self._last_ms, self._seq = self._last_ms + 1, 0
        return str((self._last_ms << (_SEQ_BITS + _NODE_BITS)) | self._node | self._seq)


@dataclass(slots=True, frozen=True)
class Sender:
    value: str
    kind: SenderKind

    @property
    def ton(self) -> int:
        return {SenderKind.ALPHANUMERIC: 5, SenderKind.INTERNATIONAL: 1, SenderKind.SHORTCODE: 3}[
            self.kind
        ]

    @property
    def npi(self) -> int:
        return 1 if self.kind is SenderKind.INTERNATIONAL else 0

    @property
    def address(self) -> str:
        """The address as it goes on the wire (no leading '+')."""
        return self.value.lstrip("+")


@dataclass(slots=True)
class Message:
    """One accepted message, as stored. Times are UTC epoch seconds."""

    id: str
    account: str
    to: str  # E.164 with '+'
    sender: Sender
    text: str
    encoding: Encoding
    segments: int
    concat_ref: int  # 8-bit UDH reference shared by all parts (0..255)
    created_at: float
    status: MessageStatus = MessageStatus.ACCEPTED
    callback_url: str | None = None
    reference: str | None = None
    region: str | None = None
    message_class: str = "transactional"
    receipt_mode: int = 0  # SMPP registered_delivery bits 1-0: 0 none, 1 always, 2 on failure
    provider: str | None = None
    error: str | None = None
    submitted_at: float | None = None
    done_at: float | None = None
    attempts: int = 0
    next_attempt_at: float = 0.0
    expires_at: float = 0.0
    # Segment numbers (1-based) that an earlier attempt already got an id for.
    done_segments: frozenset[int] = field(default_factory=frozenset)

@dataclass(slots=True, frozen=True)
class SegmentSubmit:
    """One segment accepted by a provider: the id it gave us, for receipt correlation."""

    seq: int
    provider_msg_id: str


@dataclass(slots=True, frozen=True)
class ReceiptUpdate:
    """A receipt as parsed from a deliver_sm, before correlation."""

    provider: str
    provider_msg_id: str
    status: MessageStatus  # DELIVERED / UNDELIVERABLE / EXPIRED / REJECTED / SUBMITTED(enroute)
    error: str | None
    received_at: float


@dataclass(slots=True, frozen=True)
class FinalNotice:
    """What a callback carries once a message reached a final state."""

    message_id: str
    account: str
    status: MessageStatus
    reference: str | None
    error: str | None
    done_at: float
    callback_url: str | None
    submitted_at: float | None
    provider: str | None

"""The store seam: what dispatch, ingress and receipts need from durable storage."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from aggregator.model import (
    FinalNotice,
    Message,
    MessageStatus,
    ReceiptUpdate,
    SegmentSubmit,
    Sender,
)

# Readiness fails while the last write failed less than this many seconds ago (write_failure).
WRITE_FAILURE_WINDOW = 10.0

# The error a message waits with when no provider can take it; release_waiting() looks for it.
NO_PROVIDER = "no provider available (no bind up or breaker open)"

# Opt-out scopes (issue 19 item 6, per-type opt-outs). "marketing" stops marketing (and
# transactional too where the account sets block_transactional_to_opted_out); "all" stops every
# class. A row written without a scope (one from before scopes existed) is "marketing": what every
# opt-out meant then. policy/rules.optout_blocks decides.
OPTOUT_MARKETING = "marketing"
OPTOUT_ALL = "all"
OPTOUT_SCOPES = (OPTOUT_MARKETING, OPTOUT_ALL)


class StoreError(Exception):
    """The store cannot take writes now (disk full, locked, closed). Callers answer 503."""


class StoreBusy(StoreError):
    """Too many writes waiting for a commit: back-pressure, not a fault."""


@dataclass(slots=True, frozen=True)
class AcceptResult:
    message: Message
    created: bool  # False when an idempotency key replayed an earlier message


@dataclass(slots=True, frozen=True)
class ReceiptResult:
    update: ReceiptUpdate
    matched: bool
    message_id: str | None
    final: FinalNotice | None  # set when this receipt made the message final


@dataclass(slots=True, frozen=True)
class MessageFilter:
    """What GET /v1/messages asks for: an account's messages, newest first, those with an id
    below `before` (the cursor), matching every field that is set."""

    status: str | None = None
    to: str | None = None  # E.164
    reference: str | None = None
    since: float | None = None  # created_at >= since (epoch seconds)
    until: float | None = None  # created_at < until
    before: str | None = None  # message id


@dataclass(slots=True, frozen=True)
class CallbackJob:
    id: int
    message_id: str
    url: str
    payload: str  # JSON body
    attempts: int
    account: str = ""  # of the message; "" for an MO callback


@dataclass(slots=True, frozen=True)
class SmppOutboxItem:
    """A deliver_sm owed to an upstream SMPP client: a receipt (kind "receipt", a message's
    final state) or a handset's message (kind "mo")."""

    id: int
    account: str
    message_id: str
    source: str  # the original sender
    dest: str  # the original destination (E.164)
    status: MessageStatus
    error: str | None
    submitted_at: float
    done_at: float
    attempts: int
    kind: str = "receipt"  # or "mo": a handset's message to the upstream (source -> dest)
    text: str | None = None


@dataclass(slots=True, frozen=True)
class OverdueSegment:
    """A part sent to a provider that has waited too long for its receipt: to ask about."""

    message_id: str
    seq: int
    provider_msg_id: str  # normalised, as receipts carry it
    sender: Sender  # query_sm names the original message's source address


class Store(Protocol):
    """What the daemon and the ingress workers need from durable storage; SqliteStore and
    PostgresStore implement it (tests/e2e/test_store_contract.py runs the same cases on both).

    Every write is durable when its coroutine returns: committed (SQLite: fsync'd in a group
    commit; PostgreSQL: its transaction committed), so an answer to a client made after it
    survives a crash. A write that raises StoreError changed nothing. Each method is one
    transaction unless its docstring says otherwise; "atomic" below means all of a method's
    rows change together or none do. Reads see every write whose coroutine has returned.
    A store refuses writes with StoreBusy when too many are queued (back-pressure, 503) and
    with StoreError when it cannot write (503; `write_failure()` says why, for readiness).
    """

    backend: str  # "sqlite" or "postgres"
    pending: int  # messages accepted and not yet submitted or final

    @property
    def pending_by_account(self) -> Mapping[str, int]:
        """`pending` per account (an account with none may be absent)."""
        ...

    @property
    def writer_address(self) -> str | None:
        """Where ingress workers send their writes (the SQLite writer process's socket);
        None: they open a store of their own without it (PostgreSQL)."""
        ...

    @property
    def writes_queued(self) -> int:
        """Writes sent and not yet committed and answered."""
        ...

    @property
    def max_writes_queued(self) -> int:
        """Writes queued before the next is refused with StoreBusy."""
        ...

    async def open(self) -> None:
        """Connect, refuse a store that is not ours or newer, migrate, recover(). A refusal
        is one StoreError line that says what is wrong (never a password)."""
        ...

    async def close(self) -> None:
        """Writes already made are committed and answered first; later ones are refused."""
        ...

    async def recover(self) -> int:
        """Claimed messages whose claimer is gone (SQLite: every claim, at open; PostgreSQL:
        this instance's from before a restart and those whose lease ran out) go back to the
        queue, due now: sent again, never lost. How many."""
        ...

    def write_failure(self) -> str | None:
        """Why writes fail now (the store is unreachable, full, read-only, its writer gone),
        None while they succeed: readiness fails with it."""
        ...

    def size_bytes(self) -> int:
        """The store's size on disk (a gauge)."""
        ...

    async def accept(self, message: Message, idempotency_key: str | None) -> AcceptResult:
        """Store a new message (atomic with its idempotency key and its marketing-history
        row). With a key this account used within 24 h, store nothing and answer the earlier
        message (created=False); the key is unique per account, across instances."""
        ...

    async def accept_many(self, messages: Sequence[Message]) -> None:
        """All in one transaction: every message is stored, or none is."""
        ...

    async def claim_due(self, now: float, limit: int,
                        held: Mapping[str, int] | None = None) -> list[Message]:
        """Move due accepted messages to queued and return them (with done_segments filled):
        each is claimed by one claimer only (atomic per message). With several accounts due,
        `limit` is shared fairly between them, counting what each has in flight (`held`, per
        account)."""
        ...

    async def next_due_at(self) -> float | None:
        """The earliest due time of a waiting message; None when none waits."""
        ...

    async def record_submitted(
        self, message_id: str, provider: str, parts: Sequence[SegmentSubmit], now: float
    ) -> None:
        """Every segment now has a provider id: the message becomes submitted (atomic with
        its segments; never steps back from a final state a receipt set first)."""
        ...

    async def reschedule(
        self,
        message_id: str,
        provider: str | None,
        parts: Sequence[SegmentSubmit],
        next_attempt_at: float,
        error: str | None,
        count_attempt: bool = True,
    ) -> None:
        """Back to accepted for another attempt; parts that got an id are kept (atomic). A
        wait for a provider to come back does not count as an attempt (validity bounds it)."""
        ...

    async def hold(self, message_id: str, next_attempt_at: float, error: str) -> None:
        """A claimed (queued) message back to scheduled until `next_attempt_at`, no attempt
        spent: a rule checked at send time keeps it back."""
        ...

    async def release_waiting(self, now: float) -> int:
        """Messages rescheduled for want of a provider become due now (one came back)."""
        ...

    async def finish(
        self, message_id: str, status: MessageStatus, error: str | None, now: float
    ) -> FinalNotice | None:
        """Make a message final (atomic with its callback and SMPP-receipt outbox rows);
        None, and nothing changes, when it was final already or is unknown."""
        ...

    async def apply_receipts(self, updates: Sequence[ReceiptUpdate]) -> list[ReceiptResult]:
        """Match receipts to segments by (provider, provider id) and apply them, one result
        per update in order; a message whose every part is final becomes final with its
        outbox rows. All of them in one transaction: the caller acknowledges the receipts
        only after it returns."""
        ...

    async def get_message(self, account: str, message_id: str) -> Message | None:
        """The account's message, None when it has none with this id."""
        ...

    async def list_messages(self, account: str, where: MessageFilter,
                            limit: int) -> list[Message]:
        """The account's messages matching `where`, newest (highest id) first."""
        ...

    async def cancel(self, account: str, message_id: str,
                     now: float) -> tuple[str, FinalNotice | None]:
        """Cancel a message not yet taken for submission: ("cancelled", its final notice), or
        ("not_found", None), or (its current status, None): too late, or cancelled before.
        Atomic with its outbox rows, and never races a claim: one of them wins."""
        ...

    async def due_callbacks(self, now: float, limit: int,
                            per_destination: int | None = None) -> list[CallbackJob]:
        """Callbacks due, at most `per_destination` per host; claimed (PostgreSQL: leased)
        so that each is sent by one instance in the normal case."""
        ...

    async def callbacks_done(self, job_ids: Sequence[int]) -> None:
        """Drop delivered callbacks (one transaction)."""
        ...

    async def callback_retry(self, job_id: int, next_attempt_at: float, error: str) -> None:
        """One attempt more; due again at `next_attempt_at`."""
        ...

    async def callback_give_up(self, job_id: int, error: str) -> None:
        """Kept, never sent again."""
        ...

    async def due_smpp_receipts(
        self, account: str, now: float, limit: int
    ) -> list[SmppOutboxItem]:
        """Receipts and MO owed to the account's bound SMPP clients, oldest first; claimed
        like callbacks."""
        ...

    async def enqueue_smpp_mo(
        self, account: str, source: str, dest: str, text: str, now: float
    ) -> None:
        """A handset's message for the account's SMPP receiver, sent like a receipt."""
        ...

    async def smpp_receipt_done(self, receipt_id: int) -> None:
        """Delivered: dropped."""
        ...

    async def smpp_receipt_retry(
        self, receipt_id: int, next_attempt_at: float, give_up: bool
    ) -> None:
        """One attempt more; due again at `next_attempt_at`, or never (`give_up`)."""
        ...

    async def add_optout(self, account: str, number: str, source: str, now: float,
                         scope: str = OPTOUT_MARKETING) -> bool:
        """Record an opt-out of `scope` (OPTOUT_SCOPES) with when and where from. An existing
        "marketing" opt-out asked for again with "all" is widened (its time, source and scope
        become the new one's). True when added or widened; False when the number was already
        opted out with this scope or a wider one (nothing changes: never narrowed)."""
        ...

    async def remove_optout(self, account: str, number: str) -> bool:
        """Removed (no record kept); False when there was none."""
        ...

    async def is_opted_out(self, account: str, number: str) -> bool:
        """Opted out with any scope."""
        ...

    async def optout_scope(self, account: str, number: str) -> str | None:
        """The scope of the number's opt-out from this account, None when there is none: one
        primary-key read (the accept path makes it for every message)."""
        ...

    async def list_optouts(
        self, account: str, number: str | None, limit: int
    ) -> list[tuple[str, float, str, str]]:
        """(number, created_at, source, scope), oldest first."""
        ...

    async def marketing_history(
        self, account: str, number: str, since: float
    ) -> tuple[int, float | None]:
        """Marketing messages accepted for the number since `since`, and the latest's time."""
        ...

    async def account_for_reply(self, number: str, sender: str) -> str | None:
        """The account that last sent to `number` from `sender`: a reply is for it."""
        ...

    async def add_consent(self, account: str, number: str, scope: str, source: str,
                          consented_at: float, now: float) -> int:
        """Record a recipient's consent; its id."""
        ...

    async def has_consent(self, account: str, number: str, scope: str) -> bool:
        """A consent for `scope` (or for "all") is on record."""
        ...

    async def list_consents(self, account: str, number: str | None,
                            limit: int) -> list[tuple[int, str, str, str, float, float]]:
        """(id, number, scope, source, consented_at, recorded_at), oldest first."""
        ...

    async def remove_optout_logged(self, account: str, number: str, removed_by: str,
                                   now: float) -> bool:
        """Remove an opt-out and record the removal (atomic); False when there was none."""
        ...

    async def list_optout_removals(self, account: str, number: str | None, limit: int
                                   ) -> list[tuple[str, float, str, float, str, str]]:
        """(number, opted_out_at, source, removed_at, removed_by, scope), oldest first: the
        scope the opt-out had when it was removed."""
        ...

    async def send_rules_state(
        self, keys: Sequence[tuple[str, str]], marketing: Sequence[tuple[str, str]],
        since: float,
    ) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], list[float]]]:
        """Which (account, number) of `keys` opted out, with the opt-out's scope; the marketing
        accepted for each of `marketing` since `since` (times). For the rules checked again at
        send time; one read."""
        ...

    async def enqueue_callback(self, url: str, payload: str, now: float) -> None:
        """An HTTP POST for the callback sender that is not about a message (e.g. an MO)."""
        ...

    async def count_by_status(self, states: Collection[str] | None = None) -> dict[str, int]:
        """Messages per status. `states`: the ones the caller reads; a store may count only
        those (cheaper where indexes serve them)."""
        ...

    async def claim_overdue_segments(
        self, provider: str, submitted_before: float, queried_before: float, now: float,
        limit: int,
    ) -> list[OverdueSegment]:
        """Parts sent to `provider` that wait too long for a receipt, to ask about: marked as
        queried now (atomic), so the next claim skips them until `queried_before` passes."""
        ...

    async def expire_unreceipted(
        self, submitted_before: float, now: float, limit: int, error: str
    ) -> list[FinalNotice]:
        """Messages submitted before `submitted_before` still without a final receipt become
        final "unknown", each with its outbox rows; their notices."""
        ...

    async def erase_texts(self, keep_text: str, limit: int) -> int:
        """Blank up to `limit` texts `keep_text` no longer keeps; how many."""
        ...

    async def purge_before(self, cutoff: float, limit: int) -> int:
        """Delete up to `limit` final messages created before `cutoff` with their rows; how
        many."""
        ...

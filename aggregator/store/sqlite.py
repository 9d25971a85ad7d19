"""SQLite store: WAL, synchronous=FULL, one writer process that commits operations in groups.

This is the facade: the Store contract (base.py) over three parts, each in a module of its own:
the schema and its migrations (sqlite_schema.py), the writes (writes.py: one function per
operation, run in groups by the writer process, writer_process.py, which sqlite_writer.py
starts and talks to), and the reads here, on connections of their own (WAL lets them run beside
the writer). Thousands of accepts per second share a few fsyncs, and a write's future resolves
only after its data is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aggregator import metrics
from aggregator.log import get_logger
from aggregator.model import (
    FINAL_STATUSES,
    FinalNotice,
    Message,
    MessageStatus,
    ReceiptUpdate,
    SegmentSubmit,
    Sender,
    SenderKind,
)
from aggregator.store.base import (
    OPTOUT_MARKETING,
    AcceptResult,
    CallbackJob,
    MessageFilter,
    OverdueSegment,
    ReceiptResult,
    SmppOutboxItem,
    StoreError,
)
from aggregator.store.coalesce import Coalescer
from aggregator.store.optout_count import Generation, generation_path
from aggregator.store.optout_view import OptoutView
from aggregator.store.rows import (
    accept_result,
    marketing_rows,
    message_conditions,
    message_row,
    parts_rows,
    row_to_message,
)
from aggregator.store.sqlite_schema import open_database
from aggregator.store.sqlite_writer import WriterClient
from aggregator.store.writer_process import GATHER_S
from aggregator.store.writes import (
    BUSY_TIMEOUT,
    MESSAGE_COLUMNS,
    PENDING,
    TOOLS,
    WAITING,
    Accepted,
    Submitted,
    connect,
    waiting_added,
    waiting_by_account,
    waiting_due,
)
from aggregator.store.writes import recover as recover_claims

log = get_logger("smsagg.store")

_COUNT_ALL = "SELECT status, COUNT(*) FROM messages GROUP BY status"  # the whole table
# The statuses not final, each counted on its partial index (sqlite_schema.py, 5 -> 6).
_OPEN = frozenset({"accepted", "scheduled", "queued", "submitted"})
_COUNT_OPEN = (
    "SELECT status, COUNT(*) FROM messages INDEXED BY messages_due_account "
    "WHERE status IN ('accepted', 'scheduled') GROUP BY status "
    "UNION ALL SELECT 'queued', COUNT(*) FROM messages INDEXED BY messages_queued "
    "WHERE status = 'queued' "
    "UNION ALL SELECT 'submitted', COUNT(*) FROM messages INDEXED BY messages_submitted "
    "WHERE status = 'submitted'")
_PENDING_BY_ACCOUNT = (
    "SELECT account, COUNT(*) FROM (SELECT account FROM messages "
    "INDEXED BY messages_due_account WHERE status IN ('accepted', 'scheduled') "
    "UNION ALL SELECT account FROM messages INDEXED BY messages_queued "
    "WHERE status = 'queued') GROUP BY account")


@dataclass(slots=True)
class DueWatch:
    """A claim's read of the next due time, kept exact by the writes sent after the claim:
    an accept can only make it sooner, to its own message's due time."""

    known: bool = False  # the claim read it (it claimed fewer than its limit)
    due: float | None = None  # what the claim read
    sooner: float | None = None  # the earliest due time of what was accepted since

    def read(self, due: float | None) -> None:
        self.known, self.due = True, due

    def accepted(self, due: float) -> None:
        if self.sooner is None or due < self.sooner:
            self.sooner = due

    def next_due(self) -> float | None:
        if self.due is None or self.sooner is None:
            return self.sooner if self.due is None else self.due
        return min(self.due, self.sooner)


POINT_KEYS = 64  # send-time opt-out reads of at most this many numbers run on the event loop
# next_due_at from the claim waits for the writer's next answer, at most this long (about two
# rounds: a gather and a commit): a quiet writer sends none.
ROUND_WAIT = 0.005


class SqliteStore:
    backend = "sqlite"

    def __init__(self, path: str, *, commit_batch: int = 1000, commit_gather: float = GATHER_S,
                 max_writes_queued: int = 50_000, busy_timeout: float = BUSY_TIMEOUT,
                 on_commit: Callable[[float], None] | None = None,
                 on_lost: Callable[[str], None] | None = None,
                 on_accepted: Callable[[], None] | None = None,
                 join: str | None = None) -> None:
        """`on_commit` gets each group commit's seconds (a metric). The writes run in a child
        process, where this process's event loop cannot keep them waiting for the GIL;
        `on_lost` hears why, if that process ends while the store is open: nothing can be
        written any more. The writer process also takes ingress workers' writes directly
        (`writer_address`); `on_accepted` hears when it has stored some that wait to be sent.
        `join`: that socket of a running daemon's writer process, used instead of starting one
        (an ingress worker: its writes go there, its reads to its own WAL connections)."""
        self.path = path
        self.busy_timeout = busy_timeout
        self._on_accepted = on_accepted
        self.writer = WriterClient(path, busy_timeout=busy_timeout, commit_batch=commit_batch,
                                   commit_gather=commit_gather,
                                   max_writes_queued=max_writes_queued, on_commit=on_commit,
                                   on_lost=on_lost, on_pending=self._workers_changed)
        self._submit = self.writer.submit
        # A loop turn's record_submitted calls go as one writer operation (store/coalesce.py):
        # at 1,000 msg/s paced, 4 to 12 calls per operation instead of one each.
        self._record: Coalescer[Submitted, str | None] = Coalescer(
            "record_submitted_many",
            lambda items: self._submit("record_submitted_many", items, weight=len(items)))
        # A loop turn's accepts likewise (accept_each): at 1,000 msg/s paced, 1.15 accepts per
        # operation on a quiet machine, 2.2 on a loaded one (1.5 in an ingress worker). A group
        # that fails on its own data is sent again one accept per operation, so that one bad
        # message fails only its own request.
        self._accepts: Coalescer[Accepted, tuple[Any, ...] | None] = Coalescer(
            "accept_each", self._send_accepts, lambda item: self._send_accepts([item], True))
        # What the writes sent since the last claim did to the next due time it read
        # (next_due_at answers from it, sparing the dispatcher a second operation per claim).
        self._due_watch: DueWatch | None = None
        self.pending = 0
        # The pending count per account (its own max_pending); accounts at 0 are dropped.
        self.pending_by_account: Counter[str] = Counter()
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        # The event loop's own connection, for primary-key reads on the accept path (optout_scope).
        self._point: sqlite3.Connection | None = None
        # The opt-outs in memory, exact while current (optout_view.py); None: none (reads).
        self._optouts: OptoutView | None = None
        self._closed = True
        self._join = join

    @property
    def writer_address(self) -> str | None:
        """Where ingress workers reach the writer process (None before open, or joined)."""
        return self.writer.address

    @property
    def writes_queued(self) -> int:
        """Writes asked for and not yet answered: sent, or gathered for the end of this loop
        turn (each call of a gathered operation counts)."""
        return self.writer.writes_queued + self._accepts.waiting + self._record.waiting

    @property
    def max_writes_queued(self) -> int:
        return self.writer.max_writes_queued

    @property
    def commits(self) -> int:
        """Group commits done (tests, tools)."""
        return self.writer.figures.commits

    @property
    def write_errors(self) -> int:
        return self.writer.figures.write_errors

    def write_failure(self) -> str | None:
        return self.writer.write_failure()

    # ---- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Started (the daemon): check and migrate the file, recover (claims from before go
        back to the queue), start the writer process. Joined (an ingress worker): connect to the
        daemon's writer. Then the reading connections and the pending counts."""
        if self._join is not None:
            await self.writer.join(self._join)
        else:
            recovered = await asyncio.to_thread(self._open_and_recover)
            if recovered:
                log.info("store_claims_recovered", backend="sqlite", messages=recovered)
            await self.writer.start()
        self._closed = False
        self._reader = await asyncio.to_thread(connect, self.path, self.busy_timeout)
        self._point = await asyncio.to_thread(connect, self.path, 0.0)  # busy: never waits
        self._optouts = self._optout_view(self._join or self.writer.address)
        counts = await self.count_by_status(PENDING)
        self.pending = sum(counts.get(s, 0) for s in PENDING)
        self.pending_by_account = Counter(dict(await asyncio.to_thread(
            self._read, _PENDING_BY_ACCOUNT, ())))

    def _optout_view(self, writer_address: str | None) -> OptoutView | None:
        """The in-memory opt-outs, kept current by the writer process's count beside its
        socket; without it (a writer that keeps none), every check reads SQLite."""
        if writer_address is None:
            return None
        try:
            generation = Generation(generation_path(writer_address))
        except OSError as exc:
            log.warning("store_optout_view_off", error=str(exc))
            return None
        return OptoutView(generation, lambda limit: asyncio.to_thread(
            self._read, "SELECT account, number, scope FROM optouts LIMIT ?", (limit,)))

    def _open_and_recover(self) -> int:
        """Check and migrate the file, then recover (writes.recover) on that connection,
        before the writer process starts and anything is claimed."""
        conn = open_database(self.path, self.busy_timeout)
        try:
            return recover_claims(conn)
        finally:
            conn.close()  # the writer process opens its own

    async def recover(self) -> int:
        """Messages claimed (queued) by a dispatcher that is gone are due again: resend, never
        lose. How many. One instance, so every claim is this one's: open() does it before the
        writer starts; later, only a tool would."""
        self._due_unknown()
        recovered: int = await self._submit("recover")
        return recovered

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._accepts.flush()  # the writes already made are answered before the writer stops
        self._record.flush()
        if self._optouts is not None:
            await self._optouts.close()
            self._optouts = None
        await self.writer.close()
        if self._reader is not None:
            self._reader.close()
        if self._point is not None:
            self._point.close()
            self._point = None

    def _workers_changed(self, changes: dict[str, int], due: float | None) -> None:
        """The ingress workers' writes, straight to the writer: {account: pending change}, and
        the earliest due time of the waiting messages they stored."""
        self._due_sooner(due)
        self.pending += sum(changes.values())
        self.pending_by_account.update(changes)
        for account in [a for a, n in self.pending_by_account.items() if n <= 0]:
            del self.pending_by_account[account]
        if self._on_accepted is not None and any(n > 0 for n in changes.values()):
            self._on_accepted()

    async def run_on_writer(self, name: str, *args: Any) -> Any:
        """Run the tool `name` (writes.TOOLS: a PRAGMA, a statement trace) on the writer's
        connection between transactions, after the writes queued before it. For tests and
        tools: e.g. PRAGMA max_page_count (a full disk) or query_only (a read-only file)."""
        if name not in TOOLS:
            raise StoreError(f"no writer tool {name!r}")
        self._due_unknown()
        return await self._submit(name, *args)

    # ---- writes ------------------------------------------------------------------------------

    async def accept_many(self, messages: Sequence[Message]) -> None:
        """Insert several messages in one transaction: all are stored, or none."""
        rows = [message_row(m) for m in messages]
        self._due_sooner(waiting_due(rows))
        await self._submit("accept_many", rows, marketing_rows(messages))
        self.pending += waiting_added("accept_many", (rows,), None)
        self.pending_by_account.update(waiting_by_account("accept_many", (rows,), None))

    async def accept(self, message: Message, idempotency_key: str | None) -> AcceptResult:
        row = message_row(message)
        prior = await self._accepts((row, idempotency_key))
        if prior is None and message.status in WAITING:  # stored, not an idempotent repeat
            # Counted here rather than by waiting_by_account's Counter: ~5 µs an accept.
            self.pending += 1
            self.pending_by_account[message.account] += 1
        return accept_result(message, prior)

    def _send_accepts(self, items: list[Accepted], alone: bool = False) -> asyncio.Future[Any]:
        """Send accepts (Coalescer), telling the next-due watch when they are sent: a claim
        sent earlier in this loop turn runs before them."""
        self._due_sooner(waiting_due([row for row, _ in items]))
        if alone:
            return self._submit("accept", *items[0])
        return self._submit("accept_each", items, weight=len(items))

    async def claim_due(self, now: float, limit: int,
                        held: Mapping[str, int] | None = None) -> list[Message]:
        """`held`: messages per account the caller has in flight (fair shares)."""
        watch = self._due_watch = DueWatch()  # from here: the writes sent after the claim
        rows, done, looked, due = await self._submit("claim_due_next", now, limit,
                                                     dict(held or {}))
        if self._due_watch is watch:
            if looked:
                watch.read(due)
            else:
                self._due_watch = None
        messages = [row_to_message(r) for r in rows]
        for m in messages:
            if m.id in done:
                m.done_segments = frozenset(done[m.id])
        return messages

    async def next_due_at(self) -> float | None:
        """Answered from the last claim when it read the time (it claimed less than its
        limit): the writes sent before the claim ran before it in the writer (one
        connection's calls run in order), and of those sent since, accepts bring their due
        times (DueWatch) and anything else (a reschedule, a hold, a release) sends this to the
        writer. At 1,000 msg/s paced, one writer operation fewer per idle claim.

        It answers when the writer next answers (at most ROUND_WAIT later), as the operation
        did: the dispatcher's next claim then takes what that round stored. Answered at once,
        the dispatcher claimed about twice as often, half as many messages each, and those
        smaller batches cost more submit-record and receipt operations than the one saved
        (with ingress workers, the daemon spent 20-30 µs more per message)."""
        watch = self._due_watch
        if watch is not None and watch.known:
            await self.writer.round_done(ROUND_WAIT)
            if self._due_watch is watch:  # no write since that it cannot account for
                self._due_watch = None
                metrics.store_next_due_reused.inc()
                return watch.next_due()
        self._due_watch = None
        result: float | None = await self._submit("next_due_at")
        return result

    async def record_submitted(
        self, message_id: str, provider: str, parts: Sequence[SegmentSubmit], now: float
    ) -> None:
        # Not `self.pending -= await ...`: that reads the count before the await and writes
        # it back after, losing every accept counted meanwhile (the count drifted negative).
        account = await self._record((message_id, provider, parts_rows(parts), now))
        if account is not None:
            self.pending -= 1
            self._less_pending(account)

    async def reschedule(
        self,
        message_id: str,
        provider: str | None,
        parts: Sequence[SegmentSubmit],
        next_attempt_at: float,
        error: str | None,
        count_attempt: bool = True,
    ) -> None:
        self._due_unknown()
        await self._submit("reschedule", message_id, provider, parts_rows(parts), next_attempt_at,
                           error, count_attempt, time.time())

    async def hold(self, message_id: str, next_attempt_at: float, error: str) -> None:
        """A claimed message back to scheduled until `next_attempt_at` (a send-time rule)."""
        self._due_unknown()
        await self._submit("hold", message_id, next_attempt_at, error)

    async def release_waiting(self, now: float) -> int:
        """A provider came back: messages waiting for one are due now."""
        self._due_unknown()
        released: int = await self._submit("release_waiting", now)
        return released

    async def finish(
        self, message_id: str, status: MessageStatus, error: str | None, now: float
    ) -> FinalNotice | None:
        assert status in FINAL_STATUSES
        notice, was_pending = await self._submit("finish", message_id, status, error, now)
        if was_pending:
            self.pending -= 1
            if notice is not None:
                self._less_pending(notice.account)
        result: FinalNotice | None = notice
        return result

    async def cancel(self, account: str, message_id: str,
                     now: float) -> tuple[str, FinalNotice | None]:
        outcome, notice, was_pending = await self._submit("cancel", account, message_id, now)
        if was_pending:
            self.pending -= 1
            self._less_pending(account)
        return outcome, notice

    async def apply_receipts(self, updates: Sequence[ReceiptUpdate]) -> list[ReceiptResult]:
        applied = await self._submit("apply_receipts", list(updates))
        self.pending -= sum(1 for _, was_pending in applied if was_pending)
        for result, was_pending in applied:
            if was_pending and result.final is not None:
                self._less_pending(result.final.account)
        return [result for result, _ in applied]

    # ---- receipts that never come ------------------------------------------------------------

    async def claim_overdue_segments(self, provider: str, submitted_before: float,
                                     queried_before: float, now: float,
                                     limit: int) -> list[OverdueSegment]:
        """Parts sent to `provider` that wait for a receipt too long, to ask about: marked as
        queried now, so the next claim skips them until `queried_before` passes them."""
        rows = await self._submit("claim_overdue_segments", provider, submitted_before,
                                  queried_before, now, limit)
        return [OverdueSegment(r[0], r[1], r[2], Sender(r[3], SenderKind(r[4]))) for r in rows]

    async def expire_unreceipted(self, submitted_before: float, now: float, limit: int,
                                 error: str) -> list[FinalNotice]:
        """Messages submitted before `submitted_before` still without a final receipt become
        final 'unknown'; returns their notices."""
        notices: list[FinalNotice] = await self._submit(
            "expire_unreceipted", submitted_before, now, limit, error)
        return notices

    def _due_sooner(self, due: float | None) -> None:
        """A write sent now stores waiting messages, the earliest due at `due` (None: none)."""
        if self._due_watch is not None and due is not None:
            self._due_watch.accepted(due)

    def _due_unknown(self) -> None:
        """A write sent now may make messages due sooner, by how much is not known here."""
        self._due_watch = None

    def _less_pending(self, account: str) -> None:
        left = self.pending_by_account[account] - 1
        if left > 0:
            self.pending_by_account[account] = left
        else:  # keep the map to accounts with messages waiting
            self.pending_by_account.pop(account, None)

    # ---- callbacks outbox --------------------------------------------------------------------

    async def due_callbacks(self, now: float, limit: int,
                            per_destination: int | None = None) -> list[CallbackJob]:
        rows = await self._submit("due_callbacks", now, limit, per_destination)
        return [CallbackJob(*r) for r in rows]

    async def callbacks_done(self, job_ids: Sequence[int]) -> None:
        """Drop delivered callbacks: the sender hands in all of a loop turn's at once."""
        await self._submit("callbacks_done", list(job_ids))

    async def callback_retry(self, job_id: int, next_attempt_at: float, error: str) -> None:
        await self._submit("callback_retry", job_id, next_attempt_at, error)

    async def callback_give_up(self, job_id: int, error: str) -> None:
        await self._submit("callback_give_up", job_id, error)

    async def enqueue_callback(self, url: str, payload: str, now: float) -> None:
        """An HTTP POST for the callback sender that is not about a message (e.g. an MO)."""
        await self._submit("enqueue_callback", url, payload, now)

    # ---- SMPP receipts outbox -----------------------------------------------------------------

    async def due_smpp_receipts(
        self, account: str, now: float, limit: int
    ) -> list[SmppOutboxItem]:
        rows = await self._submit("due_smpp_receipts", account, now, limit)
        return [
            SmppOutboxItem(r[0], r[1], r[2], r[3], r[4], MessageStatus(r[5]), r[6], r[7], r[8],
                           r[9], r[10], r[11])
            for r in rows
        ]

    async def enqueue_smpp_mo(self, account: str, source: str, dest: str, text: str,
                              now: float) -> None:
        """A handset's message for an account's bound SMPP receiver, sent like a receipt."""
        await self._submit("enqueue_smpp_mo", account, source, dest, text, now)

    async def smpp_receipt_done(self, receipt_id: int) -> None:
        await self._submit("smpp_receipt_done", receipt_id)

    async def smpp_receipt_retry(self, receipt_id: int, next_attempt_at: float,
                                 give_up: bool) -> None:
        await self._submit("smpp_receipt_retry", receipt_id, next_attempt_at, give_up)

    # ---- opt-outs and marketing frequency -------------------------------------------------

    async def add_optout(self, account: str, number: str, source: str, now: float,
                         scope: str = OPTOUT_MARKETING) -> bool:
        """Record an opt-out (kept with when and where from) or widen a "marketing" one to
        "all"; False if it was already there with this scope or a wider one."""
        added: bool = await self._submit("add_optout", account, number, source, now, scope)
        return added

    async def remove_optout(self, account: str, number: str) -> bool:
        removed: bool = await self._submit("remove_optout", account, number)
        return removed

    # ---- consent records and opt-out removals (schema 2) ------------------------------------

    async def add_consent(self, account: str, number: str, scope: str, source: str,
                          consented_at: float, now: float) -> int:
        """Record a recipient's consent; its id."""
        consent_id: int = await self._submit("add_consent", account, number, scope, source,
                                             consented_at, now)
        return consent_id

    async def has_consent(self, account: str, number: str, scope: str) -> bool:
        """A consent for ``scope`` (or for "all") is on record for this number."""
        rows = await asyncio.to_thread(
            self._read, "SELECT 1 FROM consents WHERE account = ? AND number = ? "
            "AND scope IN (?, 'all') LIMIT 1", (account, number, scope))
        return bool(rows)

    async def list_consents(self, account: str, number: str | None,
                            limit: int) -> list[tuple[int, str, str, str, float, float]]:
        """(id, number, scope, source, consented_at, recorded_at), oldest first."""
        rows = await self._list("SELECT id, number, scope, source, consented_at, "
                                "recorded_at FROM consents", account, number, "id", limit)
        return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    async def remove_optout_logged(self, account: str, number: str, removed_by: str,
                                   now: float) -> bool:
        """Remove an opt-out, keeping a record of it (when it was made, by whom removed)."""
        removed: bool = await self._submit("remove_optout_logged", account, number, removed_by,
                                           now)
        return removed

    async def list_optout_removals(self, account: str, number: str | None, limit: int
                                   ) -> list[tuple[str, float, str, float, str, str]]:
        """(number, opted_out_at, source, removed_at, removed_by, scope), oldest first."""
        rows = await self._list("SELECT number, opted_out_at, source, removed_at, removed_by, "
                                "scope FROM optout_removals", account, number, "id", limit)
        return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    # ---- retention (writes.erase_texts / purge_before) -------------------------------------

    async def erase_texts(self, keep_text: str, limit: int) -> int:
        """Blank up to ``limit`` texts ``keep_text`` no longer keeps; how many were blanked."""
        erased: int = await self._submit("erase_texts", keep_text, limit)
        return erased

    async def purge_before(self, cutoff: float, limit: int) -> int:
        """Delete up to ``limit`` final messages created before ``cutoff`` (and their rows)."""
        purged: int = await self._submit("purge_before", cutoff, limit)
        return purged

    async def is_opted_out(self, account: str, number: str) -> bool:
        rows = await asyncio.to_thread(
            self._read, "SELECT 1 FROM optouts WHERE account = ? AND number = ?",
            (account, number))
        return bool(rows)

    async def optout_scope(self, account: str, number: str) -> str | None:
        """The scope of the number's opt-out, None without one. Every accept makes this read:
        from the in-memory copy while it is current (optout_view.py: about 1 µs of CPU where
        the read cost about 28 at 1,000 msg/s paced); otherwise on the event loop's own
        connection: a primary-key read in a WAL database never waits for the writer, where a
        thread hop costs ten times that
        (tests/bench_optout_gate.py). Busy (a WAL recovery): the threaded reader, which waits."""
        if self._optouts is not None:
            scope = self._optouts.scope(account, number)
            if scope is not False:
                return scope
        sql = "SELECT scope FROM optouts WHERE account = ? AND number = ?"
        rows = self._point_rows(sql, (account, number))
        if rows is None:
            rows = await asyncio.to_thread(self._read, sql, (account, number))
        return str(rows[0][0]) if rows else None

    def _point_rows(self, sql: str, args: Sequence[Any]) -> list[Any] | None:
        """A short read on the event loop's own connection; None when it is busy (a WAL
        recovery), for the caller's threaded reader, which waits."""
        if self._point is None:
            raise StoreError("store is closed")
        try:
            return self._point.execute(sql, args).fetchall()  # all: ends the read
        except sqlite3.OperationalError:
            return None
        except sqlite3.Error as exc:
            raise StoreError(f"read failed: {exc}") from exc

    async def list_optouts(self, account: str, number: str | None,
                           limit: int) -> list[tuple[str, float, str, str]]:
        """(number, created_at, source, scope), oldest first."""
        rows = await self._list("SELECT number, created_at, source, scope FROM optouts",
                                account, number, "created_at", limit)
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def _list(self, select: str, account: str, number: str | None, order: str,
                    limit: int) -> list[Any]:
        """`select` for the account's rows (one number's, if given), by `order`."""
        sql = f"{select} WHERE account = ?"
        args: list[Any] = [account]
        if number is not None:
            sql += " AND number = ?"
            args.append(number)
        return await asyncio.to_thread(self._read, f"{sql} ORDER BY {order} LIMIT ?",
                                       (*args, limit))

    async def marketing_history(self, account: str, number: str,
                                since: float) -> tuple[int, float | None]:
        """Marketing messages accepted for this number since `since`, and the latest one."""
        rows = await asyncio.to_thread(
            self._read, "SELECT COUNT(*), MAX(sent_at) FROM marketing_log "
            "WHERE account = ? AND number = ? AND sent_at >= ?", (account, number, since))
        return int(rows[0][0]), rows[0][1]

    async def send_rules_state(
        self, keys: Sequence[tuple[str, str]], marketing: Sequence[tuple[str, str]],
        since: float,
    ) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], list[float]]]:
        """For the rules checked at send time, in one read: which (account, number) of `keys`
        opted out (with the opt-out's scope), and when marketing was accepted for each of
        `marketing` since `since`."""
        if not marketing and self._optouts is not None:
            found = self._optouts.scopes(list(keys))
            if found is not None:
                return found, {}
        if not marketing and 0 < len(keys) <= POINT_KEYS:
            # The usual claim: a few transactional messages. One statement on the event loop's
            # connection, as optout_scope(): the thread hop cost more than the read (futex
            # wake-ups, the GIL handed back and forth); tests/bench_optout_gate.py.
            marks = ",".join(["(?, ?)"] * len(keys))
            rows = self._point_rows(  # CROSS JOIN: a primary-key search per number
                f"SELECT o.account, o.number, o.scope FROM (VALUES {marks}) AS k CROSS JOIN "
                "optouts AS o ON o.account = k.column1 AND o.number = k.column2",
                [v for key in keys for v in key])
            if rows is not None:
                return {(r[0], r[1]): r[2] for r in rows}, {}
        return await asyncio.to_thread(self._send_rules_state, keys, marketing, since)

    def _send_rules_state(
        self, keys: Sequence[tuple[str, str]], marketing: Sequence[tuple[str, str]],
        since: float,
    ) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], list[float]]]:
        if self._reader is None:
            raise StoreError("store is closed")
        opted_out: dict[tuple[str, str], str] = {}
        sent: dict[tuple[str, str], list[float]] = {}
        try:
            with self._reader_lock:
                conn = self._reader
                for key in keys:  # primary-key lookups
                    row = conn.execute("SELECT scope FROM optouts WHERE account = ? "
                                       "AND number = ?", key).fetchone()
                    if row is not None:
                        opted_out[key] = row[0]
                for key in marketing:  # marketing_log_by_number
                    times = [r[0] for r in conn.execute(
                        "SELECT sent_at FROM marketing_log WHERE account = ? AND number = ? "
                        "AND sent_at >= ?", (*key, since))]
                    if times:
                        sent[key] = times
        except sqlite3.Error as exc:
            raise StoreError(f"reading opt-outs and marketing history failed: {exc}") from exc
        return opted_out, sent

    async def account_for_reply(self, number: str, sender: str) -> str | None:
        """The account that last sent to this number from this sender: a reply is for it."""
        rows = await asyncio.to_thread(
            self._read, "SELECT account FROM messages WHERE dest = ? AND sender = ? "
            "ORDER BY created_at DESC LIMIT 1", (number, sender))
        return rows[0][0] if rows else None

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(self.path + suffix)
        return total

    # ---- reads (own connection, WAL lets them run beside the writer) --------------------------

    def _read(self, sql: str, args: Sequence[Any]) -> list[Any]:
        if self._reader is None:
            raise StoreError("store is closed")
        with self._reader_lock:
            return self._reader.execute(sql, args).fetchall()

    async def get_message(self, account: str, message_id: str) -> Message | None:
        rows = await asyncio.to_thread(
            self._read,
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ? AND account = ?",
            (message_id, account),
        )
        return row_to_message(rows[0]) if rows else None

    async def list_messages(self, account: str, where: MessageFilter,
                            limit: int) -> list[Message]:
        conditions = message_conditions(where)
        sql = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE account = ?" + "".join(
            f" AND {clause} ?" for clause, _ in conditions)
        args = [account, *(value for _, value in conditions)]
        rows = await asyncio.to_thread(self._read, sql + " ORDER BY id DESC LIMIT ?",
                                       (*args, limit))
        return [row_to_message(r) for r in rows]

    async def count_by_status(self, states: Collection[str] | None = None) -> dict[str, int]:
        """Messages per status; with `states` all of them not final (what is waiting, queued
        or submitted: the gauges, the pending count), only those, read from their partial
        indexes instead of the whole table."""
        sql = _COUNT_OPEN if states is not None and _OPEN.issuperset(states) else _COUNT_ALL
        if self._reader is None:
            conn = await asyncio.to_thread(connect, self.path)
            try:
                rows = conn.execute(sql).fetchall()
            finally:
                conn.close()
        else:
            rows = await asyncio.to_thread(self._read, sql, ())
        return {status: count for status, count in rows
                if count and (states is None or status in states)}

    async def segments_of(self, message_id: str) -> list[tuple[int, str, str, str]]:
        """(seq, provider, provider_msg_id, status) of a message's parts; for tests and tools."""
        rows = await asyncio.to_thread(
            self._read,
            "SELECT seq, provider, provider_msg_id, status FROM segments "
            "WHERE message_id = ? ORDER BY seq",
            (message_id,),
        )
        return [tuple(r) for r in rows]

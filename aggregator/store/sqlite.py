"""SQLite store: WAL, synchronous=FULL, one writer thread that commits operations in groups.

Every write is a function run inside the writer thread; the thread takes all operations waiting
(up to `commit_batch`), runs each in its own savepoint inside one transaction, commits once and
then resolves their futures on the event loop. Thousands of accepts per second share a few fsyncs,
and an operation's future resolves only after its data is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from aggregator.model import (
    FINAL_STATUSES,
    Encoding,
    FinalNotice,
    Message,
    MessageStatus,
    ReceiptUpdate,
    SegmentSubmit,
    Sender,
    SenderKind,
)
from aggregator.store.base import (
    NO_PROVIDER,
    AcceptResult,
    CallbackJob,
    ReceiptResult,
    SmppReceipt,
    StoreBusy,
    StoreError,
)
from aggregator.timefmt import iso_utc

T = TypeVar("T")

SCHEMA_VERSION = 1  # == len(MIGRATIONS)
IDEMPOTENCY_TTL = 24 * 3600.0
# Seconds a write waits for a lock another process holds before it fails (HTTP answers 503):
# short, so a request never hangs long on a locked database.
BUSY_TIMEOUT = 2.0
# Readiness fails while the last write failed less than this many seconds ago.
WRITE_FAILURE_WINDOW = 10.0

# Versioned migrations: index i brings the schema from version i to i + 1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        dest TEXT NOT NULL,
        region TEXT,
        sender TEXT NOT NULL,
        sender_kind TEXT NOT NULL,
        body TEXT NOT NULL,
        encoding TEXT NOT NULL,
        segments INTEGER NOT NULL,
        concat_ref INTEGER NOT NULL,
        message_class TEXT NOT NULL,
        receipt_mode INTEGER NOT NULL,
        status TEXT NOT NULL,
        callback_url TEXT,
        reference TEXT,
        provider TEXT,
        error TEXT,
        created_at REAL NOT NULL,
        submitted_at REAL,
        done_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX messages_due ON messages (next_attempt_at)
        WHERE status IN ('accepted', 'scheduled');
    CREATE INDEX messages_by_dest ON messages (dest, created_at);
    CREATE INDEX messages_status ON messages (status);
    CREATE TABLE segments (
        message_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        provider TEXT NOT NULL,
        provider_msg_id TEXT NOT NULL,
        status TEXT NOT NULL,
        error TEXT,
        submitted_at REAL NOT NULL,
        done_at REAL,
        PRIMARY KEY (message_id, seq)
    ) WITHOUT ROWID;
    CREATE INDEX segments_by_provider_id ON segments (provider, provider_msg_id);
    CREATE TABLE idempotency (
        account TEXT NOT NULL,
        key TEXT NOT NULL,
        message_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (account, key)
    ) WITHOUT ROWID;
    CREATE TABLE callbacks (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL,
        url TEXT NOT NULL,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT,
        given_up INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX callbacks_due ON callbacks (next_attempt_at) WHERE given_up = 0;
    CREATE TABLE smpp_receipts (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL DEFAULT 'receipt',
        text TEXT,
        account TEXT NOT NULL,
        message_id TEXT NOT NULL,
        source TEXT NOT NULL,
        dest TEXT NOT NULL,
        status TEXT NOT NULL,
        error TEXT,
        submitted_at REAL NOT NULL,
        done_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        given_up INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX smpp_receipts_due ON smpp_receipts (account, next_attempt_at)
        WHERE given_up = 0;
    CREATE TABLE optouts (
        account TEXT NOT NULL,
        number TEXT NOT NULL,
        created_at REAL NOT NULL,
        source TEXT NOT NULL,
        PRIMARY KEY (account, number)
    ) WITHOUT ROWID;
    CREATE TABLE marketing_log (
        account TEXT NOT NULL,
        number TEXT NOT NULL,
        sent_at REAL NOT NULL
    );
    CREATE INDEX marketing_log_by_number ON marketing_log (account, number, sent_at);
    """,
]

_MESSAGE_COLUMNS = (
    "id, account, dest, region, sender, sender_kind, body, encoding, segments, concat_ref, "
    "message_class, receipt_mode, status, callback_url, reference, provider, error, created_at, "
    "submitted_at, done_at, attempts, next_attempt_at, expires_at"
)
_PENDING = (MessageStatus.ACCEPTED.value, MessageStatus.SCHEDULED.value,
            MessageStatus.QUEUED.value)
_WAITING = (MessageStatus.ACCEPTED, MessageStatus.SCHEDULED)
_FINAL_VALUES = frozenset(status.value for status in FINAL_STATUSES)


def _row_to_message(row: Sequence[Any]) -> Message:
    return Message(
        id=row[0],
        account=row[1],
        to=row[2],
        region=row[3],
        sender=Sender(row[4], SenderKind(row[5])),
        text=row[6],
        encoding=Encoding(row[7]),
        segments=row[8],
        concat_ref=row[9],
        message_class=row[10],
        receipt_mode=row[11],
        status=MessageStatus(row[12]),
        callback_url=row[13],
        reference=row[14],
        provider=row[15],
        error=row[16],
        created_at=row[17],
        submitted_at=row[18],
        done_at=row[19],
        attempts=row[20],
        next_attempt_at=row[21],
        expires_at=row[22],
    )


def callback_payload(notice: FinalNotice) -> str:
    return json.dumps(
        {
            "id": notice.message_id,
            "status": notice.status.value,
            "reference": notice.reference,
            "error": notice.error,
            "done_at": iso_utc(notice.done_at),
        },
        separators=(",", ":"),
    )


class _Op:
    __slots__ = ("bare", "error", "fn", "future", "result")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any],
                 bare: bool = False):
        self.fn = fn
        self.future = future
        self.bare = bare  # run outside any transaction (run_on_writer)
        self.result: Any = None
        self.error: BaseException | None = None


def _is_fault(exc: BaseException) -> bool:
    """A fault of the database rather than of one operation: full, locked, read-only, I/O
    error (OperationalError) or corrupt (a bare DatabaseError)."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


# Primary result codes that say the environment failed, not the file: PERM, BUSY, LOCKED,
# NOMEM, READONLY, IOERR, FULL, CANTOPEN.
_NOT_THE_FILE = frozenset({3, 5, 6, 7, 8, 10, 13, 14})


def _connect(path: str, busy_timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           timeout=busy_timeout)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=OFF")
    return conn


class SqliteStore:
    def __init__(self, path: str, *, commit_batch: int = 1000, max_waiting: int = 50_000,
                 busy_timeout: float = BUSY_TIMEOUT,
                 on_commit: Callable[[float], None] | None = None) -> None:
        """`on_commit` gets each group commit's seconds, on the writer thread (a metric)."""
        self.path = path
        self._on_commit = on_commit
        self.busy_timeout = busy_timeout
        self.commit_batch = commit_batch
        self.max_waiting = max_waiting
        self.pending = 0
        # Ops go to the writer once per event-loop turn, as one list: the writer wakes once for
        # everything the turn produced, not on the first op while the loop still holds the GIL.
        self._queue: queue.SimpleQueue[list[_Op] | None] = queue.SimpleQueue()
        self._turn: list[_Op] = []
        self._waiting = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        self._closed = True
        self.commits = 0  # group commits done
        # Write faults (set by the writer thread): how many groups failed, the last error, and
        # when (monotonic) the last group failed and the last one committed.
        self.write_errors = 0
        self.last_write_error: str | None = None
        self.last_write_error_at = 0.0
        self.last_write_ok_at = 0.0

    # ---- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        conn = await asyncio.to_thread(self._open_sync)
        self._closed = False
        self._thread = threading.Thread(
            target=self._writer, args=(conn,), name="smsagg-store-writer", daemon=True
        )
        self._thread.start()
        self._reader = await asyncio.to_thread(_connect, self.path, self.busy_timeout)
        counts = await self.count_by_status()
        self.pending = sum(counts.get(s, 0) for s in _PENDING)

    def _open_sync(self) -> sqlite3.Connection:
        """Connect, refuse what is not our database, migrate, check, recover claimed messages.
        Every refusal is a StoreError whose message says what is wrong and what to do."""
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn: sqlite3.Connection | None = None
        try:
            conn = _connect(self.path, self.busy_timeout)
            self._migrate(conn)
            problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
            if problems != ["ok"]:
                detail = "; ".join(problems).replace("\n", "; ")[:500]
                raise StoreError(
                    f"{self.path}: not a usable smsagg database (integrity check failed: "
                    f"{detail}); restore it from a backup or point [store] path elsewhere"
                )
            # Messages claimed by a dispatcher that died are due again: resend, never lose.
            conn.execute(
                "UPDATE messages SET status = 'accepted' WHERE status = 'queued'"
            )
        except BaseException as exc:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            if not isinstance(exc, sqlite3.DatabaseError):
                raise
            code = getattr(exc, "sqlite_errorcode", None)
            if isinstance(code, int) and code & 0xFF in _NOT_THE_FILE:  # the file may be fine
                raise StoreError(f"{self.path}: cannot open the database ({exc})") from exc
            raise StoreError(
                f"{self.path}: not a usable smsagg database ({exc}); "
                "restore it from a backup or point [store] path elsewhere"
            ) from exc
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring the schema to SCHEMA_VERSION, one transaction per step: a step that fails
        leaves the database at the version before it."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: database schema version {version} is newer than this smsagg "
                f"understands ({SCHEMA_VERSION}); upgrade smsagg or use another store path"
            )
        if version < 0:
            raise StoreError(f"{self.path}: database schema version {version} is not one "
                             "smsagg writes; point [store] path at an smsagg database")
        if version == 0 and conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
            raise StoreError(
                f"{self.path}: has tables but no smsagg schema version: not an smsagg "
                "database; point [store] path elsewhere"
            )
        for target in range(version, SCHEMA_VERSION):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[target].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target + 1}")
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise StoreError(
                    f"{self.path}: migrating the database schema from version {target} to "
                    f"{target + 1} failed ({exc}); it was left at version {target}. Restore "
                    "a backup or report this with the smsagg version"
                ) from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._turn:
            self._hand_over()
        self._queue.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        if self._reader is not None:
            self._reader.close()

    # ---- the writer --------------------------------------------------------------------------

    def _writer(self, conn: sqlite3.Connection) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch = first
            while len(batch) < self.commit_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.extend(nxt)
            for start in range(0, len(batch), self.commit_batch):  # one turn may bring more
                self._run_batch(conn, batch[start:start + self.commit_batch])
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        todo = batch
        if any(op.bare for op in batch):  # run_on_writer: before the group, outside it
            todo = [op for op in batch if not op.bare]
            for op in batch:
                if op.bare:
                    try:
                        op.result = op.fn(conn)
                    except Exception as exc:
                        op.error = exc
        try:
            if todo:
                self._commit(conn, todo)
        except Exception as exc:
            if _is_fault(exc):  # disk full, I/O error, locked, read-only: all fail
                self._fail(todo, exc)
            else:
                # One op failed on its own (a bug or a constraint): run each in its own
                # transaction so it cannot sink its neighbours. Rare: the fast path stays lean.
                for op in todo:
                    try:
                        self._commit(conn, [op])
                    except Exception as op_exc:
                        if _is_fault(op_exc):
                            self._fail([op], op_exc)
                        else:
                            op.result, op.error = None, op_exc
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            self._loop.call_soon_threadsafe(self._resolve, batch)

    def _commit(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        started = time.monotonic()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for op in batch:
                op.result = op.fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self.commits += 1
        self.last_write_ok_at = time.monotonic()
        if self._on_commit is not None:
            # The group is committed: a failing hook must not make _run_batch redo it.
            with contextlib.suppress(Exception):
                self._on_commit(self.last_write_ok_at - started)

    def _fail(self, batch: list[_Op], exc: Exception) -> None:
        err = StoreError(f"store write failed: {exc}")
        for op in batch:
            op.result, op.error = None, err
        self.write_errors += 1
        self.last_write_error = str(exc)
        self.last_write_error_at = time.monotonic()

    def write_failure(self) -> str | None:
        """The last write error while writes are failing (the last group failed, within
        WRITE_FAILURE_WINDOW seconds); None when the store takes writes. For readiness."""
        error, at = self.last_write_error, self.last_write_error_at
        if error is None or at <= self.last_write_ok_at:
            return None
        return error if time.monotonic() - at < WRITE_FAILURE_WINDOW else None

    def _resolve(self, batch: list[_Op]) -> None:
        self._waiting -= len(batch)
        for op in batch:
            if op.future.done():
                continue
            if op.error is not None:
                op.future.set_exception(op.error)
            else:
                op.future.set_result(op.result)

    def _submit(self, fn: Callable[[sqlite3.Connection], T],
                bare: bool = False) -> asyncio.Future[T]:
        if self._closed or self._loop is None:
            raise StoreError("store is closed")
        if self._waiting >= self.max_waiting and not bare:
            raise StoreBusy("too many writes waiting for the store")
        future: asyncio.Future[T] = self._loop.create_future()
        self._waiting += 1
        if not self._turn:
            self._loop.call_soon(self._hand_over)
        self._turn.append(_Op(fn, future, bare))
        return future

    def _hand_over(self) -> None:
        turn, self._turn = self._turn, []
        if turn:  # close() may have handed this turn over already
            self._queue.put(turn)

    @property
    def waiting(self) -> int:
        return self._waiting

    async def run_on_writer(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on the writer's connection between transactions, before the writes queued
        with it. For tests and tools: e.g. PRAGMA max_page_count (a full disk), query_only (a
        read-only file) or busy_timeout."""
        return await self._submit(fn, bare=True)

    # ---- writes ------------------------------------------------------------------------------

    async def accept_many(self, messages: Sequence[Message]) -> None:
        """Insert several messages in one transaction: all are stored, or none."""
        rows = [self._row(m) for m in messages]

        marketing = [(m.account, m.to, m.created_at) for m in messages
                     if m.message_class == "marketing"]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(self._INSERT, rows)
            conn.executemany(self._LOG_MARKETING, marketing)

        await self._submit(op)
        self.pending += sum(1 for m in messages if m.status in _WAITING)

    _INSERT = (
        f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES "
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )

    _LOG_MARKETING = "INSERT INTO marketing_log (account, number, sent_at) VALUES (?, ?, ?)"

    @staticmethod
    def _row(m: Message) -> tuple[Any, ...]:
        return (
            m.id, m.account, m.to, m.region, m.sender.value, m.sender.kind.value, m.text,
            m.encoding.value, m.segments, m.concat_ref, m.message_class, m.receipt_mode,
            m.status.value, m.callback_url, m.reference, m.provider, m.error, m.created_at,
            m.submitted_at, m.done_at, m.attempts, m.next_attempt_at, m.expires_at,
        )

    async def accept(self, message: Message, idempotency_key: str | None) -> AcceptResult:
        m = message
        values = self._row(m)

        def op(conn: sqlite3.Connection) -> AcceptResult:
            if idempotency_key is not None:
                known = conn.execute(
                    "SELECT message_id, created_at FROM idempotency WHERE account = ? AND key = ?",
                    (m.account, idempotency_key),
                ).fetchone()
                if known is not None and known[1] > m.created_at - IDEMPOTENCY_TTL:
                    prior = conn.execute(
                        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?", (known[0],)
                    ).fetchone()
                    if prior is not None:
                        return AcceptResult(_row_to_message(prior), created=False)
                conn.execute(
                    "INSERT OR REPLACE INTO idempotency (account, key, message_id, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (m.account, idempotency_key, m.id, m.created_at),
                )
            conn.execute(self._INSERT, values)
            if m.message_class == "marketing":  # frequency caps count what was accepted
                conn.execute(self._LOG_MARKETING, (m.account, m.to, m.created_at))
            return AcceptResult(m, created=True)

        result = await self._submit(op)
        if result.created and m.status in _WAITING:
            self.pending += 1
        return result

    async def claim_due(self, now: float, limit: int) -> list[Message]:
        def op(conn: sqlite3.Connection) -> list[Message]:
            rows = conn.execute(
                f"UPDATE messages SET status = 'queued' WHERE id IN ("
                # Without INDEXED BY the planner picks messages_status and sorts every waiting
                # row on each claim: 14 ms per claim at a 16k backlog, which capped relaying.
                "SELECT id FROM messages INDEXED BY messages_due "
                "WHERE status IN ('accepted', 'scheduled') "
                "AND next_attempt_at <= ? "
                f"ORDER BY next_attempt_at LIMIT ?) RETURNING {_MESSAGE_COLUMNS}",
                (now, limit),
            ).fetchall()
            messages = [_row_to_message(r) for r in rows]
            multi = [m.id for m in messages if m.segments > 1]
            if multi:
                done: dict[str, set[int]] = {}
                marks = ",".join("?" * len(multi))
                for mid, seq in conn.execute(
                    f"SELECT message_id, seq FROM segments WHERE message_id IN ({marks})", multi
                ):
                    done.setdefault(mid, set()).add(seq)
                for m in messages:
                    if m.id in done:
                        m.done_segments = frozenset(done[m.id])
            return messages

        return await self._submit(op)

    async def next_due_at(self) -> float | None:
        def op(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                "SELECT MIN(next_attempt_at) FROM messages INDEXED BY messages_due "
                "WHERE status IN ('accepted', 'scheduled')"
            ).fetchone()
            return None if row is None else row[0]

        return await self._submit(op)

    @staticmethod
    def _insert_parts(
        conn: sqlite3.Connection,
        message_id: str,
        provider: str,
        parts: Sequence[SegmentSubmit],
        now: float,
    ) -> None:
        conn.executemany(
            "INSERT OR REPLACE INTO segments "
            "(message_id, seq, provider, provider_msg_id, status, submitted_at) "
            "VALUES (?, ?, ?, ?, 'submitted', ?)",
            [(message_id, p.seq, provider, p.provider_msg_id, now) for p in parts],
        )

    async def record_submitted(
        self, message_id: str, provider: str, parts: Sequence[SegmentSubmit], now: float
    ) -> None:
        def op(conn: sqlite3.Connection) -> int:
            self._insert_parts(conn, message_id, provider, parts, now)
            # Never step back from final (a receipt may have got there first).
            return conn.execute(
                "UPDATE messages SET status = 'submitted', provider = ?, submitted_at = ?, "
                "attempts = attempts + 1 WHERE id = ? AND status IN ('accepted', 'queued')",
                (provider, now, message_id),
            ).rowcount

        # Not `self.pending -= await ...`: that reads the count before the await and writes
        # it back after, losing every accept counted meanwhile (the count drifted negative).
        submitted = await self._submit(op)
        self.pending -= submitted

    async def reschedule(
        self,
        message_id: str,
        provider: str | None,
        parts: Sequence[SegmentSubmit],
        next_attempt_at: float,
        error: str | None,
        count_attempt: bool = True,
    ) -> None:
        now = time.time()

        def op(conn: sqlite3.Connection) -> None:
            if parts and provider is not None:
                self._insert_parts(conn, message_id, provider, parts, now)
            conn.execute(
                "UPDATE messages SET status = 'accepted', next_attempt_at = ?, error = ?, "
                "provider = COALESCE(?, provider), attempts = attempts + ? "
                "WHERE id = ? AND status = 'queued'",
                (next_attempt_at, error, provider if parts else None, int(count_attempt),
                 message_id),
            )

        await self._submit(op)

    def _finish_sync(
        self,
        conn: sqlite3.Connection,
        message_id: str,
        status: MessageStatus,
        error: str | None,
        now: float,
        prior_status: str | None = None,
    ) -> tuple[FinalNotice | None, bool]:
        """Make a message final unless it already is; returns the notice and whether the message
        was still pending (accepted/queued) before, for the pending count. `prior_status`: the
        status the caller read in this transaction, to spare reading it again."""
        if prior_status is None:
            prior = conn.execute(
                "SELECT status FROM messages WHERE id = ?", (message_id,)).fetchone()
            if prior is None:
                return None, False
            prior_status = prior[0]
        if prior_status in _FINAL_VALUES:
            return None, False
        row = conn.execute(
            "UPDATE messages SET status = ?, error = ?, done_at = ? WHERE id = ? "
            "RETURNING account, reference, callback_url, submitted_at, provider, receipt_mode, "
            "sender, dest, created_at",
            (status.value, error, now, message_id),
        ).fetchone()
        notice = FinalNotice(
            message_id=message_id,
            account=row[0],
            status=status,
            reference=row[1],
            error=error,
            done_at=now,
            callback_url=row[2],
            submitted_at=row[3],
            provider=row[4],
        )
        if notice.callback_url:
            conn.execute(
                "INSERT INTO callbacks (message_id, url, payload, next_attempt_at) "
                "VALUES (?, ?, ?, ?)",
                (message_id, notice.callback_url, callback_payload(notice), now),
            )
        receipt_mode = row[5]
        if receipt_mode == 1 or (receipt_mode == 2 and status is not MessageStatus.DELIVERED):
            conn.execute(
                "INSERT INTO smpp_receipts (account, message_id, source, dest, status, error, "
                "submitted_at, done_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row[0], message_id, row[6], row[7], status.value, error, row[8], now, now),
            )
        return notice, prior_status in _PENDING

    async def release_waiting(self, now: float) -> int:
        """A provider came back: messages waiting for one are due now."""
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE messages SET next_attempt_at = ? WHERE status = 'accepted' "
                "AND next_attempt_at > ? AND error = ?",
                (now, now, NO_PROVIDER),
            ).rowcount

        return await self._submit(op)

    async def finish(
        self, message_id: str, status: MessageStatus, error: str | None, now: float
    ) -> FinalNotice | None:
        assert status in FINAL_STATUSES
        notice, was_pending = await self._submit(
            lambda conn: self._finish_sync(conn, message_id, status, error, now)
        )
        if was_pending:
            self.pending -= 1
        return notice

    async def apply_receipts(self, updates: Sequence[ReceiptUpdate]) -> list[ReceiptResult]:
        def op(conn: sqlite3.Connection) -> list[tuple[ReceiptResult, bool]]:
            return [self._apply_receipt(conn, u) for u in updates]

        applied = await self._submit(op)
        self.pending -= sum(1 for _, was_pending in applied if was_pending)
        return [result for result, _ in applied]

    def _apply_receipt(
        self, conn: sqlite3.Connection, u: ReceiptUpdate
    ) -> tuple[ReceiptResult, bool]:
        row = conn.execute(
            "SELECT message_id, seq FROM segments WHERE provider = ? AND provider_msg_id = ?",
            (u.provider, u.provider_msg_id),
        ).fetchone()
        if row is None:
            return ReceiptResult(u, matched=False, message_id=None, final=None), False
        message_id, seq = row
        if u.status is MessageStatus.SUBMITTED:  # intermediate (enroute, accepted): note only
            return ReceiptResult(u, matched=True, message_id=message_id, final=None), False
        conn.execute(
            "UPDATE segments SET status = ?, error = ?, done_at = ? "
            "WHERE message_id = ? AND seq = ?",
            (u.status.value, u.error, u.received_at, message_id, seq),
        )
        msg = conn.execute(
            "SELECT segments, status FROM messages WHERE id = ?", (message_id,)
        ).fetchone()
        if msg is None or msg[1] in _FINAL_VALUES:
            return ReceiptResult(u, matched=True, message_id=message_id, final=None), False
        final_status: MessageStatus | None = None
        if u.status is not MessageStatus.DELIVERED:
            final_status = u.status  # one part finally failed: the message did
        elif msg[0] == 1:
            final_status = MessageStatus.DELIVERED
        else:
            delivered = conn.execute(
                "SELECT COUNT(*) FROM segments WHERE message_id = ? AND status = 'delivered'",
                (message_id,),
            ).fetchone()[0]
            if delivered >= msg[0]:
                final_status = MessageStatus.DELIVERED
        notice, was_pending = None, False
        if final_status is not None:
            notice, was_pending = self._finish_sync(
                conn, message_id, final_status, u.error, u.received_at, msg[1]
            )
        return ReceiptResult(u, matched=True, message_id=message_id, final=notice), was_pending

    # ---- callbacks outbox --------------------------------------------------------------------

    async def due_callbacks(self, now: float, limit: int) -> list[CallbackJob]:
        def op(conn: sqlite3.Connection) -> list[CallbackJob]:
            rows = conn.execute(
                "SELECT id, message_id, url, payload, attempts FROM callbacks "
                "WHERE given_up = 0 AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
                (now, limit),
            ).fetchall()
            return [CallbackJob(*r) for r in rows]

        return await self._submit(op)

    async def callbacks_done(self, job_ids: Sequence[int]) -> None:
        """Drop delivered callbacks: the sender hands in all of a loop turn's at once."""
        rows = [(job_id,) for job_id in job_ids]
        await self._submit(lambda c: c.executemany("DELETE FROM callbacks WHERE id = ?", rows))

    async def callback_retry(self, job_id: int, next_attempt_at: float, error: str) -> None:
        await self._submit(
            lambda c: c.execute(
                "UPDATE callbacks SET attempts = attempts + 1, next_attempt_at = ?, "
                "last_error = ? WHERE id = ?",
                (next_attempt_at, error, job_id),
            )
        )

    async def callback_give_up(self, job_id: int, error: str) -> None:
        await self._submit(
            lambda c: c.execute(
                "UPDATE callbacks SET attempts = attempts + 1, given_up = 1, last_error = ? "
                "WHERE id = ?",
                (error, job_id),
            )
        )

    # ---- SMPP receipts outbox -----------------------------------------------------------------

    async def due_smpp_receipts(self, account: str, now: float, limit: int) -> list[SmppReceipt]:
        def op(conn: sqlite3.Connection) -> list[SmppReceipt]:
            rows = conn.execute(
                "SELECT id, account, message_id, source, dest, status, error, submitted_at, "
                "done_at, attempts, kind, text FROM smpp_receipts WHERE account = ? "
                "AND given_up = 0 "
                "AND next_attempt_at <= ? ORDER BY id LIMIT ?",
                (account, now, limit),
            ).fetchall()
            return [
                SmppReceipt(r[0], r[1], r[2], r[3], r[4], MessageStatus(r[5]), r[6], r[7], r[8],
                            r[9], r[10], r[11])
                for r in rows
            ]

        return await self._submit(op)

    async def enqueue_smpp_mo(self, account: str, source: str, dest: str, text: str,
                              now: float) -> None:
        """A handset's message for an account's bound SMPP receiver, sent like a receipt."""
        await self._submit(lambda c: c.execute(
            "INSERT INTO smpp_receipts (kind, text, account, message_id, source, dest, status, "
            "submitted_at, done_at, next_attempt_at) "
            "VALUES ('mo', ?, ?, '', ?, ?, 'delivered', ?, ?, ?)",
            (text, account, source, dest, now, now, now)))

    async def smpp_receipt_done(self, receipt_id: int) -> None:
        await self._submit(
            lambda c: c.execute("DELETE FROM smpp_receipts WHERE id = ?", (receipt_id,))
        )

    async def smpp_receipt_retry(self, receipt_id: int, next_attempt_at: float,
                                 give_up: bool) -> None:
        await self._submit(
            lambda c: c.execute(
                "UPDATE smpp_receipts SET attempts = attempts + 1, next_attempt_at = ?, "
                "given_up = ? WHERE id = ?",
                (next_attempt_at, int(give_up), receipt_id),
            )
        )

    # ---- opt-outs and marketing frequency -------------------------------------------------

    async def add_optout(self, account: str, number: str, source: str, now: float) -> bool:
        """Record an opt-out (kept with when and where from); False if it was already there."""
        return bool(await self._submit(lambda c: c.execute(
            "INSERT OR IGNORE INTO optouts (account, number, created_at, source) "
            "VALUES (?, ?, ?, ?)", (account, number, now, source)).rowcount))

    async def remove_optout(self, account: str, number: str) -> bool:
        return bool(await self._submit(lambda c: c.execute(
            "DELETE FROM optouts WHERE account = ? AND number = ?", (account, number)).rowcount))

    async def is_opted_out(self, account: str, number: str) -> bool:
        rows = await asyncio.to_thread(
            self._read, "SELECT 1 FROM optouts WHERE account = ? AND number = ?",
            (account, number))
        return bool(rows)

    async def list_optouts(self, account: str, number: str | None,
                           limit: int) -> list[tuple[str, float, str]]:
        sql = "SELECT number, created_at, source FROM optouts WHERE account = ?"
        args: list[Any] = [account]
        if number is not None:
            sql += " AND number = ?"
            args.append(number)
        rows = await asyncio.to_thread(self._read, sql + " ORDER BY created_at LIMIT ?",
                                       (*args, limit))
        return [(r[0], r[1], r[2]) for r in rows]

    async def marketing_history(self, account: str, number: str,
                                since: float) -> tuple[int, float | None]:
        """Marketing messages accepted for this number since `since`, and the latest one."""
        rows = await asyncio.to_thread(
            self._read, "SELECT COUNT(*), MAX(sent_at) FROM marketing_log "
            "WHERE account = ? AND number = ? AND sent_at >= ?", (account, number, since))
        return int(rows[0][0]), rows[0][1]

    async def account_for_reply(self, number: str, sender: str) -> str | None:
        """The account that last sent to this number from this sender: a reply is for it."""
        rows = await asyncio.to_thread(
            self._read, "SELECT account FROM messages WHERE dest = ? AND sender = ? "
            "ORDER BY created_at DESC LIMIT 1", (number, sender))
        return rows[0][0] if rows else None

    async def enqueue_callback(self, url: str, payload: str, now: float) -> None:
        """An HTTP POST for the callback sender that is not about a message (e.g. an MO)."""
        await self._submit(lambda c: c.execute(
            "INSERT INTO callbacks (message_id, url, payload, next_attempt_at) "
            "VALUES ('', ?, ?, ?)", (url, payload, now)))

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
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ? AND account = ?",
            (message_id, account),
        )
        return _row_to_message(rows[0]) if rows else None

    async def count_by_status(self) -> dict[str, int]:
        if self._reader is None:
            conn = await asyncio.to_thread(_connect, self.path)
            try:
                rows = conn.execute(
                    "SELECT status, COUNT(*) FROM messages GROUP BY status"
                ).fetchall()
            finally:
                conn.close()
        else:
            rows = await asyncio.to_thread(
                self._read, "SELECT status, COUNT(*) FROM messages GROUP BY status", ()
            )
        return {status: count for status, count in rows}

    async def segments_of(self, message_id: str) -> list[tuple[int, str, str, str]]:
        """(seq, provider, provider_msg_id, status) of a message's parts; for tests and tools."""
        rows = await asyncio.to_thread(
            self._read,
            "SELECT seq, provider, provider_msg_id, status FROM segments "
            "WHERE message_id = ? ORDER BY seq",
            (message_id,),
        )
        return [tuple(r) for r in rows]

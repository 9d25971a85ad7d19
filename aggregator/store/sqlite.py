"""SQLite store: WAL, synchronous=FULL, one writer that commits operations in groups.

Every write is a named operation (writes.py) run by the writer, a thread of this process or a
child process of its own; the writer takes all operations waiting (up to `commit_batch`), runs
them inside one transaction, commits once and then answers them. Thousands of accepts per second
share a few fsyncs, and an operation's future resolves only after its data is on disk. Reads use
a connection of their own (WAL lets them run beside the writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import queue
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from aggregator import metrics
from aggregator.frames import frame
from aggregator.link import Calls, Link
from aggregator.log import get_logger
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
    OPTOUT_MARKETING,
    AcceptResult,
    CallbackJob,
    MessageFilter,
    OverdueSegment,
    ReceiptResult,
    SmppReceipt,
    StoreBusy,
    StoreError,
)
from aggregator.store.writes import (
    BUSY_TIMEOUT,
    MESSAGE_COLUMNS,
    PENDING,
    GroupWriter,
    Op,
    WriteFigures,
    bind,
    connect,
    waiting_added,
    waiting_by_account,
)

log = get_logger("smsagg.store")

T = TypeVar("T")

SCHEMA_VERSION = 5  # == len(MIGRATIONS)
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
    # 2: receipts that never come (overdue.py): when a segment was last queried with query_sm,
    # and the open segments and submitted messages indexed by age.
    """
    ALTER TABLE segments ADD COLUMN queried_at REAL;
    CREATE INDEX segments_open ON segments (provider, submitted_at) WHERE status = 'submitted';
    CREATE INDEX messages_submitted ON messages (submitted_at) WHERE status = 'submitted';
    """,
    # 3: consent records (time, source, scope) and the record of removed opt-outs (who, when):
    # the Kazakhstan guide makes consent records mandatory for marketing, the Kosovo guide asks
    # for opt-out records kept at least 12 months (issue 19 item 6).
    """
    CREATE TABLE consents (
        id INTEGER PRIMARY KEY,
        account TEXT NOT NULL,
        number TEXT NOT NULL,
        scope TEXT NOT NULL,
        source TEXT NOT NULL,
        consented_at REAL NOT NULL,
        recorded_at REAL NOT NULL
    );
    CREATE INDEX consents_by_number ON consents (account, number, scope);
    CREATE TABLE optout_removals (
        id INTEGER PRIMARY KEY,
        account TEXT NOT NULL,
        number TEXT NOT NULL,
        opted_out_at REAL NOT NULL,
        source TEXT NOT NULL,
        removed_at REAL NOT NULL,
        removed_by TEXT NOT NULL
    );
    CREATE INDEX optout_removals_by_number ON optout_removals (account, number, removed_at);
    """,
    # 3 -> 4: fair claims between accounts (writes.due_accounts, writes.claim_due): waiting
    # messages by account, then due time. It replaces messages_due (by due time alone): one
    # index less to keep up on every accept and claim. Dropped first, so that the new index
    # takes its page: a new database has no free pages, as before.
    """
    DROP INDEX messages_due;
    CREATE INDEX messages_due_account ON messages (account, next_attempt_at)
        WHERE status IN ('accepted', 'scheduled');
    """,
    # 4 -> 5: per-type opt-outs (issue 19 item 6; the Kosovo guide: "separate opt-out lists for
    # various message types"): each opt-out, and each removal record, has a scope, "marketing" or
    # "all" (base.OPTOUT_SCOPES). Rows from before are "marketing": what every opt-out meant
    # until now (marketing refused; transactional only where the account sets
    # block_transactional_to_opted_out), so nothing sent before the upgrade is refused after it.
    # Every insert names its scope; the default is only for those rows (no table rewrite).
    """
    ALTER TABLE optouts ADD COLUMN scope TEXT NOT NULL DEFAULT 'marketing'
        CHECK (scope IN ('marketing', 'all'));
    ALTER TABLE optout_removals ADD COLUMN scope TEXT NOT NULL DEFAULT 'marketing'
        CHECK (scope IN ('marketing', 'all'));
    """,
]

WRITERS = frozenset({"thread", "process"})
POINT_KEYS = 64  # send-time opt-out reads of at most this many numbers run on the event loop
PROCESS_START_TIMEOUT = 30.0  # seconds for the writer process to open the database
PROCESS_STOP_TIMEOUT = 30.0  # seconds for it to answer what is queued and exit


def message_row(m: Message) -> tuple[Any, ...]:
    """A message as a row of the messages table (MESSAGE_COLUMNS order)."""
    return (
        m.id, m.account, m.to, m.region, m.sender.value, m.sender.kind.value, m.text,
        m.encoding.value, m.segments, m.concat_ref, m.message_class, m.receipt_mode,
        m.status.value, m.callback_url, m.reference, m.provider, m.error, m.created_at,
        m.submitted_at, m.done_at, m.attempts, m.next_attempt_at, m.expires_at,
    )


def accept_result(message: Message, prior: Sequence[Any] | None) -> AcceptResult:
    """What the `accept` write answered: None, the message is stored; else the row of the one an
    idempotency key stored before."""
    if prior is not None:
        return AcceptResult(row_to_message(prior), created=False)
    return AcceptResult(message, created=True)


def marketing_rows(messages: Sequence[Message]) -> list[tuple[str, str, float]]:
    """The marketing_log rows of an accept: frequency caps count what was accepted."""
    return [(m.account, m.to, m.created_at) for m in messages if m.message_class == "marketing"]


def _parts(parts: Sequence[SegmentSubmit]) -> list[tuple[int, str]]:
    return [(p.seq, p.provider_msg_id) for p in parts]


def row_to_message(row: Sequence[Any]) -> Message:
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


# Primary result codes that say the environment failed, not the file: PERM, BUSY, LOCKED,
# NOMEM, READONLY, IOERR, FULL, CANTOPEN.
_NOT_THE_FILE = frozenset({3, 5, 6, 7, 8, 10, 13, 14})


class SqliteStore:
    def __init__(self, path: str, *, commit_batch: int = 1000, max_waiting: int = 50_000,
                 busy_timeout: float = BUSY_TIMEOUT,
                 on_commit: Callable[[float], None] | None = None,
                 writer: str = "thread",
                 on_lost: Callable[[str], None] | None = None,
                 on_accepted: Callable[[], None] | None = None) -> None:
        """`on_commit` gets each group commit's seconds (a metric). `writer`: "thread" runs
        the writes on a thread of this process; "process" in a child process, where this
        process's event loop cannot keep them waiting for the GIL. `on_lost` hears why, if that
        process ends while the store is open: nothing can be written any more. The writer
        process also takes ingress workers' accepts directly (`writer_address`); `on_accepted`
        hears when it has stored some that wait to be sent."""
        if writer not in WRITERS:
            raise ValueError(f"writer must be one of {sorted(WRITERS)}, not {writer!r}")
        self.path = path
        self.writer = writer
        self._on_commit = on_commit
        self._on_lost = on_lost
        self._on_accepted = on_accepted
        self.busy_timeout = busy_timeout
        self.commit_batch = commit_batch
        self.max_waiting = max_waiting
        self.pending = 0
        # The pending count per account (its own max_pending); accounts at 0 are dropped.
        self.pending_by_account: Counter[str] = Counter()
        self._waiting = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        # The event loop's own connection, for primary-key reads on the accept path (optout_scope).
        self._point: sqlite3.Connection | None = None
        self._closed = True
        self._figures = WriteFigures()  # the writer's, or (process) its last answer's
        # Thread writer: ops go to it once per event-loop turn, as one list, so it wakes once
        # for everything the turn produced, not on the first op while the loop holds the GIL.
        self._queue: queue.SimpleQueue[list[Op] | None] = queue.SimpleQueue()
        self._turn: list[Op] = []
        self._thread: threading.Thread | None = None
        # Process writer: requests by id; the link sends a turn's requests in one write.
        self._proc: subprocess.Popen[bytes] | None = None
        self._link: Link | None = None
        self._calls = Calls()
        self._started: asyncio.Future[None] | None = None
        self._lost: str | None = None  # why the writer process is gone
        self.writer_address: str | None = None  # where workers send accepts to the writer
        self._writer_dir: str | None = None

    @property
    def commits(self) -> int:
        """Group commits done (tests, tools)."""
        return self._figures.commits

    @property
    def write_errors(self) -> int:
        return self._figures.write_errors

    # ---- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        conn = await asyncio.to_thread(self._open_sync)
        if self.writer == "process":
            conn.close()  # checked and migrated; the child opens its own
            await self._start_process()
        else:
            group = GroupWriter(conn, self._on_commit)
            self._figures = group.figures
            self._thread = threading.Thread(
                target=self._write_loop, args=(group,), name="smsagg-store-writer", daemon=True
            )
            self._thread.start()
        self._closed = False
        self._reader = await asyncio.to_thread(connect, self.path, self.busy_timeout)
        self._point = await asyncio.to_thread(connect, self.path, 0.0)  # busy: never waits
        counts = await self.count_by_status()
        self.pending = sum(counts.get(s, 0) for s in PENDING)
        self.pending_by_account = Counter(dict(await asyncio.to_thread(
            self._read, "SELECT account, COUNT(*) FROM messages WHERE status IN "
            f"({','.join('?' * len(PENDING))}) GROUP BY account", PENDING)))

    def _open_sync(self) -> sqlite3.Connection:
        """Connect, refuse what is not our database, migrate, check, recover claimed messages.
        Every refusal is a StoreError whose message says what is wrong and what to do."""
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn: sqlite3.Connection | None = None
        try:
            conn = connect(self.path, self.busy_timeout)
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
        if self._proc is not None:
            await self._stop_process()
        else:
            if self._turn:
                self._hand_over()
            self._queue.put(None)
            if self._thread is not None:
                await asyncio.to_thread(self._thread.join)
        if self._reader is not None:
            self._reader.close()
        if self._point is not None:
            self._point.close()
            self._point = None

    # ---- the writer thread ---------------------------------------------------------------------

    def _write_loop(self, group: GroupWriter) -> None:
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
                chunk = batch[start:start + self.commit_batch]
                group.run(chunk)
                assert self._loop is not None
                with contextlib.suppress(RuntimeError):  # loop closed during shutdown
                    self._loop.call_soon_threadsafe(self._resolve, chunk)
        group.conn.close()

    def _resolve(self, batch: list[Op]) -> None:
        self._waiting -= len(batch)
        for op in batch:
            future: asyncio.Future[Any] = op.ref
            if future.done():
                continue
            if op.error is not None:
                future.set_exception(op.error)
            else:
                future.set_result(op.result)

    def _hand_over(self) -> None:
        turn, self._turn = self._turn, []
        if turn:  # close() may have handed this turn over already
            self._queue.put(turn)

    # ---- the writer process --------------------------------------------------------------------

    async def _start_process(self) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        self._writer_dir = tempfile.mkdtemp(prefix="smsagg-writer-")  # mode 0700: ours only
        address = os.path.join(self._writer_dir, "writer.sock")
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "aggregator.store.writer_process", str(theirs.fileno()),
                 self.path, repr(self.busy_timeout), str(self.commit_batch), address],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self._started = loop.create_future()
        _, link = await loop.connect_accepted_socket(lambda: Link(self), ours)
        self._link = link
        try:
            await asyncio.wait_for(asyncio.shield(self._started), PROCESS_START_TIMEOUT)
        except BaseException:
            await self._stop_process()
            raise
        self.writer_address = address

    async def _stop_process(self) -> None:
        proc, link = self._proc, self._link
        if link is not None:
            link.send(frame(None))  # after every request already sent: they are answered first
        if proc is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), PROCESS_STOP_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        if link is not None:
            link.close()
        if self._writer_dir is not None:
            shutil.rmtree(self._writer_dir, ignore_errors=True)

    def frame_received(self, link: Link, obj: Any) -> None:
        """From the writer process: ("ready",), ("error", why) or one group's answers."""
        if obj[0] == "ready":
            if self._started is not None and not self._started.done():
                self._started.set_result(None)
            return
        if obj[0] == "error":
            if self._started is not None and not self._started.done():
                self._started.set_exception(StoreError(obj[1]))
            return
        _, self._figures, durations, answers, took = obj
        if took:  # workers' accepts, straight to the writer: {account: waiting messages}
            self.pending += sum(took.values())
            self.pending_by_account.update(took)
            if self._on_accepted is not None:
                self._on_accepted()
        if self._on_commit is not None:
            for seconds in durations:
                with contextlib.suppress(Exception):
                    self._on_commit(seconds)
        self._waiting -= len(answers)
        for answer in answers:
            self._calls.answer(*answer)

    def link_lost(self, link: Link) -> None:
        code = self._proc.poll() if self._proc is not None else None
        self._lost = f"the store writer process exited (code {code})"
        if not self._closed:
            log.error("store_writer_lost", exit_code=code)
            if self._on_lost is not None:
                self._on_lost(self._lost)
        self._figures.failed(self._lost)
        if self._started is not None and not self._started.done():
            self._started.set_exception(StoreError(self._lost))
        self._waiting -= len(self._calls)
        lost = self._lost
        self._calls.fail_all(lambda: StoreError(lost))

    # ---- submitting writes -----------------------------------------------------------------

    def write_failure(self) -> str | None:
        """The last write error while writes are failing (the last group failed, within
        WRITE_FAILURE_WINDOW seconds); None when the store takes writes. For readiness."""
        if self._lost is not None:
            return self._lost
        f = self._figures
        error, at = f.last_write_error, f.last_write_error_at
        if error is None or at <= f.last_write_ok_at:
            return None
        return error if time.monotonic() - at < WRITE_FAILURE_WINDOW else None

    def _submit(self, name: str, *args: Any) -> asyncio.Future[Any]:
        """Queue the write `name` (an operation of writes.py) with plain-value arguments."""
        if self._closed or self._loop is None:
            raise StoreError("store is closed")
        if self._lost is not None:
            raise StoreError(self._lost)
        if self._waiting >= self.max_waiting:
            raise StoreBusy("too many writes waiting for the store")
        if self._link is not None:
            future = self._calls.send(self._link, lambda rid: (rid, name, args))
        else:
            future = self._loop.create_future()
            self._queue_op(Op(bind(name, args), future))
        self._waiting += 1
        future.add_done_callback(functools.partial(_observe, name, time.monotonic()))
        return future

    def _queue_op(self, op: Op) -> None:
        assert self._loop is not None
        if not self._turn:
            self._loop.call_soon(self._hand_over)
        self._turn.append(op)

    @property
    def waiting(self) -> int:
        return self._waiting

    async def run_on_writer(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on the writer's connection between transactions, before the writes queued
        with it. For tests and tools: e.g. PRAGMA max_page_count (a full disk), query_only (a
        read-only file) or busy_timeout. The thread writer only: a function does not travel."""
        if self._closed or self._loop is None:
            raise StoreError("store is closed")
        if self._link is not None:
            raise StoreError("run_on_writer needs writer = \"thread\"")
        future: asyncio.Future[T] = self._loop.create_future()
        self._waiting += 1
        self._queue_op(Op(fn, future, bare=True))
        return await future

    # ---- writes ------------------------------------------------------------------------------

    async def accept_many(self, messages: Sequence[Message]) -> None:
        """Insert several messages in one transaction: all are stored, or none."""
        rows = [message_row(m) for m in messages]
        await self._submit("accept_many", rows, marketing_rows(messages))
        self.pending += waiting_added("accept_many", (rows,), None)
        self.pending_by_account.update(waiting_by_account("accept_many", (rows,), None))

    async def accept(self, message: Message, idempotency_key: str | None) -> AcceptResult:
        row = message_row(message)
        prior = await self._submit("accept", row, idempotency_key)
        self.pending += waiting_added("accept", (row, idempotency_key), prior)
        self.pending_by_account.update(waiting_by_account("accept", (row,), prior))
        return accept_result(message, prior)

    async def claim_due(self, now: float, limit: int,
                        held: Mapping[str, int] | None = None) -> list[Message]:
        """`held`: messages per account the caller has in flight (fair shares)."""
        rows, done = await self._submit("claim_due", now, limit, dict(held or {}))
        messages = [row_to_message(r) for r in rows]
        for m in messages:
            if m.id in done:
                m.done_segments = frozenset(done[m.id])
        return messages

    async def next_due_at(self) -> float | None:
        result: float | None = await self._submit("next_due_at")
        return result

    async def record_submitted(
        self, message_id: str, provider: str, parts: Sequence[SegmentSubmit], now: float
    ) -> None:
        # Not `self.pending -= await ...`: that reads the count before the await and writes
        # it back after, losing every accept counted meanwhile (the count drifted negative).
        account = await self._submit("record_submitted", message_id, provider,
                                     _parts(parts), now)
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
        await self._submit("reschedule", message_id, provider, _parts(parts), next_attempt_at,
                           error, count_attempt, time.time())

    async def hold(self, message_id: str, next_attempt_at: float, error: str) -> None:
        """A claimed message back to scheduled until `next_attempt_at` (a send-time rule)."""
        await self._submit("hold", message_id, next_attempt_at, error)

    async def release_waiting(self, now: float) -> int:
        """A provider came back: messages waiting for one are due now."""
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

    async def due_smpp_receipts(self, account: str, now: float, limit: int) -> list[SmppReceipt]:
        rows = await self._submit("due_smpp_receipts", account, now, limit)
        return [
            SmppReceipt(r[0], r[1], r[2], r[3], r[4], MessageStatus(r[5]), r[6], r[7], r[8],
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
        sql = ("SELECT id, number, scope, source, consented_at, recorded_at FROM consents "
               "WHERE account = ?")
        args: list[Any] = [account]
        if number is not None:
            sql += " AND number = ?"
            args.append(number)
        rows = await asyncio.to_thread(self._read, sql + " ORDER BY id LIMIT ?", (*args, limit))
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
        sql = ("SELECT number, opted_out_at, source, removed_at, removed_by, scope "
               "FROM optout_removals WHERE account = ?")
        args: list[Any] = [account]
        if number is not None:
            sql += " AND number = ?"
            args.append(number)
        rows = await asyncio.to_thread(self._read, sql + " ORDER BY id LIMIT ?", (*args, limit))
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
        """The scope of the number's opt-out, None without one. Every accept makes this read, so
        it runs on the event loop's own connection: a primary-key read in a WAL database takes a
        few microseconds and never waits for the writer, where a thread hop costs ten times that
        (tests/bench_optout_gate.py). Busy (a WAL recovery): the threaded reader, which waits."""
        sql = "SELECT scope FROM optouts WHERE account = ? AND number = ?"
        if self._point is None:
            raise StoreError("store is closed")
        try:
            rows = self._point.execute(sql, (account, number)).fetchall()  # all: ends the read
        except sqlite3.OperationalError:
            rows = await asyncio.to_thread(self._read, sql, (account, number))
        return str(rows[0][0]) if rows else None

    async def list_optouts(self, account: str, number: str | None,
                           limit: int) -> list[tuple[str, float, str, str]]:
        """(number, created_at, source, scope), oldest first."""
        sql = "SELECT number, created_at, source, scope FROM optouts WHERE account = ?"
        args: list[Any] = [account]
        if number is not None:
            sql += " AND number = ?"
            args.append(number)
        rows = await asyncio.to_thread(self._read, sql + " ORDER BY created_at LIMIT ?",
                                       (*args, limit))
        return [(r[0], r[1], r[2], r[3]) for r in rows]

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
        if not marketing and 0 < len(keys) <= POINT_KEYS and self._point is not None:
            # The usual claim: a few transactional messages. One statement on the event loop's
            # connection, as optout_scope(): the thread hop cost more than the read (futex
            # wake-ups, the GIL handed back and forth); tests/bench_optout_gate.py.
            marks = ",".join(["(?, ?)"] * len(keys))
            try:
                rows = self._point.execute(  # CROSS JOIN: a primary-key search per number
                    f"SELECT o.account, o.number, o.scope FROM (VALUES {marks}) AS k CROSS JOIN "
                    "optouts AS o ON o.account = k.column1 AND o.number = k.column2",
                    [v for key in keys for v in key]).fetchall()
                return {(r[0], r[1]): r[2] for r in rows}, {}
            except sqlite3.OperationalError:
                pass  # busy (a WAL recovery): the threaded reader, which waits
            except sqlite3.Error as exc:
                raise StoreError(f"reading opt-outs failed: {exc}") from exc
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
        sql = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE account = ?"
        args: list[Any] = [account]
        for clause, value in (("status = ?", where.status), ("dest = ?", where.to),
                              ("reference = ?", where.reference),
                              ("created_at >= ?", where.since), ("created_at < ?", where.until),
                              ("id < ?", where.before)):
            if value is not None:
                sql += f" AND {clause}"
                args.append(value)
        rows = await asyncio.to_thread(self._read, sql + " ORDER BY id DESC LIMIT ?",
                                       (*args, limit))
        return [row_to_message(r) for r in rows]

    async def count_by_status(self) -> dict[str, int]:
        if self._reader is None:
            conn = await asyncio.to_thread(connect, self.path)
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


def _observe(op: str, started: float, future: asyncio.Future[Any]) -> None:
    """A write's time, queued to committed, beside PostgreSQL's (by backend)."""
    if not future.cancelled() and future.exception() is None:
        metrics.store_operation_seconds.labels("sqlite", op).observe(time.monotonic() - started)

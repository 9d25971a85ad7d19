"""PostgreSQL store (asyncpg): several smsagg instances share one database.

The same contract as the SQLite store (store/base.py), with these cluster rules:
- every write is one transaction, committed before the call returns;
- an Idempotency-Key is unique per account across instances (a unique key and ON CONFLICT);
- claims (due messages, callbacks, SMPP receipts) take rows with FOR UPDATE SKIP LOCKED and
  stamp them with this instance's name and a lease, which a background task renews while the
  instance lives; what an instance stopped renewing goes back to the queue when its lease runs
  out (`recover()`), so another instance sends it (at least once, never zero times);
- lease times are the database's clock, so instances' clocks need not agree;
- a message inserted anywhere NOTIFYs `smsagg_due`, so every instance's dispatcher wakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg

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
    NO_PROVIDER,
    OPTOUT_MARKETING,
    WRITE_FAILURE_WINDOW,
    AcceptResult,
    CallbackJob,
    MessageFilter,
    OverdueSegment,
    ReceiptResult,
    SmppOutboxItem,
    StoreBusy,
    StoreError,
)
from aggregator.store.postgres_receipts import (
    APPLY_RECEIPTS_FUNCTION,
    NOTIFY_CALLBACKS_WHEN_INSERTED,
    OUTBOX_CHANNEL,
)
from aggregator.store.rows import (
    accept_result,
    marketing_rows,
    message_conditions,
    message_row,
    row_to_message,
)
from aggregator.store.writes import (
    CANCELLED_ERROR,
    FAIR_SCAN,
    FINAL_VALUES,
    IDEMPOTENCY_TTL,
    MESSAGE_COLUMNS,
    PENDING,
    callback_payload,
    fair_shares,
    id_bound,
    waiting_added,
    waiting_by_account,
)

log = get_logger("smsagg.store.postgres")

T = TypeVar("T")

SCHEMA_VERSION = 5  # == len(MIGRATIONS)
# pg_advisory_lock key held while migrating: two instances starting at once take turns.
MIGRATION_LOCK = 0x736D_7367_0001
NOTIFY_CHANNEL = "smsagg_due"
# OUTBOX_CHANNEL (postgres_receipts), payload "callbacks", or "smpp:ACCOUNT": an outbox entry
# was added (on any instance).
# An instance started or left: the others read the live members now, not at their next heartbeat.
MEMBERS_CHANNEL = "smsagg_members"
CONNECT_TIMEOUT = 10.0  # seconds to reach the server
ACQUIRE_TIMEOUT = 5.0  # seconds an operation waits for a pooled connection
COMMAND_TIMEOUT = 30.0
CLOSE_TIMEOUT = 10.0
LEAVE_TIMEOUT = 2.0  # seconds to say goodbye to a database that may be gone
GROUP_SIZE = 500  # writes committed in one transaction at most
LATER_TTL = 0.1  # seconds a claim's next due time answers next_due_at
SCOPE_BATCHES = 2  # batches of opt-out reads under way at once; the next waits for one
RETRIES = 3  # deadlock / serialization failure: the transaction is run again
# Session settings of every pooled connection. Each smsagg statement is an index lookup or a
# short index range scan, driven by a few ids or one account; the planner must not choose a
# sequential scan or a hash/merge join over a queue table from its statistics, which lag the
# churn (a message's row goes through four versions in seconds; autovacuum analyses at most
# once a minute; a fresh table's cached generic plans are made on its first rows, and dead
# versions are not counted). Such plans read the whole table per claim, record or receipt
# group, a cost that grows with the table: claim_due 142-152 -> 63-71 and record_submitted
# 103-117 -> 44-60 server CPU-µs per message in `python -m tests.bench_pg_store --batch 10`,
# and more in a longer run. A statement with no index to use still scans (the setting
# only makes other plans preferred); count_by_status, a whole-table count, turns it back on.
# JIT off: a statement with no index to use gets the disabled seqscan's cost (1e10), far over
# jit_above_cost, and was compiled on every call (SELECT max(version) FROM smsagg_schema: 100 ms
# of server CPU at each ingress worker's start, 0.1 ms without); smsagg's statements are short.
PLANNER_SETTINGS = {"enable_seqscan": "off", "enable_hashjoin": "off", "enable_mergejoin": "off",
                    "jit": "off"}
# The database's clock as epoch seconds: leases never depend on instances' clocks agreeing.
DB_NOW = "extract(epoch from clock_timestamp())::float8"

MIGRATIONS: list[str] = [
    f"""
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
        created_at DOUBLE PRECISION NOT NULL,
        submitted_at DOUBLE PRECISION,
        done_at DOUBLE PRECISION,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        owner TEXT,
        lease_until DOUBLE PRECISION
    );
    CREATE INDEX messages_due ON messages (next_attempt_at, id)
        WHERE status IN ('accepted', 'scheduled');
    CREATE INDEX messages_due_account ON messages (account, next_attempt_at)
        WHERE status IN ('accepted', 'scheduled');
    CREATE INDEX messages_leased ON messages (lease_until) WHERE status = 'queued';
    CREATE INDEX messages_owned ON messages (owner) WHERE status = 'queued';
    CREATE INDEX messages_by_dest ON messages (dest, created_at);
    CREATE INDEX messages_status ON messages (status);
    CREATE INDEX messages_submitted ON messages (submitted_at) WHERE status = 'submitted';
    CREATE INDEX messages_text_kept ON messages (status) WHERE body <> '';
    CREATE INDEX messages_by_account ON messages (account, id);
    CREATE TABLE segments (
        message_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        provider TEXT NOT NULL,
        provider_msg_id TEXT NOT NULL,
        status TEXT NOT NULL,
        error TEXT,
        submitted_at DOUBLE PRECISION NOT NULL,
        done_at DOUBLE PRECISION,
        queried_at DOUBLE PRECISION,
        PRIMARY KEY (message_id, seq)
    );
    CREATE INDEX segments_by_provider_id ON segments (provider, provider_msg_id);
    CREATE INDEX segments_open ON segments (provider, submitted_at) WHERE status = 'submitted';
    CREATE TABLE idempotency (
        account TEXT NOT NULL,
        key TEXT NOT NULL,
        message_id TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (account, key)
    );
    CREATE TABLE callbacks (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        message_id TEXT NOT NULL,
        url TEXT NOT NULL,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        last_error TEXT,
        given_up BOOLEAN NOT NULL DEFAULT FALSE,
        owner TEXT,
        lease_until DOUBLE PRECISION
    );
    CREATE INDEX callbacks_due ON callbacks (next_attempt_at, id) WHERE NOT given_up;
    CREATE INDEX callbacks_owned ON callbacks (owner) WHERE owner IS NOT NULL;
    CREATE TABLE smpp_receipts (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        kind TEXT NOT NULL DEFAULT 'receipt',
        text TEXT,
        account TEXT NOT NULL,
        message_id TEXT NOT NULL,
        source TEXT NOT NULL,
        dest TEXT NOT NULL,
        status TEXT NOT NULL,
        error TEXT,
        submitted_at DOUBLE PRECISION NOT NULL,
        done_at DOUBLE PRECISION NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        given_up BOOLEAN NOT NULL DEFAULT FALSE,
        owner TEXT,
        lease_until DOUBLE PRECISION
    );
    CREATE INDEX smpp_receipts_due ON smpp_receipts (account, id) WHERE NOT given_up;
    CREATE INDEX smpp_receipts_owned ON smpp_receipts (owner) WHERE owner IS NOT NULL;
    CREATE TABLE optouts (
        account TEXT NOT NULL,
        number TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        source TEXT NOT NULL,
        PRIMARY KEY (account, number)
    );
    CREATE TABLE marketing_log (
        account TEXT NOT NULL,
        number TEXT NOT NULL,
        sent_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX marketing_log_by_number ON marketing_log (account, number, sent_at);
    CREATE TABLE consents (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        account TEXT NOT NULL,
        number TEXT NOT NULL,
        scope TEXT NOT NULL,
        source TEXT NOT NULL,
        consented_at DOUBLE PRECISION NOT NULL,
        recorded_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX consents_by_number ON consents (account, number, scope);
    CREATE TABLE optout_removals (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        account TEXT NOT NULL,
        number TEXT NOT NULL,
        opted_out_at DOUBLE PRECISION NOT NULL,
        source TEXT NOT NULL,
        removed_at DOUBLE PRECISION NOT NULL,
        removed_by TEXT NOT NULL
    );
    CREATE INDEX optout_removals_by_number ON optout_removals (account, number, removed_at);
    CREATE TABLE instances (
        name TEXT PRIMARY KEY,
        started_at DOUBLE PRECISION NOT NULL,
        seen_at DOUBLE PRECISION NOT NULL,
        lease_seconds DOUBLE PRECISION NOT NULL
    );
    CREATE FUNCTION smsagg_notify_due() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_notify('{NOTIFY_CHANNEL}', ''); RETURN NULL; END $$;
    CREATE TRIGGER messages_notify_due AFTER INSERT ON messages
        FOR EACH STATEMENT EXECUTE FUNCTION smsagg_notify_due();
    CREATE FUNCTION smsagg_notify_callbacks() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_notify('{OUTBOX_CHANNEL}', 'callbacks'); RETURN NULL; END $$;
    CREATE TRIGGER callbacks_notify AFTER INSERT ON callbacks
        FOR EACH STATEMENT EXECUTE FUNCTION smsagg_notify_callbacks();
    CREATE FUNCTION smsagg_notify_smpp() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_notify('{OUTBOX_CHANNEL}', 'smpp:' || NEW.account); RETURN NULL;
        END $$;
    CREATE TRIGGER smpp_receipts_notify AFTER INSERT ON smpp_receipts
        FOR EACH ROW EXECUTE FUNCTION smsagg_notify_smpp();
    """,
    # 1 -> 2: per-type opt-outs (issue 19 item 6), as SQLite's step 5: each opt-out and each
    # removal record has a scope, "marketing" or "all"; rows from before are "marketing" (what
    # every opt-out meant until now). A constant default: no table rewrite.
    """
    ALTER TABLE optouts ADD COLUMN scope TEXT NOT NULL DEFAULT 'marketing'
        CHECK (scope IN ('marketing', 'all'));
    ALTER TABLE optout_removals ADD COLUMN scope TEXT NOT NULL DEFAULT 'marketing'
        CHECK (scope IN ('marketing', 'all'));
    """,
    # 2 -> 3: receipts applied in one round trip per group (see _apply_receipts): the function
    # as schema 5 has it (postgres_receipts.py; the same contract as schema 3's, which step 5
    # replaces in a database made before).
    APPLY_RECEIPTS_FUNCTION,
    # 3 -> 4: fewer index entries per status change. A status change cannot be a HOT update
    # (status is in partial indexes' predicates), so each one adds an entry to every index
    # whose predicate the new row meets: 26 entries per relayed message become 18. The
    # whole-table index on status served only the pending count, which the due and queued
    # partial indexes serve; the text-kept index holds only rows whose text erase_texts may
    # blank (never a waiting message's); one index on queued rows serves lease renewal
    # (owner) and takeover (lease_until).
    """
    DROP INDEX messages_status;
    DROP INDEX messages_text_kept;
    CREATE INDEX messages_text_kept ON messages (id)
        WHERE body <> '' AND status NOT IN ('accepted', 'scheduled', 'queued');
    DROP INDEX messages_leased;
    DROP INDEX messages_owned;
    CREATE INDEX messages_queued ON messages (owner, lease_until) WHERE status = 'queued';
    """,
    # 4 -> 5: receipts of different single-part messages applied set-based (postgres_receipts);
    # an insert of no callbacks wakes no callback sender; the due index of an account holds
    # the claim's whole order (next_attempt_at, id), so a claim reads the `limit` oldest due
    # messages of the account instead of all of them, sorted: 3.3 -> 0.5 ms for 20 claimed
    # out of a backlog of 8,000.
    APPLY_RECEIPTS_FUNCTION + NOTIFY_CALLBACKS_WHEN_INSERTED + """
    CREATE INDEX messages_due_account_ordered ON messages (account, next_attempt_at, id)
        WHERE status IN ('accepted', 'scheduled');
    DROP INDEX messages_due_account;
    ALTER INDEX messages_due_account_ordered RENAME TO messages_due_account;
    """,
]

_COLUMNS = [c.strip() for c in MESSAGE_COLUMNS.split(",")]
_M_COLUMNS = ", ".join(f"m.{c}" for c in _COLUMNS)
_INSERT_MESSAGE = (
    f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES "
    f"({', '.join(f'${i}' for i in range(1, len(_COLUMNS) + 1))})"
)
_COLUMN_TYPES = {"segments": "int", "concat_ref": "int", "receipt_mode": "int", "attempts": "int",
                 "created_at": "float8", "submitted_at": "float8", "done_at": "float8",
                 "next_attempt_at": "float8", "expires_at": "float8"}
# Many messages in one statement: one array per column.
_INSERT_MESSAGES = (
    f"INSERT INTO messages ({MESSAGE_COLUMNS}) SELECT * FROM unnest("
    + ", ".join(f"${i}::{_COLUMN_TYPES.get(c, 'text')}[]" for i, c in enumerate(_COLUMNS, 1))
    + ")"
)
# Accounts with a message due at $1: a loose index scan, one seek per account with waiting
# messages (its earliest due time decides), however many messages each has.
_DUE_ACCOUNTS_CTE = (
    "WITH RECURSIVE a(account, due) AS ("
    "(SELECT account, next_attempt_at FROM messages WHERE status IN ('accepted', 'scheduled') "
    "ORDER BY account, next_attempt_at LIMIT 1) UNION ALL "
    "SELECT n.account, n.next_attempt_at FROM a CROSS JOIN LATERAL (SELECT account, "
    "next_attempt_at FROM messages WHERE status IN ('accepted', 'scheduled') "
    "AND account > a.account ORDER BY account, next_attempt_at LIMIT 1) n)"
)
# Claim up to $2 due messages ($1: now) of the one account that has some, leased to $3 for $4
# seconds; with several accounts due, claim none. The first column lists the accounts due, the
# second the earliest due time after $1 (for next_due_at), then the message, then the scope of
# its recipient's opt-out (for send_rules_state); one row with the rest NULL when nothing was
# claimed.
_CLAIM_ONE_ACCOUNT = (
    f"{_DUE_ACCOUNTS_CTE}, due AS (SELECT account FROM a WHERE due <= $1), "
    "picked AS (SELECT p.id FROM due CROSS JOIN LATERAL (SELECT id FROM messages "
    "WHERE account = due.account AND status IN ('accepted', 'scheduled') "
    "AND next_attempt_at <= $1 ORDER BY next_attempt_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) p "
    "WHERE (SELECT count(*) FROM due) = 1), "
    "claimed AS (UPDATE messages m SET status = 'queued', owner = $3, "
    f"lease_until = {DB_NOW} + $4 FROM picked WHERE m.id = picked.id RETURNING {_M_COLUMNS}) "
    "SELECT d.accounts, d.later, claimed.*, o.scope FROM (SELECT array_agg(account) AS "
    "accounts, (SELECT min(next_attempt_at) FROM messages WHERE status IN ('accepted', "
    "'scheduled') AND next_attempt_at > $1) AS later FROM due) d LEFT JOIN claimed ON TRUE "
    "LEFT JOIN optouts o ON o.account = claimed.account AND o.number = claimed.dest"
)
_LOG_MARKETING = "INSERT INTO marketing_log (account, number, sent_at) VALUES ($1, $2, $3)"
_ACCOUNT, _DEST, _CLASS, _CREATED = 1, 2, 10, 17  # positions in a message row
# The connection failed or the server cannot serve: the store is unavailable (HTTP 503).
_UNAVAILABLE = (OSError, asyncio.TimeoutError, asyncpg.InterfaceError,
                asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
                asyncpg.TooManyConnectionsError, asyncpg.AdminShutdownError,
                asyncpg.CrashShutdownError, asyncpg.ConnectionDoesNotExistError,
                # asyncpg's own state when the server went away in the middle of an operation
                # ("cannot switch to state 15; another operation is in progress").
                asyncpg.InternalClientError)
_RETRY = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
# The database refused one operation's data: that operation fails, the store is fine.
_REFUSED = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError)


@dataclass(slots=True)
class _Write:
    """One write waiting for a group: an accept (`row`, `key`), one of the BATCHED kinds
    (`args`), or any other (`fn`)."""

    op: str
    future: asyncio.Future[Any]
    fn: Callable[[asyncpg.Connection], Awaitable[Any]] | None = None
    row: tuple[Any, ...] = ()
    key: str | None = None
    args: Any = None


@dataclass(slots=True)
class _Lane:
    """Writes of one kind waiting for a group, and the groups being committed."""

    max_groups: int
    writes: list[_Write] = field(default_factory=list)
    groups: int = 0
    flush_scheduled: bool = False  # a group task started has not taken the writes yet


class _Refused(StoreError):
    """The database refused one operation (a constraint, a bug), not the store as a whole."""


def masked_dsn(dsn: str) -> str:
    """The DSN without password or query (`postgresql://user@host:port/db`), for messages."""
    try:
        url = urllib.parse.urlsplit(dsn)
        host = url.hostname or ""
        port = f":{url.port}" if url.port else ""
        user = f"{url.username}@" if url.username else ""
    except ValueError:
        return "<unparsable DSN>"
    return f"{url.scheme}://{user}{host}{port}{url.path}"


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A connection back in the pool needs no reset: pooled connections never LISTEN, set
    session settings or keep advisory locks (the migration's lock is released in a finally),
    and asyncpg rolls back an open transaction itself. asyncpg's default reset is one more
    round trip (UNLISTEN, RESET ALL, ...) per operation."""


def _count(status: str) -> int:
    """Rows an asyncpg command status ("UPDATE 3") names."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresStore:
    backend = "postgres"

    def __init__(self, dsn: str, *, instance: str, pool_size: int = 10,
                 lease_seconds: float = 10.0, max_writes_queued: int = 50_000,
                 on_accepted: Callable[[], None] | None = None,
                 on_outbox: Callable[[str | None], None] | None = None) -> None:
        """`instance`: this instance's name, the owner of what it claims (unique per running
        instance). `on_accepted` hears that messages became due (another instance accepted
        some, or a lease ran out): the dispatcher looks at the store. `on_outbox` hears that
        an instance added a callback (None) or an SMPP receipt/MO for an account (its name)."""
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be > 0")
        self.dsn = dsn
        self.where = masked_dsn(dsn)
        self.instance = instance
        self.pool_size = pool_size
        self.lease_seconds = lease_seconds
        self.max_writes_queued = max_writes_queued
        self._on_accepted = on_accepted
        self._on_outbox = on_outbox
        self.pending = 0
        self.writer_address: str | None = None  # ingress workers go through the daemon
        self._writes_queued = 0
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._closed = True
        self._closing = False  # close() under way: writes made before are committed
        self._size = 0
        self._last_error: str | None = None
        self._last_error_at = 0.0
        self._last_ok_at = 0.0
        self._pending_changes = 0  # local changes to `pending`, to refresh it without races
        # Accepts, submits' records and the other writes (receipts, outboxes, ...) are grouped
        # apart: a submit's record never waits behind a burst of accepts or receipts (each
        # submit answered but not yet recorded is a duplicate if the instance dies, and keeps
        # its window slot until the record commits). Each lane has a quarter of the pool less
        # two connections (2 of 10), as have the opt-out reads: the two left and whatever a lane
        # does not use serve claims, other reads and lease renewal without waiting.
        # Receipts have a lane of their own with one group at a time: the receipts that come
        # while a group commits go together in the next (set-based, postgres_receipts.py: the
        # server's CPU per receipt falls with the group's size).
        groups = max(1, (pool_size - 2) // 4)
        self._lanes = {"accept": _Lane(groups), "other": _Lane(groups),
                       "record_submitted": _Lane(groups), "apply_receipts": _Lane(1)}
        self._tasks: set[asyncio.Task[None]] = set()
        # Opt-out reads of the accept path asked in the same loop turns go as one statement.
        self._scope_reads: dict[tuple[str, str], list[asyncio.Future[str | None]]] = {}
        self._scope_batches = 0
        self._scope_flush = False
        # The last claim's earliest later due time: (monotonic, _due_changes then, the time).
        self._later: tuple[float, int, float | None] | None = None
        self._due_changes = 0  # retries, holds and releases written here
        # The last one-account claim's opt-out scopes by (account, number): (monotonic,
        # _optout_changes then, scopes). send_rules_state answers from them within LATER_TTL.
        self._claim_scopes: tuple[float, int, dict[tuple[str, str], str | None]] | None = None
        self._optout_changes = 0  # opt-outs added or removed here
        self.live_instances = 1  # instances whose heartbeat is within their lease
        # Their names, sorted; `on_members` hears every change (and the first list, at open):
        # the app shares providers' binds and TPS out between them.
        self.members: tuple[str, ...] = (instance,)
        self.on_members: Callable[[tuple[str, ...]], None] | None = None
        self._members_task: asyncio.Task[None] | None = None
        # The ids of claimed messages this instance's dispatcher has in hand; None: renew every
        # claim it owns. A claim committed whose answer never came back is not in hand: its
        # lease runs out and it goes back to the queue.
        self.held: Callable[[], Collection[str]] | None = None
        self._maintain_failing = False  # the last round of lease renewal failed
        self._settle_until = 0.0  # monotonic: after an outage, no takeovers until then
        self._failing_since = 0.0  # monotonic: when lease renewal began to fail
        self.pending_by_account: Counter[str] = Counter()  # `pending` per account
        self.worker = False  # an ingress worker's store: see _open_worker
        # Hears (provider, its message ids) as soon as records of submits commit: the pool
        # frees their window slots then (pool.recorded; the dispatcher's own call after is a
        # no-op).
        self.on_recorded: Callable[[str, list[str]], None] | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, migrate under an advisory lock, take back what this instance held before a
        restart and what dead instances held, start renewing leases. Every refusal is one
        StoreError line that names the server (never its password) and what is wrong."""
        if self.worker:
            await self._open_worker()
            return
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=0, max_size=self.pool_size, timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT, server_settings=self._settings(),
                reset=_keep_session)
        except Exception as exc:
            raise StoreError(f"PostgreSQL store {self.where}: cannot connect: "
                             f"{self._scrub(exc)}") from None
        self._closed = self._closing = False
        try:
            async with self._pool.acquire() as conn:
                await self._migrate(conn)
                await self._recover(conn, mine=True)
                await self._heartbeat(conn, starting=True)
                await self._read_members(conn, always=True)
                await conn.execute(f"SELECT pg_notify('{MEMBERS_CHANNEL}', $1)", self.instance)
                self.pending, self.pending_by_account = await self._count_pending(conn)
                self._size = await conn.fetchval("SELECT pg_database_size(current_database())")
            await self._listen()
        except BaseException as exc:
            await self.close()
            if isinstance(exc, StoreError):
                raise
            if isinstance(exc, Exception):
                what = "cannot connect" if isinstance(exc, _UNAVAILABLE) else "cannot open"
                raise StoreError(f"PostgreSQL store {self.where}: {what}: "
                                 f"{self._scrub(exc)}") from None
            raise
        self._last_ok_at = time.monotonic()
        self._maintenance = asyncio.create_task(self._maintain(), name="store-leases")
        log.info("store_opened", backend="postgres", server=self.where, instance=self.instance,
                 pending=self.pending, lease_seconds=self.lease_seconds)

    def _settings(self) -> dict[str, str]:
        """Its connections name the instance (and worker) in pg_stat_activity, and plan with
        PLANNER_SETTINGS."""
        return {"application_name": f"smsagg {self.instance}"[:63], **PLANNER_SETTINGS}

    async def _open_worker(self) -> None:
        """An ingress worker's store (`worker`): a pool for its accepts and the HTTP API's
        reads and writes. It claims nothing, so it holds no lease, heartbeat, member entry,
        LISTEN connection or maintenance task; the daemon that started it migrated the
        schema, and a NOTIFY trigger wakes every instance's dispatcher for its accepts."""
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=0, max_size=self.pool_size, timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT, server_settings=self._settings(),
                reset=_keep_session)
            async with self._pool.acquire() as conn:
                version = await conn.fetchval("SELECT max(version) FROM smsagg_schema")
        except Exception as exc:
            if self._pool is not None:
                self._pool.terminate()
                self._pool = None
            raise StoreError(f"PostgreSQL store {self.where}: cannot connect: "
                             f"{self._scrub(exc)}") from None
        if version != SCHEMA_VERSION:
            self._pool.terminate()
            self._pool = None
            raise StoreError(f"PostgreSQL store {self.where}: schema version {version}, "
                             f"not {SCHEMA_VERSION}: the daemon migrates it first")
        self._closed = self._closing = False
        self._last_ok_at = time.monotonic()
        log.info("store_opened", backend="postgres", server=self.where, instance=self.instance,
                 role="worker")

    def _scrub(self, exc: BaseException) -> str:
        """An exception as text, with the DSN's password (if it appears) masked."""
        text = f"{type(exc).__name__}: {exc}".replace(self.dsn, self.where)
        with contextlib.suppress(ValueError):
            password = urllib.parse.urlsplit(self.dsn).password
            if password:
                text = text.replace(password, "***")
        return text.splitlines()[0] if text else type(exc).__name__

    def _brief(self, exc: BaseException) -> str:
        """An operation's error without addresses: OSError's reason, PostgreSQL's message."""
        if isinstance(exc, OSError):
            return f"{type(exc).__name__}: {os.strerror(exc.errno)}" if exc.errno else (
                type(exc).__name__)
        if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
            return self._scrub(exc)
        return type(exc).__name__

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        """Bring the schema to SCHEMA_VERSION, one transaction per step, holding an advisory
        lock so that instances starting together migrate once."""
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS smsagg_schema (version INTEGER NOT NULL)")
            version = await conn.fetchval("SELECT max(version) FROM smsagg_schema")
            if version is None:
                others = await conn.fetchval(
                    "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() "
                    "AND tablename <> 'smsagg_schema'")
                if others:
                    raise StoreError(
                        f"PostgreSQL store {self.where}: has tables but no smsagg schema "
                        "version: not an smsagg database; point [store] dsn elsewhere")
                version = 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"PostgreSQL store {self.where}: database schema version {version} is "
                    f"newer than this smsagg understands ({SCHEMA_VERSION}); upgrade smsagg "
                    "or use another database")
            for target in range(version, SCHEMA_VERSION):
                try:
                    async with conn.transaction():
                        await conn.execute(MIGRATIONS[target])
                        await conn.execute("DELETE FROM smsagg_schema")
                        await conn.execute("INSERT INTO smsagg_schema VALUES ($1)", target + 1)
                except asyncpg.PostgresError as exc:
                    raise StoreError(
                        f"PostgreSQL store {self.where}: migrating the schema from version "
                        f"{target} to {target + 1} failed ({exc}); it was left at version "
                        f"{target}") from None
                log.info("store_migrated", backend="postgres", version=target + 1)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)

    async def _listen(self) -> None:
        """A connection of its own that hears every instance's NOTIFYs: messages due, outbox
        entries added."""
        if self._on_accepted is None and self._on_outbox is None:
            return
        conn = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT)
        await conn.add_listener(NOTIFY_CHANNEL, self._notified)
        await conn.add_listener(OUTBOX_CHANNEL, self._outbox_notified)
        await conn.add_listener(MEMBERS_CHANNEL, self._members_notified)
        self._listener = conn

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if self._on_accepted is not None:
            self._on_accepted()

    def _members_notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if payload == self.instance or self._closing:
            return
        if self._members_task is None or self._members_task.done():
            self._members_task = asyncio.create_task(self._refresh_members(),
                                                     name="store-members")

    async def _refresh_members(self) -> None:
        with contextlib.suppress(StoreError):  # else the next heartbeat reads them again
            await self._run("members", lambda conn: self._read_members(
                conn, keep=time.monotonic() < self._settle_until), tx=False)

    async def _read_members(self, conn: asyncpg.Connection, *, always: bool = False,
                            keep: bool = False) -> None:
        """The live instances (heartbeat within their lease), by name; tell on a change.
        With `keep`, the ones known before stay members (after an outage)."""
        rows = await conn.fetch(f"SELECT name FROM instances WHERE seen_at + lease_seconds "
                                f">= {DB_NOW} ORDER BY name")
        members = tuple(r[0] for r in rows) or (self.instance,)
        if keep:
            members = tuple(sorted(set(members) | set(self.members)))
        self.live_instances = len(members)
        metrics.store_live_instances.set(self.live_instances)
        if members == self.members and not always:
            return
        if members != self.members:
            log.info("store_members_changed", backend="postgres", instance=self.instance,
                     members=list(members), was=list(self.members))
        self.members = members
        if self.on_members is not None:
            self.on_members(members)

    def _outbox_notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if self._on_outbox is None:
            return
        if payload == "callbacks":
            self._on_outbox(None)
        elif payload.startswith("smpp:"):
            self._on_outbox(payload[5:])

    async def close(self) -> None:
        """Writes already made are committed and answered first; new ones are refused."""
        self._closing = True
        deadline = time.monotonic() + CLOSE_TIMEOUT
        while self._tasks or any(lane.writes for lane in self._lanes.values()):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=left)
            else:
                await asyncio.sleep(0)  # the flush scheduled for this turn starts them
        self._closed = True
        for lane in self._lanes.values():
            for item in lane.writes:
                if not item.future.done():
                    item.future.set_exception(StoreError("store is closed"))
            lane.writes.clear()
        if self._members_task is not None:
            self._members_task.cancel()
            await asyncio.gather(self._members_task, return_exceptions=True)
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
            self._maintenance = None
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.close(), CLOSE_TIMEOUT)
            self._listener = None
        pool, self._pool = self._pool, None
        if pool is not None and not self.worker:
            with contextlib.suppress(Exception):  # a graceful leave: no longer counted live
                await asyncio.wait_for(pool.execute(
                    "DELETE FROM instances WHERE name = $1", self.instance), LEAVE_TIMEOUT)
                await asyncio.wait_for(pool.execute(
                    f"SELECT pg_notify('{MEMBERS_CHANNEL}', $1)", self.instance), LEAVE_TIMEOUT)
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
            except Exception:
                pool.terminate()

    # ---- leases ------------------------------------------------------------------------------

    async def _maintain(self) -> None:
        """Every third of a lease: renew ours, take back expired ones, refresh figures."""
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self._run("maintain", self._maintain_once)
                if self._maintain_failing:
                    log.info("store_reachable_again", backend="postgres", server=self.where)
                self._maintain_failing = False
            except Exception as exc:  # whatever it was, this task must live: leases depend on it
                metrics.store_lease_renewal_failures.inc()
                if not self._maintain_failing:
                    error = str(exc) if isinstance(exc, StoreError) else self._brief(exc)
                    log.error("store_lease_renewal_failed", backend="postgres", error=error)
                    self._failing_since = time.monotonic()
                self._maintain_failing = True
            if self._listener is None or self._listener.is_closed():
                with contextlib.suppress(Exception):
                    self._listener = None
                    await self._listen()

    async def _maintain_once(self, conn: asyncpg.Connection) -> None:
        if self._maintain_failing:
            # The database was unreachable: no instance could renew, so every lease and
            # heartbeat looks expired. For a lease, or as long as the outage lasted if longer
            # (others may reach the database again later than this one), take nobody's claims
            # over and drop nobody from the members: the live ones renew meanwhile (no
            # duplicate sends, no binds and TPS shared out among fewer than are alive).
            now = time.monotonic()
            self._settle_until = now + max(self.lease_seconds, now - self._failing_since)
        settling = time.monotonic() < self._settle_until
        await self.renew(conn)
        await self._heartbeat(conn)
        await self._read_members(conn, keep=settling)
        if not settling:
            await self._recover(conn, mine=False)
        changes = self._pending_changes
        count, by_account = await self._count_pending(conn)
        if changes == self._pending_changes:  # else a local change raced the count: next time
            self.pending, self.pending_by_account = count, by_account
        self._size = await conn.fetchval("SELECT pg_database_size(current_database())")

    async def _heartbeat(self, conn: asyncpg.Connection, *, starting: bool = False) -> None:
        """This instance is alive (registered by name); an instance not seen for its lease is
        not counted as live. The ground for sharing a provider's binds and TPS."""
        started = f", started_at = {DB_NOW}" if starting else ""
        await conn.execute(
            "INSERT INTO instances (name, started_at, seen_at, lease_seconds) "
            f"VALUES ($1, {DB_NOW}, {DB_NOW}, $2) ON CONFLICT (name) DO UPDATE "
            f"SET seen_at = {DB_NOW}, lease_seconds = $2{started}",
            self.instance, self.lease_seconds)

    async def renew(self, conn: asyncpg.Connection) -> None:
        """Extend the lease of everything this instance holds."""
        until = f"{DB_NOW} + $2"
        lease = self.lease_seconds
        if self.held is None:
            await conn.execute(f"UPDATE messages SET lease_until = {until} "
                               "WHERE owner = $1 AND status = 'queued'", self.instance, lease)
        else:
            await conn.execute(f"UPDATE messages SET lease_until = {until} WHERE owner = $1 "
                               "AND status = 'queued' AND id = ANY($3::text[])",
                               self.instance, lease, list(self.held()))
        for table in ("callbacks", "smpp_receipts"):
            await conn.execute(f"UPDATE {table} SET lease_until = {until} WHERE owner = $1",
                               self.instance, lease)

    async def recover(self) -> int:
        """Claimed messages whose owner's lease ran out go back to the queue; how many."""
        result: int = await self._run("recover", lambda conn: self._recover(conn, mine=False))
        return result

    async def _recover(self, conn: asyncpg.Connection, *, mine: bool) -> int:
        """Expired claims back to the queue; with `mine`, also what this instance (by name)
        held before it restarted, and queued rows with no owner (copied from SQLite)."""
        extra = "OR owner IS NULL OR owner = $1" if mine else ""
        rows = await conn.fetch(
            "WITH expired AS (SELECT id, owner FROM messages WHERE status = 'queued' AND "
            f"(lease_until < {DB_NOW} {extra}) FOR UPDATE SKIP LOCKED) "
            "UPDATE messages m SET status = 'accepted', owner = NULL, lease_until = NULL "
            "FROM expired WHERE m.id = expired.id RETURNING expired.owner",
            *((self.instance,) if mine else ()))
        if mine:
            await conn.execute("UPDATE callbacks SET owner = NULL WHERE owner = $1",
                               self.instance)
            await conn.execute("UPDATE smpp_receipts SET owner = NULL WHERE owner = $1",
                               self.instance)
        if not rows:
            return 0
        owners = Counter(r[0] or "" for r in rows)
        taken = sum(n for owner, n in owners.items() if owner != self.instance)
        if taken:
            metrics.store_lease_takeovers.inc(taken)
        log.warning("store_claims_recovered", backend="postgres", messages=len(rows),
                    owners=dict(owners), instance=self.instance)
        await conn.execute(f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')")
        if self._on_accepted is not None:
            self._on_accepted()
        return len(rows)

    @staticmethod
    async def _count_pending(conn: asyncpg.Connection) -> tuple[int, Counter[str]]:
        """The cluster's pending count, in all and per account."""
        # Constants, each part matching a partial index (messages_due_account, messages_queued).
        assert PENDING == ("accepted", "scheduled", "queued")
        rows = await conn.fetch(
            "SELECT account, count(*) FROM (SELECT account FROM messages "
            "WHERE status IN ('accepted', 'scheduled') UNION ALL SELECT account FROM messages "
            "WHERE status = 'queued') p GROUP BY account")
        by_account = Counter({r[0]: r[1] for r in rows})
        return sum(by_account.values()), by_account

    # ---- running operations ----------------------------------------------------------------

    def write_failure(self) -> str | None:
        """The last error while the database fails (within WRITE_FAILURE_WINDOW seconds and
        nothing succeeded since); None when it answers. For readiness."""
        if self._last_error is None or self._last_error_at <= self._last_ok_at:
            return None
        if time.monotonic() - self._last_error_at < WRITE_FAILURE_WINDOW:
            return self._last_error
        return None

    @property
    def writes_queued(self) -> int:
        return self._writes_queued

    def size_bytes(self) -> int:
        return self._size

    def _changed_pending(self, delta: int, accounts: Mapping[str, int] | None = None) -> None:
        """`pending` moved by `delta`; `accounts`: the same change per account."""
        self.pending = max(0, self.pending + delta)
        for account, n in (accounts or {}).items():
            left = self.pending_by_account[account] + n
            if left > 0:
                self.pending_by_account[account] = left
            else:  # the map holds accounts with messages waiting
                self.pending_by_account.pop(account, None)
        self._pending_changes += 1

    async def _run(self, op: str, fn: Callable[[asyncpg.Connection], Awaitable[T]], *,
                   tx: bool = True) -> T:
        """`fn` on a pooled connection, in one transaction (`tx`; else one statement, which
        commits alone); run again after a deadlock or a serialization failure. A database
        that cannot serve is a StoreError (readiness fails meanwhile); an operation whose data
        the database refused, _Refused."""
        if self._closed or self._pool is None:
            raise StoreError("store is closed")
        if self._writes_queued >= self.max_writes_queued:
            raise StoreBusy("too many operations waiting for the store")
        self._writes_queued += 1
        started = time.monotonic()
        try:
            for attempt in range(RETRIES):
                try:
                    pool = self._pool
                    conn = await pool.acquire(timeout=ACQUIRE_TIMEOUT)
                    try:
                        if tx:
                            async with conn.transaction():
                                result = await fn(conn)
                        else:
                            result = await fn(conn)
                    finally:
                        self._release(pool, conn)
                    break
                except _RETRY:
                    if attempt == RETRIES - 1:
                        raise
        except _REFUSED as exc:
            raise _Refused(f"PostgreSQL store: {op}: {self._brief(exc)}") from None
        except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:  # down, full, read-only, ...
            # Answered to API clients (503): the error, not where the server is.
            self._last_error = f"PostgreSQL store: {self._brief(exc)}"
            self._last_error_at = time.monotonic()
            raise StoreError(self._last_error) from None
        finally:
            self._writes_queued -= 1
        done = time.monotonic()
        self._last_ok_at = done
        metrics.store_operation_seconds.labels("postgres", op).observe(done - started)
        return result

    def _release(self, pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
        """`conn` back to `pool`, in a task of its own: asyncpg's release goes through a
        shielded task, three loop turns the caller (a commit whose writers wait, a claim) need
        not wait for."""
        task = asyncio.ensure_future(pool.release(conn))
        self._tasks.add(task)
        task.add_done_callback(self._released)

    def _released(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("store_release_failed", backend="postgres",
                        error=self._brief(task.exception()))  # type: ignore[arg-type]

    # ---- accept ------------------------------------------------------------------------------

    async def accept(self, message: Message, idempotency_key: str | None) -> AcceptResult:
        """Stored and committed before it returns (in a group: see _write)."""
        row = message_row(message)
        prior = await self._write("accept", row=row, key=idempotency_key)
        self._changed_pending(waiting_added("accept", (row, idempotency_key), prior),
                              waiting_by_account("accept", (row,), prior))
        return accept_result(message, prior)

    async def _write(self, op: str, fn: Callable[[asyncpg.Connection], Awaitable[T]] | None
                     = None, *, row: tuple[Any, ...] = (), key: str | None = None,
                     args: Any = None) -> Any:
        """A write, committed before it returns. Writes made while earlier ones wait for their
        commit go together in one transaction: one round of BEGIN/COMMIT and one WAL flush for
        all of them, as SQLite's group commit (accepts: one pipelined insert)."""
        if self._closed or self._closing:
            raise StoreError("store is closed")
        lane = self._lanes.get(op) or self._lanes["other"]
        if self._writes_queued + len(lane.writes) >= self.max_writes_queued:
            raise StoreBusy("too many operations waiting for the store")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        lane.writes.append(_Write(op, future, fn, row, key, args))
        self._start_groups(lane)
        started = time.monotonic()
        result = await future
        metrics.store_operation_seconds.labels("postgres", op).observe(
            time.monotonic() - started)
        return result

    def _start_groups(self, lane: _Lane) -> None:
        """A group task started now takes, at its first step (the next loop turn), every write
        of its lane made in this turn; while enough groups are being committed, the next
        starts as one ends, with all that came meanwhile. (Started here, not from a callback
        scheduled for the next turn: a loop turn less between a submit's answer and its
        record, which holds the submit's window slot.)"""
        if lane.writes and not lane.flush_scheduled and lane.groups < lane.max_groups:
            lane.flush_scheduled = True
            lane.groups += 1
            task = asyncio.ensure_future(self._commit_group(lane))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _commit_group(self, lane: _Lane) -> None:
        lane.flush_scheduled = False
        group, lane.writes = lane.writes[:GROUP_SIZE], lane.writes[GROUP_SIZE:]
        try:
            if group:
                self._start_groups(lane)  # more than a group waits: the next one starts too
                await self._commit(group)
        finally:
            lane.groups -= 1
            self._start_groups(lane)

    async def _commit(self, group: list[_Write]) -> None:
        try:
            try:
                results = await self._run("group", lambda conn: _write_all(conn, group),
                                          tx=False)
            except _Refused:
                if len(group) == 1:
                    raise
                # One of them was refused: each alone, so it cannot sink the others.
                for item in group:
                    await self._commit_alone(item)
                return
            for item, result in zip(group, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
            if self.on_recorded is not None and group[0].op == "record_submitted":
                self._tell_recorded(group)
        except BaseException as exc:
            for item in group:
                if not item.future.done():
                    item.future.set_exception(exc if isinstance(exc, Exception)
                                              else StoreError("store is closing"))
            if not isinstance(exc, Exception):
                raise

    def _tell_recorded(self, group: Sequence[_Write]) -> None:
        """The records of a group committed: their window slots are free now, a loop turn
        before each submitter's task resumes to free them."""
        assert self.on_recorded is not None
        for item in group:
            if item.op == "record_submitted":
                _, provider, parts, _ = item.args
                self.on_recorded(provider, [p.provider_msg_id for p in parts])

    async def _commit_alone(self, item: _Write) -> None:
        try:
            [result] = await self._run(item.op, lambda conn: _write_all(conn, [item]),
                                       tx=False)
        except StoreError as exc:
            item.future.set_exception(exc)
        else:
            item.future.set_result(result)

    async def accept_many(self, messages: Sequence[Message]) -> None:
        """All in one transaction: every message is stored, or none is."""
        rows = [message_row(m) for m in messages]
        marketing = marketing_rows(messages)

        async def op(conn: asyncpg.Connection) -> None:
            await conn.executemany(_INSERT_MESSAGE, rows)
            if marketing:
                await conn.executemany(_LOG_MARKETING, marketing)

        await self._run("accept_many", op)
        self._changed_pending(waiting_added("accept_many", (rows,), None),
                              waiting_by_account("accept_many", (rows,), None))

    # ---- claims and outcomes ---------------------------------------------------------------

    async def claim_due(self, now: float, limit: int,
                        held: Mapping[str, int] | None = None) -> list[Message]:
        """Due messages, now queued and leased to this instance; rows other instances are
        claiming at the same moment are skipped, never waited for or taken twice. With more
        than one account due, `limit` is shared between them so that what each holds (`held`,
        in flight) plus what it gets now is as level as can be (writes.fair_shares)."""

        async def op(conn: asyncpg.Connection) -> list[Message]:
            # The common case, one account due (or none), in one statement, oldest first; with
            # more, it claims nothing and names them for the fair claim.
            changes = self._due_changes  # before the statement's snapshot
            found = await conn.fetch(_CLAIM_ONE_ACCOUNT, now, limit, self.instance,
                                     self.lease_seconds)
            due: list[str] = (found[0][0] or []) if found else []
            if len(due) <= 1:
                claimed = [tuple(r) for r in found if r[2] is not None]
                rows = sorted((r[2:-1] for r in claimed),
                              key=lambda r: (r[21], r[0]))  # next_attempt_at, id
                self._later = (time.monotonic(), changes, found[0][1])
                self._claim_scopes = (time.monotonic(), self._optout_changes,
                                      {(r[3], r[4]): r[-1] for r in claimed})
            else:
                rows = await self._claim_fairly(conn, now, limit, due, held or {})
            multi = [r[0] for r in rows if r[8] > 1]
            done: dict[str, set[int]] = {}
            if multi:
                for mid, seq in await conn.fetch(
                        "SELECT message_id, seq FROM segments WHERE message_id = ANY($1)",
                        multi):
                    done.setdefault(mid, set()).add(seq)
            messages = [row_to_message(r) for r in rows]
            for m in messages:
                if m.id in done:
                    m.done_segments = frozenset(done[m.id])
            return messages

        result: list[Message] = await self._run("claim_due", op, tx=False)
        return result

    async def _claim_some(self, conn: asyncpg.Connection, now: float,
                          wants: Sequence[tuple[str, int]]) -> list[Any]:
        """Up to n due messages of each (account, n), oldest first within an account."""
        rows = await conn.fetch(
            "WITH want AS (SELECT * FROM unnest($1::text[], $2::int[]) AS w(account, n)), "
            "due AS (SELECT d.id FROM want w CROSS JOIN LATERAL (SELECT id FROM messages "
            "WHERE account = w.account AND status IN ('accepted', 'scheduled') "
            "AND next_attempt_at <= $3 ORDER BY next_attempt_at, id LIMIT w.n "
            "FOR UPDATE SKIP LOCKED) d) "
            "UPDATE messages m SET status = 'queued', owner = $4, "
            f"lease_until = {DB_NOW} + $5 FROM due WHERE m.id = due.id "
            f"RETURNING {_M_COLUMNS}", [w[0] for w in wants], [w[1] for w in wants], now,
            self.instance, self.lease_seconds)
        return sorted(rows, key=lambda r: (r[21], r[0]))  # next_attempt_at, id

    async def _claim_fairly(self, conn: asyncpg.Connection, now: float, limit: int,
                            due: Sequence[str], held: Mapping[str, int]) -> list[Any]:
        """Rounds of fair shares; what an account cannot use goes to the others next round."""
        levels = {a: held.get(a, 0) for a in due}
        rows: list[Any] = []
        active = list(due)
        while limit > 0 and active:
            shares = fair_shares(active, levels, limit)
            claimed = await self._claim_some(
                conn, now, [(a, shares[a]) for a in active if shares[a] > 0])
            rows += claimed
            got = Counter(r[1] for r in claimed)
            for account, n in got.items():
                levels[account] += n
                limit -= n
            active = [a for a in active if shares[a] == 0 or got[a] == shares[a]]
        return rows

    async def next_due_at(self) -> float | None:
        """The earliest due time of a message waiting. Right after a claim (within LATER_TTL,
        with no retry or hold written since) the claim's own answer, with no round trip: what
        was due then it claimed, and messages accepted since wake the dispatcher anyway."""
        if self._later is not None:
            at, changes, later = self._later
            self._later = None
            if changes == self._due_changes and time.monotonic() - at < LATER_TTL:
                return later

        async def op(conn: asyncpg.Connection) -> float | None:
            due: float | None = await conn.fetchval(
                "SELECT min(next_attempt_at) FROM messages "
                "WHERE status IN ('accepted', 'scheduled')")
            return due

        return await self._run("next_due_at", op, tx=False)

    async def record_submitted(
        self, message_id: str, provider: str, parts: Sequence[SegmentSubmit], now: float
    ) -> None:
        account = await self._write("record_submitted",
                                    args=(message_id, provider, tuple(parts), now))
        if account is not None:
            self._changed_pending(-1, {account: -1})

    async def reschedule(
        self,
        message_id: str,
        provider: str | None,
        parts: Sequence[SegmentSubmit],
        next_attempt_at: float,
        error: str | None,
        count_attempt: bool = True,
    ) -> None:
        """Back to accepted for another attempt; parts that got an id are kept."""
        now = time.time()

        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "UPDATE messages SET status = 'accepted', next_attempt_at = $1, error = $2, "
                "provider = COALESCE($3, provider), attempts = attempts + $4, owner = NULL, "
                "lease_until = NULL WHERE id = $5 AND status = 'queued'",
                next_attempt_at, error, provider if parts else None, int(count_attempt),
                message_id)
            if parts and provider is not None:
                await _insert_parts(conn, message_id, provider, parts, now)

        try:
            await self._write("reschedule", op)
        finally:
            self._due_changes += 1  # after the commit: a claim that began before missed it

    async def hold(self, message_id: str, next_attempt_at: float, error: str) -> None:
        """A claimed message back to scheduled until `next_attempt_at` (a send-time rule), no
        attempt spent; released, so any instance may take it then."""
        try:
            await self._write("hold", lambda conn: conn.execute(
                "UPDATE messages SET status = 'scheduled', next_attempt_at = $1, error = $2, "
                "owner = NULL, lease_until = NULL WHERE id = $3 AND status = 'queued'",
                next_attempt_at, error, message_id))
        finally:
            self._due_changes += 1

    async def release_waiting(self, now: float) -> int:
        """A provider came back: messages waiting for one are due now."""

        async def op(conn: asyncpg.Connection) -> int:
            return _count(await conn.execute(
                "UPDATE messages SET next_attempt_at = $1 WHERE status = 'accepted' "
                "AND next_attempt_at > $1 AND error = $2", now, NO_PROVIDER))

        try:
            released: int = await self._write("release_waiting", op)
        finally:
            self._due_changes += 1
        return released

    async def finish(
        self, message_id: str, status: MessageStatus, error: str | None, now: float
    ) -> FinalNotice | None:
        assert status in FINAL_STATUSES
        notice, was_pending = await self._write(
            "finish", lambda conn: _finish(conn, message_id, status, error, now))
        if was_pending:
            self._changed_pending(-1, {notice.account: -1} if notice is not None else None)
        result: FinalNotice | None = notice
        return result

    async def apply_receipts(self, updates: Sequence[ReceiptUpdate]) -> list[ReceiptResult]:
        """Wherever a receipt arrives: matched by provider and id, applied in one
        transaction; the message rows are locked in id order, so instances applying receipts
        at once never deadlock and never both miss the last segment."""
        updates = list(updates)
        applied = await self._write("apply_receipts", args=updates)
        less: Counter[str] = Counter()
        for result, was_pending in applied:
            if was_pending and result.final is not None:
                less[result.final.account] -= 1
        self._changed_pending(-sum(1 for _, was_pending in applied if was_pending), less)
        return [result for result, _ in applied]

    async def cancel(self, account: str, message_id: str,
                     now: float) -> tuple[str, FinalNotice | None]:
        """Cancel a message not yet taken for submission (accepted or scheduled)."""
        outcome, notice, was_pending = await self._write(
            "cancel", lambda conn: _cancel(conn, account, message_id, now))
        if was_pending:
            self._changed_pending(-1, {account: -1})
        return outcome, notice

    # ---- receipts that never come --------------------------------------------------------------

    async def claim_overdue_segments(self, provider: str, submitted_before: float,
                                     queried_before: float, now: float,
                                     limit: int) -> list[OverdueSegment]:
        """Parts sent to `provider` that wait for a receipt too long, to ask about: marked as
        queried now (rows another instance is marking are skipped)."""
        rows = await self._write("claim_overdue_segments", lambda conn: _claim_overdue(
            conn, provider, submitted_before, queried_before, now, limit))
        return [OverdueSegment(r[0], r[1], r[2], Sender(r[3], SenderKind(r[4]))) for r in rows]

    async def expire_unreceipted(self, submitted_before: float, now: float, limit: int,
                                 error: str) -> list[FinalNotice]:
        """Messages submitted before `submitted_before` still without a final receipt become
        final 'unknown'; their notices."""
        notices: list[FinalNotice] = await self._write(
            "expire_unreceipted",
            lambda conn: _expire_unreceipted(conn, submitted_before, now, limit, error))
        return notices

    # ---- consent records and opt-out removals ----------------------------------------------

    async def add_consent(self, account: str, number: str, scope: str, source: str,
                          consented_at: float, now: float) -> int:
        """Record a recipient's consent; its id."""
        consent_id: int = await self._write("add_consent", lambda conn: conn.fetchval(
            "INSERT INTO consents (account, number, scope, source, consented_at, recorded_at) "
            "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            account, number, scope, source, consented_at, now))
        return consent_id

    async def has_consent(self, account: str, number: str, scope: str) -> bool:
        """A consent for ``scope`` (or for "all") is on record for this number."""
        found = await self._run("has_consent", lambda conn: conn.fetchval(
            "SELECT 1 FROM consents WHERE account = $1 AND number = $2 "
            "AND scope IN ($3, 'all') LIMIT 1", account, number, scope), tx=False)
        return found is not None

    async def list_consents(self, account: str, number: str | None,
                            limit: int) -> list[tuple[int, str, str, str, float, float]]:
        """(id, number, scope, source, consented_at, recorded_at), oldest first."""
        rows = await self._list("list_consents", "SELECT id, number, scope, source, "
                                "consented_at, recorded_at FROM consents", account, number,
                                "id", limit)
        return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    async def remove_optout_logged(self, account: str, number: str, removed_by: str,
                                   now: float) -> bool:
        """Remove an opt-out, keeping a record of it (when it was made, by whom removed)."""
        self._optout_changes += 1  # claims' opt-out reads from before are stale
        try:
            removed: bool = await self._write("remove_optout_logged", lambda conn: _remove_logged(
                conn, account, number, removed_by, now))
        finally:
            self._optout_changes += 1
        return removed

    async def list_optout_removals(self, account: str, number: str | None, limit: int
                                   ) -> list[tuple[str, float, str, float, str, str]]:
        """(number, opted_out_at, source, removed_at, removed_by, scope), oldest first."""
        rows = await self._list("list_optout_removals", "SELECT number, opted_out_at, source, "
                                "removed_at, removed_by, scope FROM optout_removals", account,
                                number, "id", limit)
        return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    async def _list(self, op: str, select: str, account: str, number: str | None,
                    order: str, limit: int) -> list[Any]:
        sql = f"{select} WHERE account = $1"
        args: list[Any] = [account]
        if number is not None:
            sql += " AND number = $2"
            args.append(number)
        sql += f" ORDER BY {order} LIMIT ${len(args) + 1}"
        rows: list[Any] = await self._run(op, lambda conn: conn.fetch(sql, *args, limit),
                                          tx=False)
        return rows

    # ---- retention ---------------------------------------------------------------------------

    async def erase_texts(self, keep_text: str, limit: int) -> int:
        """Blank up to ``limit`` texts ``keep_text`` no longer keeps; how many were blanked."""
        if keep_text == "always":
            return 0
        keep = ["accepted", "scheduled", "queued"]
        if keep_text == "until_final":
            keep.append("submitted")
        erased: int = await self._write("erase_texts", lambda conn: _erase_texts(
            conn, keep, limit))
        return erased

    async def purge_before(self, cutoff: float, limit: int) -> int:
        """Delete up to ``limit`` final messages created before ``cutoff`` (and their rows)."""
        purged: int = await self._write("purge_before", lambda conn: _purge_before(
            conn, cutoff, limit))
        return purged

    # ---- reads -------------------------------------------------------------------------------

    async def get_message(self, account: str, message_id: str) -> Message | None:
        async def op(conn: asyncpg.Connection) -> Message | None:
            row = await conn.fetchrow(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1 AND account = $2",
                message_id, account)
            return row_to_message(row) if row is not None else None

        return await self._run("get_message", op, tx=False)

    async def list_messages(self, account: str, where: MessageFilter,
                            limit: int) -> list[Message]:
        """The account's messages matching `where`, newest (highest id) first."""
        conditions = message_conditions(where)
        sql = f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE account = $1" + "".join(
            f" AND {clause} ${n}" for n, (clause, _) in enumerate(conditions, start=2))
        args = [account, *(value for _, value in conditions)]
        sql += f" ORDER BY id DESC LIMIT ${len(args) + 1}"
        rows = await self._run("list_messages", lambda conn: conn.fetch(sql, *args, limit),
                               tx=False)
        return [row_to_message(r) for r in rows]

    async def count_by_status(self, states: Collection[str] | None = None) -> dict[str, int]:
        async def op(conn: asyncpg.Connection) -> dict[str, int]:
            # The whole table: a sequential scan is the plan (PLANNER_SETTINGS discourage it).
            await conn.execute("SET LOCAL enable_seqscan = on")
            rows = await conn.fetch("SELECT status, count(*) FROM messages GROUP BY status")
            return {r[0]: r[1] for r in rows}

        return await self._run("count_by_status", op)

    async def segments_of(self, message_id: str) -> list[tuple[int, str, str, str]]:
        """(seq, provider, provider_msg_id, status) of a message's parts; for tests and tools."""

        async def op(conn: asyncpg.Connection) -> list[tuple[int, str, str, str]]:
            rows = await conn.fetch(
                "SELECT seq, provider, provider_msg_id, status FROM segments "
                "WHERE message_id = $1 ORDER BY seq", message_id)
            return [(r[0], r[1], r[2], r[3]) for r in rows]

        return await self._run("segments_of", op, tx=False)

    # ---- callbacks outbox --------------------------------------------------------------------

    async def due_callbacks(self, now: float, limit: int,
                            per_destination: int | None = None) -> list[CallbackJob]:
        """Due callbacks with their message's account ('' for an MO), leased to this instance:
        those it holds already, those no one holds and those whose holder's lease ran out; never
        one another live instance holds. With ``per_destination`` (a fair read, as SQLite's
        writes.due_callbacks): of the oldest FAIR_SCAN due ones, at most that many per
        (account, destination)."""
        free = f"(c.owner IS NULL OR c.owner = $3 OR c.lease_until < {DB_NOW})"
        # Held here with more than half a lease left: answered as they are, not leased again.
        # The sender reads its in-flight callbacks again at every read; leasing them again made
        # 2.5 row versions per callback (and row locks its deletes waited for), 1.0 now.
        kept = f"coalesce(c.owner = $3 AND c.lease_until >= {DB_NOW} + $4 / 2, FALSE) AS kept"

        async def op(conn: asyncpg.Connection) -> list[CallbackJob]:
            if per_destination is None:
                due = (f"SELECT c.id, COALESCE(m.account, '') AS account, {kept} "
                       "FROM callbacks c LEFT JOIN messages m ON m.id = c.message_id "
                       f"WHERE NOT c.given_up AND c.next_attempt_at <= $1 AND {free} "
                       "ORDER BY c.next_attempt_at, c.id LIMIT $2 FOR UPDATE OF c SKIP LOCKED")
                args: tuple[Any, ...] = (now, limit, self.instance, self.lease_seconds)
            else:
                # A window function cannot lock rows: the UPDATE below re-checks the lease on
                # each row it takes, so another instance's fresh claim is skipped, not stolen.
                due = ("SELECT id, account, kept FROM (SELECT c.id, c.next_attempt_at, c.kept, "
                       "COALESCE(m.account, '') AS account, row_number() OVER (PARTITION BY "
                       "COALESCE(m.account, ''), lower(substring(c.url from '^[^:]*://[^/]*')) "
                       "ORDER BY c.next_attempt_at, c.id) AS rank FROM (SELECT c.*, "
                       f"{kept} FROM callbacks c "
                       f"WHERE NOT c.given_up AND c.next_attempt_at <= $1 AND {free} "
                       "ORDER BY c.next_attempt_at, c.id LIMIT $5) c "
                       "LEFT JOIN messages m ON m.id = c.message_id) r "
                       "WHERE rank <= $6 ORDER BY next_attempt_at, id LIMIT $2")
                args = (now, limit, self.instance, self.lease_seconds, FAIR_SCAN,
                        per_destination)
            columns = "c.id, c.message_id, c.url, c.payload, c.attempts, c.next_attempt_at"
            rows = await conn.fetch(
                f"WITH due AS ({due}), taken AS ("
                f"UPDATE callbacks c SET owner = $3, lease_until = {DB_NOW} + $4 FROM due "
                f"WHERE c.id = due.id AND NOT due.kept AND {free} "
                f"RETURNING {columns}, due.account), "
                # Locked, so that one deleted (sent) since the read began is not answered.
                f"held AS (SELECT {columns}, due.account FROM due JOIN callbacks c "
                "ON c.id = due.id WHERE due.kept FOR UPDATE OF c SKIP LOCKED) "
                "SELECT * FROM taken UNION ALL SELECT * FROM held", *args)
            rows = sorted(rows, key=lambda r: (r[5], r[0]))
            return [CallbackJob(r[0], r[1], r[2], r[3], r[4], r[6]) for r in rows]

        return await self._run("due_callbacks", op, tx=False)

    async def callbacks_done(self, job_ids: Sequence[int]) -> None:
        ids = list(job_ids)
        await self._write("callbacks_done", args=ids)

    async def callback_retry(self, job_id: int, next_attempt_at: float, error: str) -> None:
        await self._write("callback_retry", lambda conn: conn.execute(
            "UPDATE callbacks SET attempts = attempts + 1, next_attempt_at = $1, "
            "last_error = $2, owner = NULL, lease_until = NULL WHERE id = $3",
            next_attempt_at, error, job_id))

    async def callback_give_up(self, job_id: int, error: str) -> None:
        await self._write("callback_give_up", lambda conn: conn.execute(
            "UPDATE callbacks SET attempts = attempts + 1, given_up = TRUE, last_error = $1, "
            "owner = NULL, lease_until = NULL WHERE id = $2", error, job_id))

    async def enqueue_callback(self, url: str, payload: str, now: float) -> None:
        """An HTTP POST for the callback sender that is not about a message (e.g. an MO)."""
        await self._write("enqueue_callback", lambda conn: conn.execute(
            "INSERT INTO callbacks (message_id, url, payload, next_attempt_at) "
            "VALUES ('', $1, $2, $3)", url, payload, now))

    # ---- SMPP receipts outbox ----------------------------------------------------------------

    async def due_smpp_receipts(
        self, account: str, now: float, limit: int
    ) -> list[SmppOutboxItem]:
        """Due receipts and MO for `account`, leased to this instance (where it is bound), as
        due_callbacks does."""

        async def op(conn: asyncpg.Connection) -> list[SmppOutboxItem]:
            rows = await conn.fetch(
                "WITH due AS (SELECT id FROM smpp_receipts WHERE account = $1 "
                "AND NOT given_up AND next_attempt_at <= $2 "
                f"AND (owner IS NULL OR owner = $4 OR lease_until < {DB_NOW}) "
                "ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) "
                f"UPDATE smpp_receipts r SET owner = $4, lease_until = {DB_NOW} + $5 "
                "FROM due WHERE r.id = due.id RETURNING r.id, r.account, r.message_id, "
                "r.source, r.dest, r.status, r.error, r.submitted_at, r.done_at, r.attempts, "
                "r.kind, r.text", account, now, limit, self.instance, self.lease_seconds)
            return [
                SmppOutboxItem(r[0], r[1], r[2], r[3], r[4], MessageStatus(r[5]), r[6], r[7],
                               r[8], r[9], r[10], r[11])
                for r in sorted(rows, key=lambda r: r[0])
            ]

        return await self._run("due_smpp_receipts", op, tx=False)

    async def enqueue_smpp_mo(self, account: str, source: str, dest: str, text: str,
                              now: float) -> None:
        """A handset's message for an account's bound SMPP receiver, sent like a receipt."""
        await self._write("enqueue_smpp_mo", lambda conn: conn.execute(
            "INSERT INTO smpp_receipts (kind, text, account, message_id, source, dest, "
            "status, submitted_at, done_at, next_attempt_at) "
            "VALUES ('mo', $1, $2, '', $3, $4, 'delivered', $5, $5, $5)",
            text, account, source, dest, now))

    async def smpp_receipt_done(self, receipt_id: int) -> None:
        await self._write("smpp_receipt_done", args=[receipt_id])

    async def smpp_receipt_retry(self, receipt_id: int, next_attempt_at: float,
                                 give_up: bool) -> None:
        # Released: the account may be bound on another instance by the next attempt.
        await self._write("smpp_receipt_retry", lambda conn: conn.execute(
            "UPDATE smpp_receipts SET attempts = attempts + 1, next_attempt_at = $1, "
            "given_up = $2, owner = NULL, lease_until = NULL WHERE id = $3",
            next_attempt_at, give_up, receipt_id))

    # ---- opt-outs, marketing frequency, replies (shared by every instance) --------------------

    async def add_optout(self, account: str, number: str, source: str, now: float,
                         scope: str = OPTOUT_MARKETING) -> bool:
        """Record an opt-out, or widen a "marketing" one to "all" (then it takes the new time
        and source); False if it was already there with this scope or a wider one."""
        self._optout_changes += 1  # claims' opt-out reads from before are stale
        try:
            status: str = await self._write("add_optout", lambda conn: conn.execute(
                "INSERT INTO optouts (account, number, created_at, source, scope) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (account, number) DO UPDATE SET "
                "created_at = EXCLUDED.created_at, source = EXCLUDED.source, "
                "scope = EXCLUDED.scope "
                "WHERE optouts.scope = 'marketing' AND EXCLUDED.scope = 'all'",
                account, number, now, source, scope))
        finally:
            self._optout_changes += 1
        return _count(status) > 0

    async def remove_optout(self, account: str, number: str) -> bool:
        self._optout_changes += 1  # claims' opt-out reads from before are stale
        try:
            status: str = await self._write("remove_optout", lambda conn: conn.execute(
                "DELETE FROM optouts WHERE account = $1 AND number = $2", account, number))
        finally:
            self._optout_changes += 1
        return _count(status) > 0

    async def is_opted_out(self, account: str, number: str) -> bool:
        found = await self._run("is_opted_out", lambda conn: conn.fetchval(
            "SELECT 1 FROM optouts WHERE account = $1 AND number = $2", account, number), tx=False)
        return found is not None

    async def optout_scope(self, account: str, number: str) -> str | None:
        """The scope of the number's opt-out, None without one (a primary-key read). Every
        accept asks: the reads asked while earlier ones are under way go together, in one
        statement (one connection, one round trip for all). Each reader awaits a future of
        its own (a reader cancelled cancels only its own), not a shared one through
        asyncio.shield: two loop turns less per read."""
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        key = (account, number)
        readers = self._scope_reads.get(key)
        if readers is None:
            self._scope_reads[key] = [future]
            self._start_scope_reads()
        else:
            readers.append(future)
        started = time.monotonic()
        scope = await future
        metrics.store_operation_seconds.labels("postgres", "optout_scope").observe(
            time.monotonic() - started)
        return scope

    def _start_scope_reads(self) -> None:
        """As _start_groups: a batch's task, started now, takes at its first step every read
        asked until then."""
        if self._scope_reads and not self._scope_flush and self._scope_batches < SCOPE_BATCHES:
            self._scope_flush = True
            self._scope_batches += 1
            task = asyncio.ensure_future(self._read_scopes())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _read_scopes(self) -> None:
        self._scope_flush = False
        batch, self._scope_reads = self._scope_reads, {}
        keys = list(batch)
        try:
            if keys:
                rows = await self._run("optout_scopes", lambda conn: conn.fetch(
                    "SELECT k.a, k.n, o.scope FROM unnest($1::text[], $2::text[]) AS k(a, n) "
                    "JOIN optouts o ON o.account = k.a AND o.number = k.n",
                    [k[0] for k in keys], [k[1] for k in keys]), tx=False)
        except Exception as exc:
            for readers in batch.values():
                for future in readers:  # each reader its own exception (own traceback)
                    if not future.done():
                        future.set_exception(type(exc)(str(exc))
                                             if isinstance(exc, StoreError) else exc)
                        future.exception()  # retrieved: its reader may be gone meanwhile
        else:
            scopes = {(r[0], r[1]): r[2] for r in rows} if keys else {}
            for key, readers in batch.items():
                scope = scopes.get(key)
                for future in readers:
                    if not future.done():
                        future.set_result(scope)
        finally:
            self._scope_batches -= 1
            self._start_scope_reads()

    async def list_optouts(self, account: str, number: str | None,
                           limit: int) -> list[tuple[str, float, str, str]]:
        """(number, created_at, source, scope), oldest first."""
        rows = await self._list("list_optouts", "SELECT number, created_at, source, scope "
                                "FROM optouts", account, number, "created_at", limit)
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def marketing_history(self, account: str, number: str,
                                since: float) -> tuple[int, float | None]:
        """Marketing messages accepted for this number since `since`, and the latest one."""
        row = await self._run("marketing_history", lambda conn: conn.fetchrow(
            "SELECT count(*), max(sent_at) FROM marketing_log "
            "WHERE account = $1 AND number = $2 AND sent_at >= $3", account, number, since),
            tx=False)
        return int(row[0]), row[1]

    async def send_rules_state(
        self, keys: Sequence[tuple[str, str]], marketing: Sequence[tuple[str, str]],
        since: float,
    ) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], list[float]]]:
        """For the rules checked at send time, in one read: which (account, number) of `keys`
        opted out (with the opt-out's scope), and when marketing was accepted for each of
        `marketing` since `since`."""

        known = self._claimed_scopes(keys) if not marketing else None
        if known is not None:
            return known, {}

        async def op(conn: asyncpg.Connection) -> tuple[list[Any], list[Any]]:
            opted = await conn.fetch(
                "SELECT o.account, o.number, o.scope FROM optouts o JOIN unnest($1::text[], "
                "$2::text[]) AS k(a, n) ON o.account = k.a AND o.number = k.n",
                [k[0] for k in keys], [k[1] for k in keys]) if keys else []
            sent = await conn.fetch(
                "SELECT l.account, l.number, l.sent_at FROM marketing_log l JOIN "
                "unnest($1::text[], $2::text[]) AS k(a, n) ON l.account = k.a "
                "AND l.number = k.n WHERE l.sent_at >= $3",
                [k[0] for k in marketing], [k[1] for k in marketing], since,
            ) if marketing else []
            return opted, sent

        opted, sent = await self._run("send_rules_state", op, tx=False)
        times: dict[tuple[str, str], list[float]] = {}
        for account, number, at in sent:
            times.setdefault((account, number), []).append(at)
        return {(r[0], r[1]): r[2] for r in opted}, times

    def _claimed_scopes(self, keys: Sequence[tuple[str, str]]
                        ) -> dict[tuple[str, str], str] | None:
        """The opt-outs of `keys` as the last claim read them (the rules are checked on what
        was just claimed), if it was within LATER_TTL, no opt-out was added or removed here
        since and it read every key: no round trip. None: read them now."""
        if self._claim_scopes is None:
            return None
        at, changes, scopes = self._claim_scopes
        if (changes != self._optout_changes or time.monotonic() - at >= LATER_TTL
                or any(k not in scopes for k in keys)):
            return None
        metrics.store_claim_scopes_reused_total.inc()
        return {k: scope for k in keys if (scope := scopes[k]) is not None}

    async def account_for_reply(self, number: str, sender: str) -> str | None:
        """The account that last sent to this number from this sender: a reply is for it."""
        account: str | None = await self._run("account_for_reply", lambda conn: conn.fetchval(
            "SELECT account FROM messages WHERE dest = $1 AND sender = $2 "
            "ORDER BY created_at DESC LIMIT 1", number, sender), tx=False)
        return account


# ---- operations: (connection in a transaction, plain values) -> plain result -----------------

async def _write_all(conn: asyncpg.Connection, group: Sequence[_Write]) -> list[Any]:
    """A group of writes in one transaction (none when the group is one statement, which
    commits alone): each BATCHED kind in one statement for the whole group, then every other
    write in order (a key given twice in a group finds the first's message)."""
    if _one_statement(group):
        return await _write_group(conn, group)
    async with conn.transaction():
        return await _write_group(conn, group)


# Kinds of write a group does in one statement for all of its writes of that kind.
BATCHED = frozenset({"record_submitted", "apply_receipts", "callbacks_done",
                     "smpp_receipt_done"})


def _one_statement(group: Sequence[_Write]) -> bool:
    """The group is one statement: accepts without key or marketing, or a single BATCHED
    kind."""
    first = group[0].op
    if first == "accept":
        return all(i.op == "accept" and i.key is None and i.row[_CLASS] != "marketing"
                   for i in group)
    return first in BATCHED and all(i.op == first for i in group)


async def _write_group(conn: asyncpg.Connection, group: Sequence[_Write]) -> list[Any]:
    results: list[Any] = [None] * len(group)
    batched: dict[str, list[int]] = {}
    for n, item in enumerate(group):
        if item.op in BATCHED:
            batched.setdefault(item.op, []).append(n)
    plain = [item.row for item in group if item.op == "accept" and item.key is None]
    if plain:
        await _insert_messages(conn, plain)
    if "record_submitted" in batched:
        await _record_submitted(conn, group, batched["record_submitted"], results)
    for n, item in enumerate(group):
        if item.fn is not None:
            results[n] = await item.fn(conn)
        elif item.key is not None:
            results[n] = await _accept(conn, item.row, item.key)
    for op, table in (("callbacks_done", "callbacks"), ("smpp_receipt_done", "smpp_receipts")):
        if op in batched:
            await conn.execute(f"DELETE FROM {table} WHERE id = ANY($1::bigint[])",
                               [i for n in batched[op] for i in group[n].args])
    if "apply_receipts" in batched:
        indexes = batched["apply_receipts"]
        applied = await _apply_receipts(conn, [u for n in indexes for u in group[n].args])
        at = 0
        for n in indexes:
            size = len(group[n].args)
            results[n], at = applied[at:at + size], at + size
    return results


async def _insert_messages(conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Messages (rows without key) in one statement, and their marketing history."""
    if len(rows) == 1:
        await conn.execute(_INSERT_MESSAGE, *rows[0])
    else:
        await conn.execute(_INSERT_MESSAGES, *(list(c) for c in zip(*rows, strict=True)))
    marketing = [(r[_ACCOUNT], r[_DEST], r[_CREATED]) for r in rows if r[_CLASS] == "marketing"]
    if marketing:
        await conn.execute(
            "INSERT INTO marketing_log (account, number, sent_at) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::float8[])",
            *(list(c) for c in zip(*marketing, strict=True)))


async def _record_submitted(conn: asyncpg.Connection, group: Sequence[_Write],
                            indexes: Sequence[int], results: list[Any]) -> None:
    """Every record_submitted of a group in one statement: the messages become submitted
    (their account is each one's result; None: it was no longer accepted or queued) and their
    parts are stored."""
    parts: dict[tuple[str, int], tuple[str, str, float]] = {}  # the last word per part
    for n in indexes:
        message_id, provider, sent, now = group[n].args
        for p in sent:
            parts[(message_id, p.seq)] = (provider, p.provider_msg_id, now)
    rows = await conn.fetch(
        "WITH r AS (SELECT * FROM unnest($1::text[], $2::text[], $3::float8[]) "
        "AS r(id, provider, at)), "
        "done AS (UPDATE messages m SET status = 'submitted', provider = r.provider, "
        "submitted_at = r.at, attempts = m.attempts + 1, owner = NULL, lease_until = NULL "
        "FROM r WHERE m.id = r.id AND m.status IN ('accepted', 'queued') "
        "RETURNING m.id, m.account), "
        "parts AS (INSERT INTO segments (message_id, seq, provider, provider_msg_id, status, "
        "submitted_at) SELECT m, s, p, i, 'submitted', a FROM unnest($4::text[], $5::int[], "
        "$6::text[], $7::text[], $8::float8[]) AS u(m, s, p, i, a) "
        "ON CONFLICT (message_id, seq) DO UPDATE SET provider = EXCLUDED.provider, "
        "provider_msg_id = EXCLUDED.provider_msg_id, status = 'submitted', error = NULL, "
        "submitted_at = EXCLUDED.submitted_at, done_at = NULL) "
        "SELECT id, account FROM done",
        [group[n].args[0] for n in indexes], [group[n].args[1] for n in indexes],
        [group[n].args[3] for n in indexes],
        [k[0] for k in parts], [k[1] for k in parts], [v[0] for v in parts.values()],
        [v[1] for v in parts.values()], [v[2] for v in parts.values()])
    accounts = {r[0]: r[1] for r in rows}
    for n in indexes:
        results[n] = accounts.get(group[n].args[0])


async def _accept(conn: asyncpg.Connection, row: tuple[Any, ...],
                  key: str | None) -> tuple[Any, ...] | None:
    """Insert a message; with a key seen within IDEMPOTENCY_TTL, insert nothing and return the
    earlier message's row. Two instances given one key at once: the unique key makes the second
    wait for the first's commit, then find its message."""
    account, created_at = row[_ACCOUNT], row[_CREATED]
    if key is not None:
        took = await conn.fetchval(
            "INSERT INTO idempotency (account, key, message_id, created_at) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (account, key) DO UPDATE "
            "SET message_id = EXCLUDED.message_id, created_at = EXCLUDED.created_at "
            "WHERE idempotency.created_at <= EXCLUDED.created_at - $5 RETURNING 1",
            account, key, row[0], created_at, IDEMPOTENCY_TTL)
        if took is None:  # a live key: the message it names, if it is still there
            prior = await conn.fetchrow(
                f"SELECT {_M_COLUMNS} FROM messages m JOIN idempotency i "
                "ON i.message_id = m.id WHERE i.account = $1 AND i.key = $2", account, key)
            if prior is not None:
                return tuple(prior)
            await conn.execute(
                "UPDATE idempotency SET message_id = $3, created_at = $4 "
                "WHERE account = $1 AND key = $2", account, key, row[0], created_at)
    await conn.execute(_INSERT_MESSAGE, *row)
    if row[_CLASS] == "marketing":  # frequency caps count what was accepted
        await conn.execute(_LOG_MARKETING, account, row[_DEST], created_at)
    return None


async def _insert_parts(conn: asyncpg.Connection, message_id: str, provider: str,
                        parts: Sequence[SegmentSubmit], now: float) -> None:
    if not parts:
        return
    await conn.execute(
        "INSERT INTO segments (message_id, seq, provider, provider_msg_id, status, "
        "submitted_at) SELECT $1, s, $2, p, 'submitted', $3 "
        "FROM unnest($4::int[], $5::text[]) AS u(s, p) "
        "ON CONFLICT (message_id, seq) DO UPDATE SET provider = EXCLUDED.provider, "
        "provider_msg_id = EXCLUDED.provider_msg_id, status = 'submitted', error = NULL, "
        "submitted_at = EXCLUDED.submitted_at, done_at = NULL",
        message_id, provider, now, [p.seq for p in parts], [p.provider_msg_id for p in parts])


async def _finish(conn: asyncpg.Connection, message_id: str, status: MessageStatus,
                  error: str | None, now: float,
                  prior_status: str | None = None) -> tuple[FinalNotice | None, bool]:
    """Make a message final unless it already is: the notice, and whether it was pending.
    `prior_status`: read (and locked) by the caller in this transaction."""
    if prior_status is None:
        prior_status = await conn.fetchval(
            "SELECT status FROM messages WHERE id = $1 FOR UPDATE", message_id)
        if prior_status is None:
            return None, False
    if prior_status in FINAL_VALUES:
        return None, False
    row = await conn.fetchrow(
        "UPDATE messages SET status = $1, error = $2, done_at = $3, owner = NULL, "
        "lease_until = NULL WHERE id = $4 RETURNING account, reference, callback_url, "
        "submitted_at, provider, receipt_mode, sender, dest, created_at",
        status.value, error, now, message_id)
    notice = FinalNotice(
        message_id=message_id, account=row[0], status=status, reference=row[1], error=error,
        done_at=now, callback_url=row[2], submitted_at=row[3], provider=row[4])
    await _add_outboxes(conn, [(notice, row[5], row[6], row[7], row[8])])
    return notice, prior_status in PENDING


async def _apply_receipts(conn: asyncpg.Connection,
                          updates: list[ReceiptUpdate]) -> list[tuple[ReceiptResult, bool]]:
    """Receipts matched and applied, and the outbox entries of the messages they made final
    added, in one call (smsagg_apply_receipts): one round trip, and no transaction of its
    own when it is alone in its group."""
    rows = await conn.fetch(
        "SELECT * FROM smsagg_apply_receipts($1::text[], $2::text[], $3::text[], $4::text[], "
        "$5::float8[])", [u.provider for u in updates], [u.provider_msg_id for u in updates],
        [u.status.value for u in updates], [u.error for u in updates],
        [u.received_at for u in updates])
    results: list[tuple[ReceiptResult, bool]] = []
    for u, r in zip(updates, rows, strict=True):
        if r[0] is None:
            results.append((ReceiptResult(u, matched=False, message_id=None, final=None), False))
            continue
        notice: FinalNotice | None = None
        if r[1] is not None:
            notice = FinalNotice(
                message_id=r[0], account=r[3], status=MessageStatus(r[1]), reference=r[4],
                error=u.error, done_at=u.received_at, callback_url=r[5], submitted_at=r[6],
                provider=r[7])
        results.append((ReceiptResult(u, matched=True, message_id=r[0], final=notice), r[2]))
    return results


async def _add_outboxes(conn: asyncpg.Connection,
                        finished: Sequence[tuple[FinalNotice, int, str, str, float]]) -> None:
    """For messages just made final, (notice, receipt_mode, sender, dest, created_at): their
    HTTP callbacks and SMPP receipts, one statement per outbox."""
    calls = [n for n, *_ in finished if n.callback_url]
    if calls:
        await conn.execute(
            "INSERT INTO callbacks (message_id, url, payload, next_attempt_at) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[])",
            [n.message_id for n in calls], [n.callback_url for n in calls],
            [callback_payload(n) for n in calls], [n.done_at for n in calls])
    receipts = [f for f in finished
                if f[1] == 1 or (f[1] == 2 and f[0].status is not MessageStatus.DELIVERED)]
    if receipts:
        await conn.execute(
            "INSERT INTO smpp_receipts (account, message_id, source, dest, status, error, "
            "submitted_at, done_at, next_attempt_at) SELECT a, m, s, d, st, e, c, t, t FROM "
            "unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], "
            "$7::float8[], $8::float8[]) AS u(a, m, s, d, st, e, c, t)",
            [f[0].account for f in receipts], [f[0].message_id for f in receipts],
            [f[2] for f in receipts], [f[3] for f in receipts],
            [f[0].status.value for f in receipts], [f[0].error for f in receipts],
            [f[4] for f in receipts], [f[0].done_at for f in receipts])


async def _cancel(conn: asyncpg.Connection, account: str, message_id: str,
                  now: float) -> tuple[str, FinalNotice | None, bool]:
    status = await conn.fetchval(
        "SELECT status FROM messages WHERE id = $1 AND account = $2 FOR UPDATE",
        message_id, account)
    if status is None:
        return "not_found", None, False
    if status not in ("accepted", "scheduled"):  # queued or later: the operator may have it
        return str(status), None, False
    notice, was_pending = await _finish(conn, message_id, MessageStatus.CANCELLED,
                                        CANCELLED_ERROR, now, status)
    return "cancelled", notice, was_pending


async def _claim_overdue(conn: asyncpg.Connection, provider: str, submitted_before: float,
                         queried_before: float, now: float, limit: int) -> list[Any]:
    rows = await conn.fetch(
        "SELECT s.message_id, s.seq, s.provider_msg_id, m.sender, m.sender_kind, m.status "
        "FROM segments s JOIN messages m ON m.id = s.message_id "
        "WHERE s.provider = $1 AND s.status = 'submitted' AND s.submitted_at <= $2 "
        "AND (s.queried_at IS NULL OR s.queried_at <= $3) ORDER BY s.submitted_at LIMIT $4 "
        "FOR UPDATE OF s SKIP LOCKED", provider, submitted_before, queried_before, limit)
    closed = [(r[0], r[1]) for r in rows if r[5] in FINAL_VALUES]
    queried = [(r[0], r[1]) for r in rows if r[5] not in FINAL_VALUES]
    if closed:  # parts of messages already final leave the open set
        await conn.execute(
            "UPDATE segments s SET status = 'closed' FROM unnest($1::text[], $2::int[]) "
            "AS u(m, q) WHERE s.message_id = u.m AND s.seq = u.q",
            [c[0] for c in closed], [c[1] for c in closed])
    if queried:
        await conn.execute(
            "UPDATE segments s SET queried_at = $3 FROM unnest($1::text[], $2::int[]) "
            "AS u(m, q) WHERE s.message_id = u.m AND s.seq = u.q",
            [q[0] for q in queried], [q[1] for q in queried], now)
    return [(r[0], r[1], r[2], r[3], r[4]) for r in rows
            if r[5] == MessageStatus.SUBMITTED.value]


async def _expire_unreceipted(conn: asyncpg.Connection, submitted_before: float, now: float,
                              limit: int, error: str) -> list[FinalNotice]:
    ids = await conn.fetch(
        "SELECT id FROM messages WHERE status = 'submitted' AND submitted_at <= $1 "
        "ORDER BY submitted_at LIMIT $2 FOR UPDATE SKIP LOCKED", submitted_before, limit)
    notices = []
    for (message_id,) in ids:
        notice, _ = await _finish(conn, message_id, MessageStatus.UNKNOWN, error, now,
                                  "submitted")
        if notice is not None:
            notices.append(notice)
    return notices


async def _remove_logged(conn: asyncpg.Connection, account: str, number: str,
                         removed_by: str, now: float) -> bool:
    row = await conn.fetchrow(
        "DELETE FROM optouts WHERE account = $1 AND number = $2 "
        "RETURNING created_at, source, scope", account, number)
    if row is None:
        return False
    await conn.execute(
        "INSERT INTO optout_removals (account, number, opted_out_at, source, removed_at, "
        "removed_by, scope) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        account, number, row[0], row[1], now, removed_by, row[2])
    return True


async def _erase_texts(conn: asyncpg.Connection, keep: list[str], limit: int) -> int:
    # The statuses as constants (a fixed list of ours): the planner then sees that the partial
    # index messages_text_kept holds every row this may blank.
    kept = ", ".join(f"'{status}'" for status in keep if status.isalpha())
    return _count(await conn.execute(
        "UPDATE messages SET body = '' WHERE id IN (SELECT id FROM messages "
        f"WHERE body <> '' AND status NOT IN ({kept}) LIMIT $1 FOR UPDATE SKIP LOCKED)",
        limit))


async def _purge_before(conn: asyncpg.Connection, cutoff: float, limit: int) -> int:
    """Final messages created before ``cutoff`` (ids begin with their creation time) with their
    segments, given-up callbacks and SMPP receipts; keys and marketing history older too."""
    ids = [r[0] for r in await conn.fetch(
        "SELECT id FROM messages WHERE id < $1 AND status = ANY($2::text[]) ORDER BY id "
        "LIMIT $3 FOR UPDATE SKIP LOCKED", id_bound(cutoff), sorted(FINAL_VALUES), limit)]
    if len(ids) < limit:  # decimal ids (message_id_format) do not begin with a hex time
        ids += [r[0] for r in await conn.fetch(
            "SELECT id FROM messages WHERE id ~ '^[1-9][0-9]{0,18}$' AND created_at < $1 "
            "AND status = ANY($2::text[]) ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED",
            cutoff, sorted(FINAL_VALUES), limit - len(ids))]
    await conn.execute("DELETE FROM marketing_log WHERE sent_at < $1", cutoff)
    if not ids:
        return 0
    await conn.execute("DELETE FROM segments WHERE message_id = ANY($1::text[])", ids)
    await conn.execute("DELETE FROM messages WHERE id = ANY($1::text[])", ids)
    await conn.execute(
        "DELETE FROM callbacks WHERE message_id = ANY($1::text[]) AND given_up", ids)
    await conn.execute("DELETE FROM smpp_receipts WHERE given_up AND done_at < $1", cutoff)
    await conn.execute("DELETE FROM idempotency WHERE created_at < $1", cutoff)
    return len(ids)

"""The SQLite store's schema: versioned migrations, and opening a database file (refusing one
that is not ours, or newer, or damaged, with a message that says what to do)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from aggregator.store.base import StoreError
from aggregator.store.writes import connect

SCHEMA_VERSION = 6  # == len(MIGRATIONS)

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
    # 5 -> 6: fewer index entries per status change, as PostgreSQL's 3 -> 4. The whole-table
    # index on status took an entry out and put one in at each of a message's four status
    # changes, and its final-status part grew with the history. With this one in its place the
    # store's SQL per relayed message (accept, claim, submitted, receipt) is about 50 CPU-µs
    # where it was 56-58, and 7.1 WAL writes where it was 8.6 (tests/bench_store_sql.py, best
    # of 4, twice). What the index served is served by partial indexes: waiting messages by
    # messages_due_account, submitted ones by messages_submitted, and claimed (queued) ones by
    # this one (the pending counts at start, recover, the queue-depth gauges): those counts
    # read what is open, no longer the whole history (13 ms of CPU per 200,000 rows, every 5 s
    # for the gauges).
    """
    DROP INDEX messages_status;
    CREATE INDEX messages_queued ON messages (account) WHERE status = 'queued';
    """,
]

# Primary result codes that say the environment failed, not the file: PERM, BUSY, LOCKED,
# NOMEM, READONLY, IOERR, FULL, CANTOPEN.
_NOT_THE_FILE = frozenset({3, 5, 6, 7, 8, 10, 13, 14})


def open_database(path: str, busy_timeout: float) -> sqlite3.Connection:
    """Connect, refuse what is not our database, migrate, check. Every refusal is a StoreError
    whose message says what is wrong and what to do."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn: sqlite3.Connection | None = None
    try:
        conn = connect(path, busy_timeout)
        migrate(conn, path)
        problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
        if problems != ["ok"]:
            detail = "; ".join(problems).replace("\n", "; ")[:500]
            raise StoreError(
                f"{path}: not a usable smsagg database (integrity check failed: "
                f"{detail}); restore it from a backup or point [store] path elsewhere"
            )
    except BaseException as exc:
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        if not isinstance(exc, sqlite3.DatabaseError):
            raise
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in _NOT_THE_FILE:  # the file may be fine
            raise StoreError(f"{path}: cannot open the database ({exc})") from exc
        raise StoreError(
            f"{path}: not a usable smsagg database ({exc}); "
            "restore it from a backup or point [store] path elsewhere"
        ) from exc
    return conn

def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring the schema to SCHEMA_VERSION, one transaction per step: a step that fails
    leaves the database at the version before it."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: database schema version {version} is newer than this smsagg "
            f"understands ({SCHEMA_VERSION}); upgrade smsagg or use another store path"
        )
    if version < 0:
        raise StoreError(f"{path}: database schema version {version} is not one "
                         "smsagg writes; point [store] path at an smsagg database")
    if version == 0 and conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
        raise StoreError(
            f"{path}: has tables but no smsagg schema version: not an smsagg "
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
                f"{path}: migrating the database schema from version {target} to "
                f"{target + 1} failed ({exc}); it was left at version {target}. Restore "
                "a backup or report this with the smsagg version"
            ) from exc

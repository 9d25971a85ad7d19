"""`smsagg store copy --from sqlite:PATH --to postgres:DSN`: move a whole SQLite store into
PostgreSQL (queued, scheduled and submitted messages with their segments, both outboxes,
opt-outs and their removals, consents, idempotency keys, marketing history), so a user who
outgrows one machine keeps everything. One transaction on the target: all of it is copied, or
nothing.

Messages a dispatcher had claimed (queued) arrive as accepted: they are sent again, as a
restart would. A target with any smsagg rows is refused unless `force`, which empties it first.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from aggregator.store.base import StoreError
from aggregator.store.postgres import CONNECT_TIMEOUT, PostgresStore, masked_dsn
from aggregator.store.sqlite_schema import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from aggregator.store.writes import MESSAGE_COLUMNS

_STATUS = [c.strip() for c in MESSAGE_COLUMNS.split(",")].index("status")
_GIVEN_UP_CALLBACKS = 7  # position of given_up in the callbacks columns below
_GIVEN_UP_RECEIPTS = 13


@dataclass(slots=True, frozen=True)
class Table:
    name: str
    columns: str  # the same names in both schemas
    fix: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None = None  # SQLite row -> PG row
    identity: bool = False  # an id column whose sequence must move past the copied ids


def _message(row: tuple[Any, ...]) -> tuple[Any, ...]:
    if row[_STATUS] == "queued":  # claimed by a dispatcher that is gone: due again
        row = (*row[:_STATUS], "accepted", *row[_STATUS + 1:])
    return row


def _flag(position: int) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    def fix(row: tuple[Any, ...]) -> tuple[Any, ...]:
        return (*row[:position], bool(row[position]), *row[position + 1:])
    return fix


TABLES = (
    Table("messages", MESSAGE_COLUMNS, _message),
    Table("segments", "message_id, seq, provider, provider_msg_id, status, error, "
          "submitted_at, done_at, queried_at"),
    Table("idempotency", "account, key, message_id, created_at"),
    Table("callbacks", "id, message_id, url, payload, attempts, next_attempt_at, last_error, "
          "given_up", _flag(_GIVEN_UP_CALLBACKS), identity=True),
    Table("smpp_receipts", "id, kind, text, account, message_id, source, dest, status, error, "
          "submitted_at, done_at, attempts, next_attempt_at, given_up",
          _flag(_GIVEN_UP_RECEIPTS), identity=True),
    Table("optouts", "account, number, created_at, source, scope"),
    Table("marketing_log", "account, number, sent_at"),
    Table("consents", "id, account, number, scope, source, consented_at, recorded_at",
          identity=True),
    Table("optout_removals", "id, account, number, opted_out_at, source, removed_at, "
          "removed_by, scope", identity=True),
)


def parse_location(text: str, scheme: str) -> str:
    """`scheme:REST` -> REST; a ValueError that says what was expected otherwise."""
    prefix = f"{scheme}:"
    if not text.startswith(prefix) or len(text) == len(prefix):
        raise ValueError(f"expected {scheme}:{'PATH' if scheme == 'sqlite' else 'DSN'}")
    return text[len(prefix):]


def read_sqlite(path: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows, read in one transaction (a consistent copy of a live store)."""
    if not Path(path).is_file():
        raise StoreError(f"{path}: no such SQLite store")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open: {exc}") from None
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != SQLITE_SCHEMA_VERSION:
            raise StoreError(
                f"{path}: schema version {version}, this smsagg copies version "
                f"{SQLITE_SCHEMA_VERSION}; open it once with this smsagg version first")
        conn.execute("BEGIN")
        rows = {t.name: [tuple(r) for r in conn.execute(f"SELECT {t.columns} FROM {t.name}")]
                for t in TABLES}
        conn.execute("COMMIT")
        return rows
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: not a readable smsagg store ({exc})") from None
    finally:
        conn.close()


async def copy_store(source: str, dsn: str, *, force: bool = False) -> dict[str, int]:
    """Copy the SQLite store at `source` into the PostgreSQL database `dsn`; rows per table."""
    rows = read_sqlite(source)
    target = PostgresStore(dsn, instance="smsagg-store-copy")
    await target.open()  # connects, migrates the schema
    await target.close()
    where = masked_dsn(dsn)
    try:
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    except Exception as exc:
        raise StoreError(f"PostgreSQL store {where}: cannot connect: {type(exc).__name__}") \
            from None
    try:
        async with conn.transaction():
            await _empty_target(conn, where, force)
            for table in TABLES:
                await _copy_table(conn, table, rows[table.name])
    except asyncpg.PostgresError as exc:
        raise StoreError(f"PostgreSQL store {where}: copy failed, nothing copied: {exc}") \
            from None
    finally:
        await conn.close()
    return {t.name: len(rows[t.name]) for t in TABLES}


async def _empty_target(conn: asyncpg.Connection, where: str, force: bool) -> None:
    names = [t.name for t in TABLES]
    if force:
        await conn.execute(f"TRUNCATE {', '.join(names)}")
        return
    used = [name for name in names if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {name})")]
    if used:
        raise StoreError(f"PostgreSQL store {where} is not empty ({', '.join(used)} have rows); "
                         "copy into an empty database, or pass --force to replace its contents")


async def _copy_table(conn: asyncpg.Connection, table: Table,
                      rows: Sequence[tuple[Any, ...]]) -> None:
    records = [table.fix(r) for r in rows] if table.fix is not None else list(rows)
    columns = [c.strip() for c in table.columns.split(",")]
    if records:
        await conn.copy_records_to_table(table.name, records=records, columns=columns)
    if table.identity:  # new rows get ids after the copied ones
        await conn.execute(
            f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
            f"GREATEST((SELECT max(id) FROM {table.name}), 0) + 1, false)")

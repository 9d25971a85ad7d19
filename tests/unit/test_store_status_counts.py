"""SQLite schema 6: no whole-table index on status. The counts of open messages (the pending
counts at start, the queue-depth gauges) and the writes that look for waiting or claimed
messages read partial indexes, never the whole history."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from aggregator.model import MessageStatus
from aggregator.store import sqlite as sqlite_store
from aggregator.store import writes
from aggregator.store.rows import message_row
from aggregator.store.sqlite_schema import MIGRATIONS, SCHEMA_VERSION, open_database
from aggregator.store.writes import connect
from tests.store_helpers import NOW, PROVIDER, make_message, opened_sqlite, parts, receipt

OPEN = ("accepted", "scheduled", "queued", "submitted")


def _plan(conn: sqlite3.Connection, sql: str) -> list[str]:
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, [None] * sql.count("?"))]


async def test_open_counts_match_the_whole_table_and_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "smsagg.db"
    messages = [make_message(next_attempt_at=NOW - 1) for _ in range(5)]
    held, claimed, sent, done, _ = messages  # the oldest four are claimed, the last waits
    async with opened_sqlite(path) as store:
        for m in messages:
            await store.accept(m, None)
        assert {m.id for m in await store.claim_due(NOW, 4)} == {
            held.id, claimed.id, sent.id, done.id}
        await store.hold(held.id, NOW + 600, "quiet hours")
        for m in (sent, done):
            await store.record_submitted(m.id, PROVIDER, parts(m, 1), NOW)
        await store.apply_receipts([receipt(done, 1)])

        everything = await store.count_by_status()
        assert everything == {"accepted": 1, "scheduled": 1, "queued": 1, "submitted": 1,
                              "delivered": 1}
        assert await store.count_by_status(OPEN) == {s: everything[s] for s in OPEN}
        assert await store.count_by_status(("queued",)) == {"queued": 1}
        assert await store.count_by_status(("delivered",)) == {"delivered": 1}
        assert store.pending == 3 and dict(store.pending_by_account) == {"shop": 3}

    async with opened_sqlite(path) as store:  # the claim is recovered: accepted again
        assert await store.count_by_status(OPEN) == {"accepted": 2, "scheduled": 1,
                                                     "submitted": 1}
        assert store.pending == 3 and dict(store.pending_by_account) == {"shop": 3}
        recovered = await store.get_message("shop", claimed.id)
        assert recovered is not None and recovered.status is MessageStatus.ACCEPTED


def test_open_counts_and_waiting_writes_read_partial_indexes(tmp_path: Path) -> None:
    conn = open_database(str(tmp_path / "smsagg.db"), 2.0)
    try:
        indexes = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messages'")}
        assert "messages_status" not in indexes and "messages_queued" in indexes
        ran: list[str] = []  # the statements the writes run, their values in place
        conn.set_trace_callback(ran.append)
        writes.release_waiting(conn, NOW)
        writes.recover(conn)
        conn.set_trace_callback(None)
        assert len(ran) == 2
        for sql in (sqlite_store._COUNT_OPEN, sqlite_store._PENDING_BY_ACCOUNT, *ran):
            plan = _plan(conn, sql)
            assert not [step for step in plan if step == "SCAN messages"], (sql, plan)
    finally:
        conn.close()


def test_a_version_5_database_loses_the_status_index_and_keeps_its_claims(
        tmp_path: Path) -> None:
    path = str(tmp_path / "smsagg.db")
    conn = connect(path)
    for step in MIGRATIONS[:5]:
        for statement in step.split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute("PRAGMA user_version = 5")
    row = list(message_row(make_message(status=MessageStatus.QUEUED)))
    conn.execute(f"INSERT INTO messages VALUES ({','.join('?' * len(row))})", row)
    conn.close()

    conn = open_database(path, 2.0)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
        assert conn.execute(sqlite_store._COUNT_OPEN).fetchall() == [("queued", 1),
                                                                     ("submitted", 0)]
        assert conn.execute(
            "SELECT name FROM sqlite_master WHERE name = 'messages_status'").fetchall() == []
    finally:
        conn.close()

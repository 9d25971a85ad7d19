"""PostgreSQL schema 4: a status change adds entries only to the indexes its row belongs in
(no whole-table index on status, the text-kept index without waiting messages, one index on
queued rows), and every query the dropped indexes served still reads an index."""

from __future__ import annotations

import asyncpg
import pytest

from aggregator.store import postgres
from aggregator.store.postgres import SCHEMA_VERSION, PostgresStore
from tests.store_helpers import NOW, make_message

# The statements the dropped or narrowed indexes served, as the store sends them.
QUERIES = {
    "pending count": "SELECT account, count(*) FROM (SELECT account FROM messages "
                     "WHERE status IN ('accepted', 'scheduled') UNION ALL SELECT account "
                     "FROM messages WHERE status = 'queued') p GROUP BY account",
    "takeover": "SELECT id FROM messages WHERE status = 'queued' AND lease_until < 5",
    "renewal": "UPDATE messages SET lease_until = 9 WHERE owner = 'a' AND status = 'queued'",
    "erase until final": "SELECT id FROM messages WHERE body <> '' AND status NOT IN "
                         "('accepted', 'scheduled', 'queued', 'submitted') LIMIT 5",
    "erase when sent": "SELECT id FROM messages WHERE body <> '' AND status NOT IN "
                       "('accepted', 'scheduled', 'queued') LIMIT 5",
}


async def _indexes(conn: asyncpg.Connection) -> dict[str, str]:
    rows = await conn.fetch("SELECT indexname, indexdef FROM pg_indexes "
                            "WHERE tablename = 'messages'")
    return {r[0]: r[1] for r in rows}


async def test_status_is_in_no_whole_table_index_and_each_query_reads_an_index(
        pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn, instance="a")
    await store.open()
    await store.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        indexes = await _indexes(conn)
        assert "messages_status" not in indexes
        assert {"messages_leased", "messages_owned"}.isdisjoint(indexes)
        assert "WHERE (status = 'queued'" in indexes["messages_queued"]
        assert "<> ALL" in indexes["messages_text_kept"]  # waiting messages are not in it
        await conn.execute("SET enable_seqscan = off")  # an empty table: only if no index
        for what, sql in QUERIES.items():
            plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {sql}"))
            assert "Seq Scan" not in plan, (what, plan)
    finally:
        await conn.close()


async def test_a_schema_3_database_moves_to_4_keeping_messages_claims_and_counts(
        pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "SCHEMA_VERSION", 3)
    old = PostgresStore(pg_dsn, instance="a")
    await old.open()
    for n in range(3):
        await old.accept(make_message(message_id=f"m{n}", account=f"acc{n % 2}"), None)
    claimed = await old.claim_due(NOW + 1, 1)
    await old.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert "messages_status" in await _indexes(conn)
    finally:
        await conn.close()
    monkeypatch.undo()

    new = PostgresStore(pg_dsn, instance="b")
    await new.open()
    try:
        assert len(claimed) == 1
        assert new.pending == 3
        assert new.pending_by_account == {"acc0": 2, "acc1": 1}
        conn = await asyncpg.connect(pg_dsn)
        try:
            assert await conn.fetchval("SELECT version FROM smsagg_schema") == SCHEMA_VERSION
            assert "messages_status" not in await _indexes(conn)
        finally:
            await conn.close()
    finally:
        await new.close()

"""PostgreSQL schema 5: the index of an account's due messages is in the claim's order
(account, next_attempt_at, id), so a claim can read the messages it takes, not the account's
whole backlog sorted (3.3 -> 0.5 ms for 20 out of 8,000); and it still takes the oldest, ties
by id."""

from __future__ import annotations

import asyncio

import asyncpg

from tests.pg import opened_postgres
from tests.store_helpers import NOW, make_message


async def test_the_due_index_of_an_account_is_in_the_claims_order(pg_dsn: str) -> None:
    async with opened_postgres(pg_dsn):
        pass
    conn = await asyncpg.connect(pg_dsn)
    try:
        definition = await conn.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'messages_due_account'")
    finally:
        await conn.close()
    assert "(account, next_attempt_at, id)" in definition


async def test_a_claim_from_a_backlog_takes_the_oldest_ties_by_id(pg_dsn: str) -> None:
    backlog = [make_message(message_id=f"m{n:04d}", next_attempt_at=NOW - (n // 10))
               for n in range(200)]
    async with opened_postgres(pg_dsn) as store:
        await asyncio.gather(*(store.accept(m, None) for m in backlog))
        claimed = await store.claim_due(NOW, 20)
    oldest = sorted(backlog, key=lambda m: (m.next_attempt_at, m.id))[:20]
    assert [m.id for m in claimed] == [m.id for m in oldest]

"""PostgreSQL's due_callbacks answers the callbacks this instance already holds (the sender reads
its in-flight ones again at every read) without leasing them again while more than half their
lease is left: no new row version; with less left, or held by no one, it leases them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from aggregator.store.postgres import PostgresStore
from tests.pg import opened_postgres
from tests.store_helpers import NOW, PROVIDER, make_message, parts, receipt


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    async with opened_postgres(pg_dsn) as opened:
        yield opened


async def _one_callback(store: PostgresStore) -> str:
    m = make_message(callback_url="https://example.com/cb")
    await store.accept(m, None)
    await store.claim_due(NOW, 10)
    await store.record_submitted(m.id, PROVIDER, parts(m, 1), NOW + 1)
    await store.apply_receipts([receipt(m, 1)])
    return m.id


async def _version(dsn: str) -> tuple[str, float]:
    """The callback row's (ctid, lease_until): a new ctid is a new row version."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT ctid::text, lease_until FROM callbacks")
        assert row is not None
        return row[0], row[1]
    finally:
        await conn.close()


@pytest.mark.parametrize("per_destination", [None, 2])
async def test_a_callback_held_here_is_answered_again_without_a_new_version(
        store: PostgresStore, pg_dsn: str, per_destination: int | None) -> None:
    message_id = await _one_callback(store)
    [first] = await store.due_callbacks(NOW + 100, 10, per_destination)
    leased = await _version(pg_dsn)

    [again] = await store.due_callbacks(NOW + 100, 10, per_destination)

    assert (again.id, again.message_id, again.account) == (first.id, message_id, "shop")
    assert await _version(pg_dsn) == leased

    conn = await asyncpg.connect(pg_dsn)
    try:  # less than half the lease left: leased again
        await conn.execute("UPDATE callbacks SET lease_until = "
                           "extract(epoch from clock_timestamp()) + 1")
    finally:
        await conn.close()
    [renewed] = await store.due_callbacks(NOW + 100, 10, per_destination)
    assert renewed.id == first.id
    ctid, until = await _version(pg_dsn)
    assert ctid != leased[0] and until > leased[1] - 1

    await store.callbacks_done([first.id])
    assert await store.due_callbacks(NOW + 100, 10, per_destination) == []


async def test_a_callback_another_instance_holds_is_not_answered(
        store: PostgresStore, pg_dsn: str) -> None:
    await _one_callback(store)
    [job] = await store.due_callbacks(NOW + 100, 10)
    async with opened_postgres(pg_dsn, instance="b") as other:
        assert await other.due_callbacks(NOW + 100, 10) == []
        assert await other.due_callbacks(NOW + 100, 10, 2) == []
    assert [j.id for j in await store.due_callbacks(NOW + 100, 10)] == [job.id]

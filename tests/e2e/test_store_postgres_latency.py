"""The PostgreSQL store's short paths: a committed record tells the pool at once (its window
slots are freed from the commit, before the writer's task resumes), opt-out readers each await
their own answer, and a connection returned to the pool in the background is there for the
next operation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from aggregator.store.postgres import PostgresStore
from tests.store_helpers import NOW, PROVIDER, make_message, parts


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_dsn, instance="a", pool_size=2)
    await s.open()
    yield s
    await s.close()


async def test_a_committed_record_is_told_before_its_writer_resumes(
        store: PostgresStore) -> None:
    heard: list[tuple[str, list[str], bool]] = []
    m = make_message(segments=2)
    await store.accept(m, None)
    assert [c.id for c in await store.claim_due(NOW, 10)] == [m.id]
    sent = parts(m, 1, 2)
    writer = asyncio.ensure_future(store.record_submitted(m.id, PROVIDER, sent, NOW + 1))
    store.on_recorded = lambda provider, ids: heard.append((provider, ids, writer.done()))
    await writer
    assert heard == [(PROVIDER, [p.provider_msg_id for p in sent], False)]
    assert [s[3] for s in await store.segments_of(m.id)] == ["submitted", "submitted"]


async def test_a_cancelled_opt_out_reader_leaves_the_others_their_answer(
        store: PostgresStore) -> None:
    number = "+38344000001"
    await store.add_optout("shop", number, "api", NOW)
    first = asyncio.ensure_future(store.optout_scope("shop", number))
    second = asyncio.ensure_future(store.optout_scope("shop", number))
    await asyncio.sleep(0)  # both asked, one read under way for both
    first.cancel()
    assert await second == "marketing"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await store.optout_scope("shop", number) == "marketing"


async def test_operations_in_a_row_reuse_the_connections_given_back(
        store: PostgresStore) -> None:
    # pool_size 2: each operation's connection must be back in the pool (returned in a task
    # of its own) for the next ones to run, well within the acquire timeout.
    for i in range(30):
        m = make_message()
        await store.accept(m, None)
        assert await store.optout_scope("shop", f"+3834400{i:04d}") is None
        assert await store.get_message(m.account, m.id) is not None
    assert store.pending == 30

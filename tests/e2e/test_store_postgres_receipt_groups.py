"""PostgreSQL's receipt function (schema 5, store/postgres_receipts.py) in one call per group:
receipts for different single-part messages are applied set-based, a group with a multi-part
message or two receipts for one message one by one in input order; both give what the receipts
applied one at a time give (results, statuses, outbox entries)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from aggregator.model import Message, MessageStatus
from aggregator.store.postgres import PostgresStore
from aggregator.store.writes import callback_payload
from tests.pg import opened_postgres
from tests.store_helpers import NOW, PROVIDER, make_message, parts, receipt

DELIVERED, UNDELIV = MessageStatus.DELIVERED, MessageStatus.UNDELIVERABLE


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    async with opened_postgres(pg_dsn) as opened:
        yield opened


async def _submitted(store: PostgresStore, *messages: Message) -> None:
    for m in messages:
        await store.accept(m, None)
    assert len(await store.claim_due(NOW, 100)) == len(messages)
    for m in messages:
        await store.record_submitted(m.id, PROVIDER, parts(m, *range(1, m.segments + 1)),
                                     NOW + 1)


async def _statuses(store: PostgresStore, *messages: Message) -> list[str | None]:
    found = [await store.get_message(m.account, m.id) for m in messages]
    return [f.status.value if f is not None else None for f in found]


async def test_a_group_of_single_part_messages_is_applied_as_each_alone(
        store: PostgresStore) -> None:
    a = make_message(callback_url="https://example.com/a", reference="ra")
    b = dataclasses.replace(make_message(), receipt_mode=1)
    c = make_message()  # an intermediate receipt: stays submitted
    d = make_message(callback_url="https://example.com/d")  # final before the group
    await _submitted(store, a, b, c, d)
    await store.apply_receipts([receipt(d, 1)])
    unknown = make_message()  # never stored: no match

    results = await store.apply_receipts([
        receipt(a, 1), receipt(unknown, 1), receipt(b, 1, UNDELIV, error="err:001"),
        receipt(c, 1, MessageStatus.SUBMITTED), receipt(d, 1, UNDELIV)])

    assert [(r.matched, r.message_id) for r in results] == [
        (True, a.id), (False, None), (True, b.id), (True, c.id), (True, d.id)]
    finals = [r.final for r in results]
    assert finals[1] is None and finals[3] is None and finals[4] is None
    assert finals[0] is not None and finals[0].status is DELIVERED
    assert (finals[0].reference, finals[0].callback_url, finals[0].provider) == (
        "ra", "https://example.com/a", PROVIDER)
    assert finals[2] is not None and (finals[2].status, finals[2].error) == (UNDELIV, "err:001")
    assert await _statuses(store, a, b, c, d) == [
        "delivered", "undeliverable", "submitted", "delivered"]
    jobs = await store.due_callbacks(NOW + 100, 10)
    assert [(j.message_id, j.payload) for j in jobs if j.message_id == a.id] == [
        (a.id, callback_payload(finals[0]))]
    assert {j.message_id for j in jobs} == {a.id, d.id}  # d's from before the group
    [smpp] = await store.due_smpp_receipts("shop", NOW + 100, 10)
    assert (smpp.message_id, smpp.status, smpp.error) == (b.id, UNDELIV, "err:001")
    assert store.pending == 0


async def test_a_group_with_a_multipart_message_or_a_repeat_goes_in_input_order(
        store: PostgresStore) -> None:
    two = make_message(segments=2, callback_url="https://example.com/two")
    once = make_message()
    alone = make_message()
    await _submitted(store, two, once, alone)

    results = await store.apply_receipts([
        receipt(two, 1), receipt(once, 1), receipt(alone, 1, UNDELIV), receipt(two, 2),
        receipt(once, 1, UNDELIV)])

    assert [r.matched for r in results] == [True] * 5
    finals = [(r.final.status if r.final else None) for r in results]
    # The first part leaves the message submitted, the second makes it delivered; the
    # repeated receipt finds its message final already.
    assert finals == [None, DELIVERED, UNDELIV, DELIVERED, None]
    assert await _statuses(store, two, once, alone) == ["delivered", "delivered",
                                                         "undeliverable"]
    assert [s[3] for s in await store.segments_of(once.id)] == ["undeliverable"]
    [job] = await store.due_callbacks(NOW + 100, 10)
    assert job.message_id == two.id


async def test_a_receipt_for_a_message_back_in_the_queue_leaves_pending(
        store: PostgresStore) -> None:
    waiting, sent = make_message(), make_message()
    await _submitted(store, sent)
    await store.accept(waiting, None)
    [claimed] = await store.claim_due(NOW, 10)
    # Its part got an id, then it went back to the queue for another attempt.
    await store.reschedule(claimed.id, PROVIDER, parts(waiting, 1), NOW + 50, "retry")
    assert store.pending == 1

    results = await store.apply_receipts([receipt(waiting, 1), receipt(sent, 1)])

    assert [r.final.status if r.final else None for r in results] == [DELIVERED, DELIVERED]
    assert store.pending == 0 and not store.pending_by_account
    assert await _statuses(store, waiting, sent) == ["delivered", "delivered"]


async def test_a_group_that_adds_no_callback_wakes_no_callback_sender(pg_dsn: str) -> None:
    heard: list[str | None] = []
    woken = asyncio.Event()

    def on_outbox(account: str | None) -> None:
        heard.append(account)
        woken.set()

    async with opened_postgres(pg_dsn, on_outbox=on_outbox) as store:
        quiet, called = make_message(), make_message(callback_url="https://example.com/cb")
        await _submitted(store, quiet, called)
        await store.apply_receipts([receipt(quiet, 1)])
        await store.apply_receipts([receipt(called, 1)])
        # Notifications arrive in commit order: one for the first group would come first.
        await asyncio.wait_for(woken.wait(), 10)
        assert heard == [None]

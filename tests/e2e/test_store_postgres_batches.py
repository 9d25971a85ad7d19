"""The PostgreSQL store's group writes: the writes of one kind waiting together go as one
statement (submits' records, receipts with their outbox entries, accepts), and opt-out reads
asked together as one; what each write answers is what it would alone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from aggregator import metrics
from aggregator.model import FinalNotice, MessageStatus
from aggregator.store.postgres import PostgresStore
from aggregator.store.writes import callback_payload
from tests.store_helpers import NOW, PROVIDER, make_message, parts, receipt


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_dsn, instance="a")
    await s.open()
    yield s
    await s.close()


def groups_committed() -> float:
    """How many write groups the store has run (its "group" operation's count)."""
    for family in metrics.REGISTRY.collect():
        for sample in family.samples:
            if (sample.name == "smsagg_store_operation_seconds_count"
                    and sample.labels.get("backend") == "postgres"
                    and sample.labels.get("op") == "group"):
                return sample.value
    return 0.0


async def test_records_and_receipts_made_together_go_as_few_groups(
        store: PostgresStore) -> None:
    messages = [make_message(callback_url=f"https://example.com/cb/{i}", reference=f"r{i}")
                for i in range(40)]
    await asyncio.gather(*(store.accept(m, None) for m in messages))
    assert len(await store.claim_due(NOW, 100)) == 40

    before = groups_committed()
    await asyncio.gather(*(store.record_submitted(m.id, PROVIDER, parts(m, 1), NOW + 1)
                           for m in messages))
    # One group for the first, one for all that waited for it, at most one per lane's slot.
    assert groups_committed() - before <= 3

    before = groups_committed()
    results = await asyncio.gather(*(store.apply_receipts([receipt(m, 1)]) for m in messages))
    assert groups_committed() - before <= 3
    assert [r[0].final.status for r in results if r[0].final] == [MessageStatus.DELIVERED] * 40
    assert await store.count_by_status() == {"delivered": 40}
    jobs = await store.due_callbacks(NOW + 100, 100)
    assert sorted(j.message_id for j in jobs) == sorted(m.id for m in messages)


@pytest.mark.parametrize("reference, error", [
    ("plain", None),
    ('with "quotes" and \\ backslash', "undeliverable: UNDELIV err:001"),
    (None, "tab\there"),
])
async def test_callback_payload_written_by_the_server_is_the_one_python_makes(
        store: PostgresStore, reference: str | None, error: str | None) -> None:
    m = make_message(callback_url="https://example.com/cb", reference=reference)
    await store.accept(m, None)
    await store.claim_due(NOW, 10)
    await store.record_submitted(m.id, PROVIDER, parts(m, 1), NOW + 1)
    at = NOW + 12.3456
    [result] = await store.apply_receipts([receipt(m, 1, MessageStatus.UNDELIVERABLE, at=at,
                                                   error=error)])
    assert result.final is not None
    [job] = await store.due_callbacks(at + 1, 10)
    expected = callback_payload(FinalNotice(
        message_id=m.id, account="shop", status=MessageStatus.UNDELIVERABLE,
        reference=reference, error=error, done_at=at, callback_url=m.callback_url,
        submitted_at=NOW + 1, provider=PROVIDER))
    assert job.payload == expected
    assert json.loads(job.payload)["done_at"] == "2023-11-14T22:13:32.345Z"


async def test_non_ascii_payload_values_are_the_same_json(store: PostgresStore) -> None:
    m = make_message(callback_url="https://example.com/cb", reference="Zürich ✓")
    await store.accept(m, None)
    await store.claim_due(NOW, 10)
    await store.record_submitted(m.id, PROVIDER, parts(m, 1), NOW + 1)
    await store.apply_receipts([receipt(m, 1)])
    [job] = await store.due_callbacks(NOW + 100, 10)
    assert json.loads(job.payload)["reference"] == "Zürich ✓"


async def test_opt_out_reads_asked_together_go_as_one_and_answer_each(
        store: PostgresStore) -> None:
    await store.add_optout("shop", "+38344000001", "api", NOW)
    await store.add_optout("shop", "+38344000003", "api", NOW, scope="all")
    numbers = [f"+3834400000{i}" for i in range(5)] * 2  # each asked twice
    scopes = await asyncio.gather(*(store.optout_scope("shop", n) for n in numbers))
    assert scopes == [None, "marketing", None, "all", None] * 2
    assert await store.optout_scope("other", "+38344000001") is None


async def test_next_due_after_a_claim_is_the_claims_answer_and_sees_retries(
        store: PostgresStore) -> None:
    now_due = make_message()
    later = make_message(status=MessageStatus.SCHEDULED, next_attempt_at=NOW + 100)
    for m in (now_due, later):
        await store.accept(m, None)
    assert [m.id for m in await store.claim_due(NOW, 10)] == [now_due.id]
    await store.reschedule(now_due.id, None, [], NOW + 5, "try again")
    assert await store.next_due_at() == NOW + 5  # a retry written since the claim: read again
    assert await store.claim_due(NOW, 10) == []
    assert await store.next_due_at() == NOW + 5  # the claim's own answer

"""The SQLite store's writer operations per message (issue 20): a loop turn's record_submitted
calls go as one writer operation, and a short claim brings the next due time with it, which
next_due_at answers from while it is still exact."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aggregator import metrics
from aggregator.model import MessageStatus
from aggregator.store.base import StoreError
from aggregator.store.sqlite import SqliteStore
from tests.store_helpers import NOW, PROVIDER, make_message, opened_sqlite, parts, receipt


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with opened_sqlite(tmp_path / "smsagg.db") as s:
        yield s


def _value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def _ops(op: str) -> float:
    """Writer operations `op` answered (the per-operation time's count)."""
    return _value("smsagg_store_operation_seconds_count", backend="sqlite", op=op)


async def test_record_submitted_calls_of_one_loop_turn_are_one_writer_op(
    store: SqliteStore,
) -> None:
    messages = [make_message() for _ in range(12)]
    await store.accept_many(messages)
    assert len(await store.claim_due(NOW, 100)) == 12
    ops = _value("smsagg_store_coalesced_ops_total", op="record_submitted_many")
    calls = _value("smsagg_store_coalesced_calls_total", op="record_submitted_many")
    answered = _ops("record_submitted")
    commits = store.commits
    await asyncio.gather(*(store.record_submitted(m.id, PROVIDER, parts(m, 1), NOW + 1)
                           for m in messages))
    assert _value("smsagg_store_coalesced_ops_total", op="record_submitted_many") - ops == 1
    assert _value("smsagg_store_coalesced_calls_total",
                  op="record_submitted_many") - calls == 12
    assert _ops("record_submitted") - answered == 1
    assert store.commits - commits == 1
    # Every caller's row is committed, with its own part, and counted out of pending.
    assert await store.count_by_status() == {"submitted": 12}
    assert store.pending == 0 and not store.pending_by_account
    for m in messages:
        assert await store.segments_of(m.id) == [(1, PROVIDER, f"{m.id}-p1", "submitted")]


async def test_each_caller_of_a_group_gets_its_own_result(store: SqliteStore) -> None:
    """A message already final is not counted out of pending twice: only its caller's result
    says so, not a neighbour's."""
    first, second = make_message(), make_message()
    await store.accept_many([first, second])
    await store.claim_due(NOW, 10)
    await store.finish(first.id, MessageStatus.FAILED, "gone", NOW)
    assert store.pending == 1
    await asyncio.gather(store.record_submitted(first.id, PROVIDER, parts(first, 1), NOW + 1),
                         store.record_submitted(second.id, PROVIDER, parts(second, 1), NOW + 1))
    assert store.pending == 0
    assert await store.count_by_status() == {"failed": 1, "submitted": 1}


async def test_a_failed_group_fails_every_caller(store: SqliteStore) -> None:
    messages = [make_message() for _ in range(5)]
    await store.accept_many(messages)
    await store.claim_due(NOW, 10)
    await store.run_on_writer("pragma", "query_only", 1)  # every write fails
    try:
        results = await asyncio.gather(
            *(store.record_submitted(m.id, PROVIDER, parts(m, 1), NOW + 1) for m in messages),
            return_exceptions=True)
    finally:
        await store.run_on_writer("pragma", "query_only", 0)
    assert all(isinstance(r, StoreError) for r in results), results
    assert len({id(r) for r in results}) == len(results)  # each raises its own
    assert await store.count_by_status() == {"queued": 5}
    assert store.pending == 5


async def test_a_short_claim_answers_next_due_at_without_a_writer_op(
    store: SqliteStore,
) -> None:
    now_due, later = make_message(), make_message(next_attempt_at=NOW + 60)
    await store.accept_many([now_due, later])
    reused = _value("smsagg_store_next_due_reused_total")
    asked = _ops("next_due_at")
    assert [m.id for m in await store.claim_due(NOW, 10)] == [now_due.id]
    assert await store.next_due_at() == NOW + 60
    assert _value("smsagg_store_next_due_reused_total") - reused == 1
    assert _ops("next_due_at") == asked
    # Used once: asked again, the writer answers (nothing was claimed in between).
    assert await store.next_due_at() == NOW + 60
    assert _ops("next_due_at") - asked == 1


async def test_a_full_claim_leaves_next_due_at_to_the_writer(store: SqliteStore) -> None:
    await store.accept_many([make_message(), make_message(next_attempt_at=NOW + 60)])
    asked = _ops("next_due_at")
    assert len(await store.claim_due(NOW, 1)) == 1  # as many as asked: it did not look
    assert await store.next_due_at() == NOW + 60
    assert _ops("next_due_at") - asked == 1


async def test_an_accept_after_the_claim_makes_the_next_due_time_sooner(
    store: SqliteStore,
) -> None:
    await store.accept(make_message(next_attempt_at=NOW + 60), None)
    assert await store.claim_due(NOW, 10) == []
    await store.accept(make_message(next_attempt_at=NOW + 5), None)
    await store.accept(make_message(next_attempt_at=NOW + 30), None)
    reused = _value("smsagg_store_next_due_reused_total")
    assert await store.next_due_at() == NOW + 5
    assert _value("smsagg_store_next_due_reused_total") - reused == 1


async def test_an_accept_into_an_empty_queue_after_the_claim_is_due(store: SqliteStore) -> None:
    assert await store.claim_due(NOW, 10) == []
    await store.accept_many([make_message(next_attempt_at=NOW + 7)])
    assert await store.next_due_at() == NOW + 7


async def test_a_reschedule_after_the_claim_asks_the_writer(store: SqliteStore) -> None:
    m = make_message()
    await store.accept_many([m, make_message(next_attempt_at=NOW + 60)])
    assert len(await store.claim_due(NOW, 10)) == 1
    asked = _ops("next_due_at")
    await store.reschedule(m.id, None, [], NOW + 2, "throttled")
    assert await store.next_due_at() == NOW + 2
    assert _ops("next_due_at") - asked == 1


async def test_a_write_sent_while_the_claim_runs_is_not_missed(store: SqliteStore) -> None:
    """A reschedule sent after the claim but committed with it (the same group) may have run
    after the claim's read: next_due_at must not answer from that read."""
    m = make_message()
    await store.accept_many([m, make_message(next_attempt_at=NOW + 60)])
    assert len(await store.claim_due(NOW, 10)) == 1
    claim = asyncio.ensure_future(store.claim_due(NOW, 10))
    await asyncio.sleep(0)  # the claim is sent
    await asyncio.gather(claim, store.reschedule(m.id, None, [], NOW + 2, "throttled"))
    assert await store.next_due_at() == NOW + 2


async def test_a_workers_accept_after_the_claim_makes_the_next_due_time_sooner(
    store: SqliteStore, tmp_path: Path,
) -> None:
    await store.accept(make_message(next_attempt_at=NOW + 60), None)
    assert await store.claim_due(NOW, 10) == []
    assert store.writer_address is not None
    worker = SqliteStore(str(tmp_path / "smsagg.db"), join=store.writer_address)
    await worker.open()
    try:
        await worker.accept(make_message(next_attempt_at=NOW + 3), None)
    finally:
        await worker.close()
    deadline = time.monotonic() + 5
    while store.pending < 2:  # the writer's next answer to the daemon tells it
        assert time.monotonic() < deadline, "the worker's accept never reached the daemon"
        await asyncio.sleep(0.01)
    assert await store.next_due_at() == NOW + 3


async def test_a_final_receipt_for_a_submitted_message_takes_two_statements(
    store: SqliteStore,
) -> None:
    """The part found and updated in one statement, the message checked and made final in
    another (with its callback: a third)."""
    m = make_message(callback_url="http://example.test/cb")
    await store.accept(m, None)
    await store.claim_due(NOW, 10)
    await store.record_submitted(m.id, PROVIDER, parts(m, 1), NOW + 1)
    await store.run_on_writer("trace", True)
    [result] = await store.apply_receipts([receipt(m, 1)])
    statements: list[str] = await store.run_on_writer("trace", False)
    work = [s for s in statements if s not in ("BEGIN IMMEDIATE", "COMMIT")]
    assert len(work) == 3, work
    assert result.matched and result.final is not None
    assert result.final.status is MessageStatus.DELIVERED
    assert await store.count_by_status() == {"delivered": 1}
    assert [job.message_id for job in await store.due_callbacks(NOW + 20, 10)] == [m.id]


async def test_next_due_from_the_claim_waits_for_the_writers_round_in_progress(
    store: SqliteStore,
) -> None:
    """As the operation it replaces did: the dispatcher's next claim then takes what that
    round stored, rather than claiming after each accept."""
    await store.accept(make_message(next_attempt_at=NOW + 60), None)
    assert await store.claim_due(NOW, 10) == []
    accepted = store.pending
    accept = asyncio.ensure_future(store.accept(make_message(next_attempt_at=NOW + 9), None))
    while store.writer.writes_queued == 0:  # sent at the end of its loop turn
        await asyncio.sleep(0)
    assert not accept.done()
    assert await store.next_due_at() == NOW + 9
    # Answered in the round next_due_at waited for (its caller's task may run later).
    assert store.writer.writes_queued == 0
    await accept
    assert store.pending == accepted + 1


async def test_accepts_of_one_loop_turn_are_one_writer_op(store: SqliteStore) -> None:
    ops = _value("smsagg_store_coalesced_ops_total", op="accept_each")
    calls = _value("smsagg_store_coalesced_calls_total", op="accept_each")
    messages = [make_message() for _ in range(10)]
    tasks = [asyncio.ensure_future(store.accept(m, None)) for m in messages]
    await asyncio.sleep(0)
    assert store.writes_queued == 10  # gathered, each counted
    results = await asyncio.gather(*tasks)
    assert all(r.created for r in results)
    assert _value("smsagg_store_coalesced_ops_total", op="accept_each") - ops == 1
    assert _value("smsagg_store_coalesced_calls_total", op="accept_each") - calls == 10
    assert store.pending == 10 and store.pending_by_account == {"shop": 10}
    assert await store.count_by_status() == {"accepted": 10}
    assert store.writes_queued == 0


async def test_a_bad_accept_fails_only_its_own_caller(store: SqliteStore) -> None:
    """A message id stored twice in one group: the group fails, then each accept is sent
    alone and only the second of the two fails."""
    first = make_message()
    twin = make_message(message_id=first.id)
    others = [make_message() for _ in range(3)]
    results = await asyncio.gather(*(store.accept(m, None) for m in (first, *others, twin)),
                                   return_exceptions=True)
    assert [isinstance(r, StoreError) for r in results] == [False, False, False, False, True]
    assert await store.count_by_status() == {"accepted": 4}
    assert store.pending == 4


async def test_a_workers_accepts_are_gathered_and_counted_by_the_daemon(
    store: SqliteStore, tmp_path: Path,
) -> None:
    assert store.writer_address is not None
    worker = SqliteStore(str(tmp_path / "smsagg.db"), join=store.writer_address)
    await worker.open()
    ops = _value("smsagg_store_coalesced_ops_total", op="accept_each")
    try:
        results = await asyncio.gather(*(worker.accept(make_message(), None) for _ in range(6)))
    finally:
        await worker.close()
    assert all(r.created for r in results)
    assert _value("smsagg_store_coalesced_ops_total", op="accept_each") - ops == 1
    deadline = time.monotonic() + 5
    while store.pending < 6:  # the writer's next answer to the daemon tells it
        assert time.monotonic() < deadline, "the worker's accepts never reached the daemon"
        await asyncio.sleep(0.01)
    assert store.pending_by_account == {"shop": 6}


async def test_a_store_fault_fails_the_group_of_accepts_without_resending_each(
    store: SqliteStore,
) -> None:
    """A read-only (or locked, or full) database is no single message's fault: sending each
    accept again alone would only make every request wait once more."""
    errors = store.writer.figures.write_errors
    await store.run_on_writer("pragma", "query_only", 1)
    try:
        results = await asyncio.gather(*(store.accept(make_message(), None) for _ in range(4)),
                                       return_exceptions=True)
    finally:
        await store.run_on_writer("pragma", "query_only", 0)
    assert all(isinstance(r, StoreError) for r in results), results
    # One group failed, once: sent again one accept at a time, each would fail again.
    assert store.writer.figures.write_errors == errors + 1
    assert await store.count_by_status() == {}

"""SqliteStore: the durable queue, receipt correlation, callbacks outbox, open-time checks."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aggregator.model import (
    Encoding,
    FinalNotice,
    Message,
    MessageStatus,
    ReceiptUpdate,
    Sender,
    SenderKind,
)
from aggregator.store.base import AcceptResult, CallbackJob, StoreError
from aggregator.store.sqlite import SqliteStore
from aggregator.store.writes import IDEMPOTENCY_TTL
from tests.store_helpers import NOW, PROVIDER, make_message, parts, receipt, submitted


async def open_store(path: Path) -> SqliteStore:
    store = SqliteStore(str(path))
    await store.open()
    return store


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "smsagg.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    s = await open_store(db_path)
    try:
        yield s
    finally:
        await s.close()


async def status_of(store: SqliteStore, message: Message) -> MessageStatus:
    stored = await store.get_message(message.account, message.id)
    assert stored is not None
    return stored.status


# ---- accept / get -----------------------------------------------------------------------------


async def test_accept_then_get_message_returns_the_same_fields(store: SqliteStore) -> None:
    m = Message(
        id="abc123",
        account="shop",
        to="+447911123456",
        sender=Sender("+447700900123", SenderKind.INTERNATIONAL),
        text="Grüße — ünïcödé ✓",
        encoding=Encoding.UCS2,
        segments=2,
        concat_ref=201,
        created_at=NOW,
        callback_url="https://cb.example/hook",
        reference="order-42",
        region="GB",
        next_attempt_at=NOW + 5,
        expires_at=NOW + 3600,
    )
    result = await store.accept(m, None)
    assert result.created
    assert result.message.id == "abc123"

    stored = await store.get_message("shop", "abc123")
    assert stored == m
    assert await store.get_message("bank", "abc123") is None  # another account's id
    assert await store.get_message("shop", "nope") is None
    assert store.pending == 1


# ---- idempotency ------------------------------------------------------------------------------


async def test_idempotency_key_replays_the_first_message_within_24h(store: SqliteStore) -> None:
    first = make_message(created_at=NOW)
    again = make_message(created_at=NOW + IDEMPOTENCY_TTL - 60)

    r1 = await store.accept(first, "key-1")
    r2 = await store.accept(again, "key-1")

    assert r1.created
    assert not r2.created
    assert r2.message.id == first.id
    assert r2.message.created_at == first.created_at
    assert await store.get_message("shop", again.id) is None
    assert store.pending == 1
    assert (await store.count_by_status()) == {"accepted": 1}


async def test_idempotency_key_is_per_account(store: SqliteStore) -> None:
    shop = make_message(account="shop")
    bank = make_message(account="bank")

    assert (await store.accept(shop, "key-1")).created
    r = await store.accept(bank, "key-1")

    assert r.created
    assert r.message.id == bank.id
    assert await store.get_message("bank", bank.id) is not None


async def test_idempotency_key_expires_after_ttl(store: SqliteStore) -> None:
    first = make_message(created_at=NOW)
    later = make_message(created_at=NOW + IDEMPOTENCY_TTL + 1)
    replay_of_later = make_message(created_at=NOW + IDEMPOTENCY_TTL + 2)

    await store.accept(first, "key-1")
    r = await store.accept(later, "key-1")
    assert r.created
    assert r.message.id == later.id

    # The key now points at the new message.
    r = await store.accept(replay_of_later, "key-1")
    assert not r.created
    assert r.message.id == later.id
    assert store.pending == 2


async def test_concurrent_accepts_with_one_key_create_one_message(store: SqliteStore) -> None:
    messages = [make_message() for _ in range(5)]
    results = await asyncio.gather(*(store.accept(m, "same-key") for m in messages))

    created = [r for r in results if r.created]
    assert len(created) == 1
    assert {r.message.id for r in results} == {created[0].message.id}
    assert (await store.count_by_status()) == {"accepted": 1}
    assert store.pending == 1


# ---- claim_due --------------------------------------------------------------------------------


async def test_claim_due_returns_only_due_messages_and_queues_them(
    store: SqliteStore,
) -> None:
    early = make_message(next_attempt_at=NOW - 10)
    due = make_message(next_attempt_at=NOW)
    future = make_message(next_attempt_at=NOW + 60)
    window_open = make_message(next_attempt_at=NOW - 20, status=MessageStatus.SCHEDULED)
    window_shut = make_message(next_attempt_at=NOW + 90, status=MessageStatus.SCHEDULED)
    failed = make_message(next_attempt_at=NOW - 30)
    for m in (early, due, future, window_open, window_shut, failed):
        await store.accept(m, None)
    await store.finish(failed.id, MessageStatus.FAILED, "no route", NOW)

    claimed = await store.claim_due(NOW, 10)

    # A scheduled message is due once its window opens.
    assert {m.id for m in claimed} == {window_open.id, early.id, due.id}
    assert all(m.status is MessageStatus.QUEUED for m in claimed)
    assert await status_of(store, early) is MessageStatus.QUEUED
    assert await status_of(store, due) is MessageStatus.QUEUED
    assert await status_of(store, future) is MessageStatus.ACCEPTED
    assert await status_of(store, window_shut) is MessageStatus.SCHEDULED

    assert await store.claim_due(NOW, 10) == []  # already queued: not claimed twice
    assert await store.next_due_at() == NOW + 60

    later = await store.claim_due(NOW + 60, 10)
    assert [m.id for m in later] == [future.id]
    assert await store.next_due_at() == NOW + 90


async def test_claim_due_respects_limit(store: SqliteStore) -> None:
    messages = [make_message(next_attempt_at=NOW - 10 + i) for i in range(5)]
    for m in messages:
        await store.accept(m, None)

    first = await store.claim_due(NOW, 2)
    rest = await store.claim_due(NOW, 10)

    assert [m.id for m in first] == [m.id for m in messages[:2]]
    assert [m.id for m in rest] == [m.id for m in messages[2:]]
    assert await store.claim_due(NOW, 10) == []


# ---- crash recovery ---------------------------------------------------------------------------


async def test_reopen_turns_queued_back_into_accepted(db_path: Path) -> None:
    store = await open_store(db_path)
    queued = [make_message(next_attempt_at=NOW - 1) for _ in range(2)]
    waiting = make_message(next_attempt_at=NOW + 60)
    sent = make_message(next_attempt_at=NOW - 5)
    try:
        await store.accept(sent, None)
        assert [m.id for m in await store.claim_due(NOW, 1)] == [sent.id]
        await store.record_submitted(sent.id, PROVIDER, parts(sent, 1), NOW)
        for m in [*queued, waiting]:
            await store.accept(m, None)
        assert len(await store.claim_due(NOW, 10)) == 2
        assert (await store.count_by_status()) == {"queued": 2, "accepted": 1, "submitted": 1}
    finally:
        await store.close()  # a "crash": the two queued messages were never submitted

    reopened = await open_store(db_path)
    try:
        counts = await reopened.count_by_status()
        assert counts == {"accepted": 3, "submitted": 1}
        assert reopened.pending == 3
        for m in queued:
            assert await status_of(reopened, m) is MessageStatus.ACCEPTED
        again = await reopened.claim_due(NOW, 10)
        assert {m.id for m in again} == {m.id for m in queued}
    finally:
        await reopened.close()


# ---- submitted + receipts ---------------------------------------------------------------------


async def test_single_segment_receipt_delivers_with_final_notice(store: SqliteStore) -> None:
    m = make_message(reference="order-1")
    await submitted(store, m, at=NOW + 1)

    stored = await store.get_message("shop", m.id)
    assert stored is not None
    assert stored.status is MessageStatus.SUBMITTED
    assert stored.provider == PROVIDER
    assert stored.submitted_at == NOW + 1
    assert stored.attempts == 1
    assert store.pending == 0
    assert await store.segments_of(m.id) == [(1, PROVIDER, f"{m.id}-p1", "submitted")]

    [result] = await store.apply_receipts([receipt(m, 1, at=NOW + 9)])

    assert result.matched
    assert result.message_id == m.id
    assert result.final == FinalNotice(
        message_id=m.id,
        account="shop",
        status=MessageStatus.DELIVERED,
        reference="order-1",
        error=None,
        done_at=NOW + 9,
        callback_url=None,
        submitted_at=NOW + 1,
        provider=PROVIDER,
    )
    stored = await store.get_message("shop", m.id)
    assert stored is not None
    assert stored.status is MessageStatus.DELIVERED
    assert stored.done_at == NOW + 9


async def test_intermediate_receipt_matches_but_changes_nothing(store: SqliteStore) -> None:
    m = make_message()
    await submitted(store, m)

    [result] = await store.apply_receipts([receipt(m, 1, MessageStatus.SUBMITTED)])

    assert result.matched
    assert result.message_id == m.id
    assert result.final is None
    assert await status_of(store, m) is MessageStatus.SUBMITTED


async def test_three_segments_deliver_only_after_the_third_receipt(store: SqliteStore) -> None:
    m = make_message(segments=3)
    await submitted(store, m)

    r1, r1_again, r2 = await store.apply_receipts(
        [receipt(m, 1), receipt(m, 1), receipt(m, 2)]  # a duplicate must not count twice
    )
    assert all(r.matched and r.final is None for r in (r1, r1_again, r2))
    assert await status_of(store, m) is MessageStatus.SUBMITTED

    [r3] = await store.apply_receipts([receipt(m, 3, at=NOW + 30)])

    assert r3.final is not None
    assert r3.final.status is MessageStatus.DELIVERED
    assert r3.final.done_at == NOW + 30
    assert await status_of(store, m) is MessageStatus.DELIVERED
    assert [s[3] for s in await store.segments_of(m.id)] == ["delivered"] * 3


async def test_undeliverable_segment_fails_the_message_at_once_for_good(
    store: SqliteStore,
) -> None:
    m = make_message(segments=3)
    await submitted(store, m)

    [bad] = await store.apply_receipts(
        [receipt(m, 2, MessageStatus.UNDELIVERABLE, at=NOW + 20, error="UNDELIV err:001")]
    )

    assert bad.final is not None
    assert bad.final.status is MessageStatus.UNDELIVERABLE
    assert bad.final.error == "UNDELIV err:001"

    later = await store.apply_receipts(
        [receipt(m, 1, at=NOW + 40), receipt(m, 3, at=NOW + 41)]
    )

    assert all(r.matched and r.final is None for r in later)
    stored = await store.get_message("shop", m.id)
    assert stored is not None
    assert stored.status is MessageStatus.UNDELIVERABLE
    assert stored.error == "UNDELIV err:001"
    assert stored.done_at == NOW + 20


async def test_unmatched_receipt(store: SqliteStore) -> None:
    m = make_message()
    await submitted(store, m)

    unknown, other_provider = await store.apply_receipts(
        [
            ReceiptUpdate(PROVIDER, "no-such-id", MessageStatus.DELIVERED, None, NOW),
            receipt(m, 1, provider="opB"),  # right id, wrong provider
        ]
    )

    for r in (unknown, other_provider):
        assert not r.matched
        assert r.message_id is None
        assert r.final is None
    assert await status_of(store, m) is MessageStatus.SUBMITTED


# ---- reschedule / finish ----------------------------------------------------------------------


async def test_reschedule_keeps_done_segments_and_sets_provider(store: SqliteStore) -> None:
    m = make_message(segments=3, next_attempt_at=NOW - 1)
    await store.accept(m, None)
    await store.claim_due(NOW, 10)

    await store.reschedule(m.id, PROVIDER, parts(m, 1, 2), NOW + 30, "ESME_RTHROTTLED (0x58)")

    stored = await store.get_message("shop", m.id)
    assert stored is not None
    assert stored.status is MessageStatus.ACCEPTED
    assert stored.provider == PROVIDER
    assert stored.error == "ESME_RTHROTTLED (0x58)"
    assert stored.next_attempt_at == NOW + 30
    assert stored.attempts == 1
    assert store.pending == 1

    assert await store.claim_due(NOW + 29, 10) == []
    [again] = await store.claim_due(NOW + 30, 10)
    assert again.id == m.id
    assert again.done_segments == frozenset({1, 2})

    # The kept ids still correlate: finish the third part, then all three receipts deliver it.
    await store.record_submitted(m.id, PROVIDER, parts(m, 3), NOW + 31)
    results = await store.apply_receipts([receipt(m, 1), receipt(m, 2), receipt(m, 3)])
    assert [r.final is not None for r in results] == [False, False, True]
    assert await status_of(store, m) is MessageStatus.DELIVERED


async def test_finish_on_a_final_message_returns_none(store: SqliteStore) -> None:
    m = make_message(next_attempt_at=NOW - 1)
    await store.accept(m, None)
    await store.claim_due(NOW, 10)

    notice = await store.finish(m.id, MessageStatus.FAILED, "ESME_RINVDSTADR (0x0B)", NOW + 1)
    assert notice is not None
    assert notice.status is MessageStatus.FAILED
    assert store.pending == 0

    assert await store.finish(m.id, MessageStatus.DELIVERED, None, NOW + 2) is None
    [late] = await store.apply_receipts([receipt(m, 1)])  # no segment: not even matched
    assert late.final is None

    stored = await store.get_message("shop", m.id)
    assert stored is not None
    assert stored.status is MessageStatus.FAILED
    assert stored.error == "ESME_RINVDSTADR (0x0B)"
    assert stored.done_at == NOW + 1
    assert store.pending == 0


async def test_receipt_finishing_a_rescheduled_message_leaves_pending(
    store: SqliteStore,
) -> None:
    m = make_message(segments=2, next_attempt_at=NOW - 1)
    await store.accept(m, None)
    await store.claim_due(NOW, 10)
    await store.reschedule(m.id, PROVIDER, parts(m, 1), NOW + 30, "timeout")
    assert store.pending == 1

    [r] = await store.apply_receipts([receipt(m, 1, MessageStatus.UNDELIVERABLE)])

    assert r.final is not None
    assert (await store.count_by_status()).get("accepted", 0) == 0
    assert store.pending == 0


# ---- callbacks outbox -------------------------------------------------------------------------


async def delivered_with_callback(store: SqliteStore, *, at: float) -> tuple[Message, CallbackJob]:
    m = make_message(callback_url="https://cb.example/hook", reference="order-7")
    await submitted(store, m)
    [r] = await store.apply_receipts([receipt(m, 1, at=at)])
    assert r.final is not None
    jobs = [j for j in await store.due_callbacks(at, 100) if j.message_id == m.id]
    assert len(jobs) == 1
    return m, jobs[0]


async def test_final_message_with_callback_url_gets_a_callback_job(store: SqliteStore) -> None:
    plain = make_message()  # no callback_url: no job
    await submitted(store, plain)
    await store.apply_receipts([receipt(plain, 1, at=NOW + 5)])

    assert await store.due_callbacks(NOW + 4, 10) == []  # due from done_at on
    m, job = await delivered_with_callback(store, at=NOW + 5)

    assert await store.due_callbacks(NOW + 5, 10) == [job]
    assert job.url == "https://cb.example/hook"
    assert job.attempts == 0
    assert json.loads(job.payload) == {
        "id": m.id,
        "status": "delivered",
        "reference": "order-7",
        "error": None,
        "done_at": "2023-11-14T22:13:25.000Z",
    }


async def test_callbacks_done_removes_those_jobs_only(store: SqliteStore) -> None:
    _, first = await delivered_with_callback(store, at=NOW + 5)
    _, second = await delivered_with_callback(store, at=NOW + 5)
    _, kept = await delivered_with_callback(store, at=NOW + 5)

    await store.callbacks_done([first.id, second.id])

    assert await store.due_callbacks(NOW + 10_000, 10) == [kept]


async def test_callback_retry_pushes_next_attempt(store: SqliteStore) -> None:
    _, job = await delivered_with_callback(store, at=NOW + 5)

    await store.callback_retry(job.id, NOW + 100, "HTTP 503")

    assert await store.due_callbacks(NOW + 99, 10) == []
    [again] = await store.due_callbacks(NOW + 100, 10)
    assert again.id == job.id
    assert again.attempts == 1
    assert again.payload == job.payload


async def test_callback_give_up_stops_it_being_due(store: SqliteStore) -> None:
    _, job = await delivered_with_callback(store, at=NOW + 5)
    _, other = await delivered_with_callback(store, at=NOW + 6)

    await store.callback_give_up(job.id, "HTTP 410")

    assert [j.id for j in await store.due_callbacks(NOW + 10_000, 10)] == [other.id]


# ---- open-time checks -------------------------------------------------------------------------


async def test_newer_schema_is_refused(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()

    store = SqliteStore(str(db_path))
    with pytest.raises(StoreError, match=r"version 99"):
        await store.open()
    await store.close()


async def test_garbage_file_is_refused(db_path: Path) -> None:
    db_path.write_bytes(random.Random(20240101).randbytes(16_384))

    store = SqliteStore(str(db_path))
    with pytest.raises(StoreError, match="not a usable smsagg database"):
        await store.open()
    await store.close()


# ---- group commit -----------------------------------------------------------------------------


async def test_commit_hook_sees_each_group_and_cannot_undo_or_redo_it(tmp_path: Path) -> None:
    seen: list[float] = []

    def hook(seconds: float) -> None:
        seen.append(seconds)
        raise RuntimeError("metrics broke")

    store = SqliteStore(str(tmp_path / "hook.db"), on_commit=hook)
    await store.open()
    try:
        result = await store.accept(make_message(), None)
        assert result.created  # not re-run as a failed group (a duplicate id would fail it)
        assert (await store.count_by_status()) == {"accepted": 1}
        assert len(seen) == store.commits == 1 and seen[0] >= 0
    finally:
        await store.close()


async def test_many_concurrent_accepts_share_few_commits(store: SqliteStore) -> None:
    before = store.commits
    messages = [make_message() for _ in range(500)]

    results = await asyncio.gather(*(store.accept(m, None) for m in messages))

    assert all(r.created for r in results)
    assert (await store.count_by_status()) == {"accepted": 500}
    assert store.pending == 500
    assert store.commits - before < 500


async def test_writes_of_one_loop_turn_reach_the_writer_together(store: SqliteStore) -> None:
    """The writer is handed a turn's writes at once, so it cannot start a group on the first
    while the loop is still producing the rest: one commit for all of them."""
    before = store.commits

    async def accept_after_a_syscall(m: Message) -> AcceptResult:
        time.sleep(0.0002)  # the loop lets go of the GIL now and then (not waiting for anything)
        return await store.accept(m, None)

    await asyncio.gather(*(accept_after_a_syscall(make_message()) for _ in range(300)))

    assert store.commits - before == 1


async def test_writes_waiting_behind_a_busy_writer_go_in_one_commit(
    store: SqliteStore, db_path: Path
) -> None:
    """While the writer waits for the database lock, every accept queues up behind it; once the
    lock is free they are committed together (at most the first op alone, then the rest)."""
    blocker = sqlite3.connect(db_path, isolation_level=None)
    before = store.commits
    try:
        blocker.execute("BEGIN IMMEDIATE")
        tasks = [
            asyncio.ensure_future(store.accept(make_message(), None)) for _ in range(300)
        ]
        await asyncio.sleep(0)  # each task queues its write on its first step
        assert store.writes_queued == 300
        blocker.execute("COMMIT")
    finally:
        blocker.close()

    results = await asyncio.gather(*tasks)

    assert all(r.created for r in results)
    assert store.commits - before <= 2
    assert (await store.count_by_status()) == {"accepted": 300}


async def test_claiming_walks_the_due_index_instead_of_sorting_the_backlog(
    store: SqliteStore, db_path: Path
) -> None:
    # With a deep backlog, sorting every waiting row on each claim (the planner's own choice,
    # via messages_status) cost 14 ms per claim at 16k rows and capped relaying.
    await store.accept_many([make_message() for _ in range(300)])
    await store.run_on_writer("trace", True)
    assert len(await store.claim_due(NOW, 10)) == 10
    assert await store.next_due_at() == 0.0
    statements: list[str] = await store.run_on_writer("trace", False)
    reads = [s for s in statements if "messages_due" in s or "next_attempt_at <=" in s
             or "MIN(next_attempt_at)" in s]
    # The claim's look for the accounts due (two index seeks with one account), the claim,
    # next_due_at (the same two seeks).
    assert len(reads) == 5, statements
    check = sqlite3.connect(db_path)
    try:
        for sql in reads:
            plan = " / ".join(row[3] for row in check.execute("EXPLAIN QUERY PLAN " + sql))
            assert "USING INDEX messages_due" in plan, (sql, plan)
            assert "TEMP B-TREE" not in plan, (sql, plan)
    finally:
        check.close()


async def test_pending_count_stays_exact_when_accepts_overlap_a_submit_record(
    store: SqliteStore,
) -> None:
    first = make_message()
    await store.accept(first, None)
    assert [m.id for m in await store.claim_due(NOW, 10)] == [first.id]
    # Accepts that commit while the submit record waits for its own commit must all stay
    # counted (the record used to write back a count read before it waited).
    others = [make_message() for _ in range(20)]
    await asyncio.gather(
        *(store.accept(m, None) for m in others),
        store.record_submitted(first.id, PROVIDER, parts(first, 1), NOW + 1),
    )
    counts = await store.count_by_status()
    assert store.pending == counts.get("accepted", 0) == len(others)

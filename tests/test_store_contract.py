"""The store contract on every backend: tests/test_store.py's backend-neutral tests, run here
against SQLite (as production opens it: through the factory, writer process) and a real
PostgreSQL server, plus contract tests of the members test_store.py does not cover."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from aggregator.config import Config, load_default_config, with_overrides
from aggregator.model import MessageStatus
from aggregator.store.base import NO_PROVIDER
from aggregator.store.factory import build_store
from aggregator.store.postgres import PostgresStore
from aggregator.store.sqlite import SqliteStore
from tests.pg import PgServer, create_database

# test_store.py's tests that use only the Store contract: collected here once per backend,
# with this module's `store` fixture. (Imported names starting with test_ are collected.)
from tests.test_store import (  # noqa: F401
    NOW,
    PROVIDER,
    make_message,
    parts,
    receipt,
    submitted,
    test_accept_then_get_message_returns_the_same_fields,
    test_callback_give_up_stops_it_being_due,
    test_callback_retry_pushes_next_attempt,
    test_callbacks_done_removes_those_jobs_only,
    test_claim_due_respects_limit,
    test_claim_due_returns_only_due_messages_and_queues_them,
    test_concurrent_accepts_with_one_key_create_one_message,
    test_final_message_with_callback_url_gets_a_callback_job,
    test_finish_on_a_final_message_returns_none,
    test_idempotency_key_expires_after_ttl,
    test_idempotency_key_is_per_account,
    test_idempotency_key_replays_the_first_message_within_24h,
    test_intermediate_receipt_matches_but_changes_nothing,
    test_pending_count_stays_exact_when_accepts_overlap_a_submit_record,
    test_receipt_finishing_a_rescheduled_message_leaves_pending,
    test_reschedule_keeps_done_segments_and_sets_provider,
    test_single_segment_receipt_delivers_with_final_notice,
    test_three_segments_deliver_only_after_the_third_receipt,
    test_undeliverable_segment_fails_the_message_at_once_for_good,
    test_unmatched_receipt,
)

AnyStore = SqliteStore | PostgresStore
BACKENDS = ["sqlite", "postgres"]


def backend_config(backend: str, tmp_path: Path, dsn: str, instance: str = "a") -> Config:
    if backend == "postgres":
        store: dict[str, Any] = {"backend": "postgres", "dsn": dsn}
    else:
        store = {"backend": "sqlite", "path": str(tmp_path / "smsagg.db")}
    return with_overrides(load_default_config(), store=store, instance={"name": instance})


@pytest.fixture(params=BACKENDS)
async def opener(request: pytest.FixtureRequest,
                 tmp_path: Path) -> AsyncIterator[Callable[[], Any]]:
    """Opens a store on this test's database (every call: another handle on the same one, as
    a restarted process would); closes them all after the test."""
    dsn = ""
    if request.param == "postgres":
        server: PgServer = request.getfixturevalue("pg_server")
        dsn = await create_database(server)
    config = backend_config(request.param, tmp_path, dsn)
    opened: list[AnyStore] = []

    async def open_one() -> AnyStore:
        s = build_store(config)
        await s.open()
        opened.append(s)
        return s

    yield open_one
    for s in opened:
        await s.close()


@pytest.fixture
async def store(opener: Callable[[], Any]) -> AnyStore:
    s: AnyStore = await opener()
    return s


# ---- contract tests of the rest of the Store protocol -------------------------------------------


async def test_reopen_turns_queued_back_into_accepted(opener: Callable[[], Any]) -> None:
    first: AnyStore = await opener()
    queued = [make_message(next_attempt_at=NOW - 1) for _ in range(2)]
    sent = make_message(next_attempt_at=NOW - 5)
    await first.accept(sent, None)
    await first.claim_due(NOW, 1)
    await first.record_submitted(sent.id, PROVIDER, parts(sent, 1), NOW)
    for m in queued:
        await first.accept(m, None)
    assert len(await first.claim_due(NOW, 10)) == 2
    await first.close()  # a "crash": the two queued messages were never submitted

    again: AnyStore = await opener()  # the same instance, restarted
    assert await again.count_by_status() == {"accepted": 2, "submitted": 1}
    assert again.pending == 2
    assert {m.id for m in await again.claim_due(NOW, 10)} == {m.id for m in queued}


async def test_accept_many_stores_all_and_counts_marketing(store: AnyStore) -> None:
    ads = [make_message() for _ in range(3)]
    for m in ads:
        m.message_class = "marketing"
    await store.accept_many([*ads, make_message()])

    assert await store.count_by_status() == {"accepted": 4}
    assert store.pending == 4
    count, latest = await store.marketing_history("shop", ads[0].to, NOW - 1)
    assert (count, latest) == (3, NOW)
    assert await store.marketing_history("shop", ads[0].to, NOW + 1) == (0, None)
    assert await store.marketing_history("bank", ads[0].to, NOW - 1) == (0, None)


async def test_release_waiting_makes_messages_waiting_for_a_provider_due(
    store: AnyStore,
) -> None:
    waiting, throttled = make_message(next_attempt_at=NOW - 1), make_message(
        next_attempt_at=NOW - 1)
    for m in (waiting, throttled):
        await store.accept(m, None)
    await store.claim_due(NOW, 10)
    await store.reschedule(waiting.id, None, [], NOW + 600, NO_PROVIDER, count_attempt=False)
    await store.reschedule(throttled.id, None, [], NOW + 600, "ESME_RTHROTTLED (0x58)")

    assert await store.release_waiting(NOW + 5) == 1
    assert [m.id for m in await store.claim_due(NOW + 5, 10)] == [waiting.id]
    assert await store.next_due_at() == NOW + 600


async def test_optouts_are_added_once_listed_and_removed(store: AnyStore) -> None:
    assert await store.add_optout("shop", "+38344123456", "keyword", NOW)
    assert not await store.add_optout("shop", "+38344123456", "api", NOW + 1)
    assert await store.add_optout("shop", "+38344999999", "api", NOW + 2)

    assert await store.is_opted_out("shop", "+38344123456")
    assert not await store.is_opted_out("bank", "+38344123456")
    assert await store.list_optouts("shop", None, 10) == [
        ("+38344123456", NOW, "keyword"), ("+38344999999", NOW + 2, "api")]
    assert await store.list_optouts("shop", "+38344999999", 10) == [
        ("+38344999999", NOW + 2, "api")]
    assert len(await store.list_optouts("shop", None, 1)) == 1

    assert await store.remove_optout("shop", "+38344123456")
    assert not await store.remove_optout("shop", "+38344123456")
    assert not await store.is_opted_out("shop", "+38344123456")


async def test_account_for_reply_is_the_latest_sender_to_the_number(store: AnyStore) -> None:
    old = make_message(account="bank", created_at=NOW)
    new = make_message(account="shop", created_at=NOW + 10)
    await store.accept_many([old, new])

    assert await store.account_for_reply(new.to, "Shop") == "shop"
    assert await store.account_for_reply(new.to, "Other") is None
    assert await store.account_for_reply("+10000000000", "Shop") is None


async def test_smpp_receipts_outbox_receipt_and_mo(store: AnyStore) -> None:
    m = make_message()
    m.receipt_mode = 1
    await submitted(store, m)
    await store.apply_receipts([receipt(m, 1, at=NOW + 9)])
    await store.enqueue_smpp_mo("shop", "+38344123456", "Shop", "STOP", NOW + 10)

    assert await store.due_smpp_receipts("bank", NOW + 100, 10) == []
    dlr, mo = await store.due_smpp_receipts("shop", NOW + 100, 10)
    assert (dlr.message_id, dlr.status, dlr.source, dlr.dest, dlr.kind) == (
        m.id, MessageStatus.DELIVERED, "Shop", m.to, "receipt")
    assert (dlr.submitted_at, dlr.done_at, dlr.attempts) == (NOW, NOW + 9, 0)
    assert (mo.kind, mo.text, mo.source, mo.dest) == ("mo", "STOP", "+38344123456", "Shop")

    await store.smpp_receipt_done(mo.id)
    await store.smpp_receipt_retry(dlr.id, NOW + 200, give_up=False)
    assert await store.due_smpp_receipts("shop", NOW + 199, 10) == []
    [again] = await store.due_smpp_receipts("shop", NOW + 200, 10)
    assert (again.id, again.attempts) == (dlr.id, 1)
    await store.smpp_receipt_retry(dlr.id, NOW + 200, give_up=True)
    assert await store.due_smpp_receipts("shop", NOW + 10_000, 10) == []


async def test_enqueued_callback_is_due_with_no_message(store: AnyStore) -> None:
    await store.enqueue_callback("https://cb.example/mo", '{"text":"hi"}', NOW)

    [job] = await store.due_callbacks(NOW, 10)
    assert (job.message_id, job.url, job.payload, job.attempts) == (
        "", "https://cb.example/mo", '{"text":"hi"}', 0)


async def test_a_refused_write_does_not_sink_the_writes_beside_it(store: AnyStore) -> None:
    first = make_message()
    await store.accept(first, None)
    before, after = make_message(), make_message()

    results = await asyncio.gather(
        store.accept(before, None), store.accept(first, None), store.accept(after, None),
        return_exceptions=True)  # one loop turn: one group; the middle one's id is taken

    assert isinstance(results[1], Exception)
    assert not isinstance(results[0], Exception) and not isinstance(results[2], Exception)
    assert await store.count_by_status() == {"accepted": 3}
    assert store.pending == 3


async def test_close_commits_and_answers_the_writes_already_made(
        opener: Callable[[], Any]) -> None:
    first: AnyStore = await opener()
    messages = [make_message() for _ in range(50)]
    tasks = [asyncio.ensure_future(first.accept(m, None)) for m in messages]
    await asyncio.sleep(0)  # each has made its write

    await first.close()

    assert all(t.result().created for t in tasks)
    again: AnyStore = await opener()
    assert await again.count_by_status() == {"accepted": 50}

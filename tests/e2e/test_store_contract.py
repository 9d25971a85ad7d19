"""The store contract on every backend: tests/unit/test_store.py's backend-neutral tests, run here
against SQLite (as production opens it: through the factory, writer process) and a real
PostgreSQL server, plus contract tests of the members test_store.py does not cover."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from aggregator.config import Config, load_default_config, with_overrides
from aggregator.model import Message, MessageStatus
from aggregator.store.base import NO_PROVIDER, MessageFilter
from aggregator.store.factory import build_store
from aggregator.store.postgres import PostgresStore
from aggregator.store.sqlite import SqliteStore
from aggregator.store.writes import id_bound
from tests.pg import PgServer, create_database
from tests.store_helpers import NOW, PROVIDER, make_message, parts, receipt, submitted

# test_store.py's tests that use only the Store contract: collected here once per backend,
# with this module's `store` fixture. (Imported names starting with test_ are collected.)
from tests.unit.test_store import (  # noqa: F401
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
        ("+38344123456", NOW, "keyword", "marketing"),
        ("+38344999999", NOW + 2, "api", "marketing")]
    assert await store.list_optouts("shop", "+38344999999", 10) == [
        ("+38344999999", NOW + 2, "api", "marketing")]
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


# ---- members added since the first contract: cancel, listing, overdue receipts, consents,
# ---- opt-out removals, retention ------------------------------------------------------------


async def test_cancel_only_what_is_not_yet_taken(store: AnyStore) -> None:
    waiting, taken = make_message(next_attempt_at=NOW + 60), make_message(next_attempt_at=NOW)
    await store.accept_many([waiting, taken])
    await store.claim_due(NOW, 10)

    outcome, notice = await store.cancel("shop", waiting.id, NOW + 1)
    assert outcome == "cancelled" and notice is not None
    assert notice.status is MessageStatus.CANCELLED
    assert await store.cancel("shop", waiting.id, NOW + 2) == ("cancelled", None)
    assert await store.cancel("shop", taken.id, NOW + 2) == ("queued", None)
    assert await store.cancel("bank", taken.id, NOW + 2) == ("not_found", None)
    assert store.pending == 1


async def test_list_messages_newest_first_with_filters(store: AnyStore) -> None:
    first, second, third = (make_message(reference="r1"), make_message(reference="r2"),
                            make_message(reference="r1"))
    third.to = "+38344999999"
    await store.accept_many([first, second, third, make_message(account="bank")])
    await store.finish(second.id, MessageStatus.FAILED, "x", NOW)

    def ids(found: list[Message]) -> list[str]:
        return [m.id for m in found]

    assert ids(await store.list_messages("shop", MessageFilter(), 10)) == [
        third.id, second.id, first.id]
    assert ids(await store.list_messages("shop", MessageFilter(), 2)) == [third.id, second.id]
    assert ids(await store.list_messages("shop", MessageFilter(before=third.id), 10)) == [
        second.id, first.id]
    assert ids(await store.list_messages("shop", MessageFilter(status="failed"), 10)) == [
        second.id]
    assert ids(await store.list_messages("shop", MessageFilter(reference="r1",
                                                                to=first.to), 10)) == [first.id]
    assert await store.list_messages("shop", MessageFilter(since=NOW + 1), 10) == []


async def test_consents_and_optout_removals_are_recorded(store: AnyStore) -> None:
    a = await store.add_consent("shop", "+38344123456", "marketing", "web form", NOW - 5, NOW)
    b = await store.add_consent("shop", "+38344999999", "all", "call", NOW - 3, NOW + 1)
    assert b > a
    assert await store.has_consent("shop", "+38344123456", "marketing")
    assert not await store.has_consent("shop", "+38344123456", "surveys")
    assert await store.has_consent("shop", "+38344999999", "surveys")  # "all"
    assert not await store.has_consent("bank", "+38344123456", "marketing")
    assert await store.list_consents("shop", None, 10) == [
        (a, "+38344123456", "marketing", "web form", NOW - 5, NOW),
        (b, "+38344999999", "all", "call", NOW - 3, NOW + 1)]
    assert len(await store.list_consents("shop", "+38344999999", 10)) == 1

    await store.add_optout("shop", "+38344123456", "keyword", NOW)
    assert await store.remove_optout_logged("shop", "+38344123456", "api:shop", NOW + 9)
    assert not await store.remove_optout_logged("shop", "+38344123456", "api:shop", NOW + 9)
    assert not await store.is_opted_out("shop", "+38344123456")
    assert await store.list_optout_removals("shop", None, 10) == [
        ("+38344123456", NOW, "keyword", NOW + 9, "api:shop", "marketing")]


async def test_overdue_segments_are_claimed_once_then_expired(store: AnyStore) -> None:
    m = make_message(segments=2)
    await submitted(store, m, at=NOW)

    found = await store.claim_overdue_segments(PROVIDER, NOW + 10, NOW + 10, NOW + 20, 10)
    assert sorted((o.message_id, o.seq, o.provider_msg_id) for o in found) == [
        (m.id, 1, f"{m.id}-p1"), (m.id, 2, f"{m.id}-p2")]
    assert found[0].sender == m.sender
    assert await store.claim_overdue_segments(PROVIDER, NOW + 10, NOW + 10, NOW + 21, 10) == []
    assert len(await store.claim_overdue_segments(PROVIDER, NOW + 10, NOW + 20, NOW + 22,
                                                  10)) == 2  # asked again later

    [notice] = await store.expire_unreceipted(NOW + 10, NOW + 30, 10, "no receipt")
    assert (notice.message_id, notice.status, notice.error) == (
        m.id, MessageStatus.UNKNOWN, "no receipt")
    assert await store.expire_unreceipted(NOW + 10, NOW + 31, 10, "no receipt") == []


async def test_retention_blanks_texts_and_purges_old_final_messages(store: AnyStore) -> None:
    old, recent, waiting = make_message(), make_message(), make_message()
    old.id = id_bound(NOW - 100) + "0001"
    recent.id = id_bound(NOW + 100) + "0002"
    waiting.id = id_bound(NOW - 100) + "0003"
    await store.accept_many([old, recent, waiting])
    for m in (old, recent):
        await store.finish(m.id, MessageStatus.FAILED, "x", NOW)

    assert await store.erase_texts("always", 10) == 0
    assert await store.erase_texts("until_final", 10) == 2
    assert await store.erase_texts("until_final", 10) == 0
    kept = await store.get_message("shop", waiting.id)
    assert kept is not None and kept.text == "hello"

    assert await store.purge_before(NOW, 10) == 1
    assert await store.get_message("shop", old.id) is None
    assert await store.count_by_status() == {"accepted": 1, "failed": 1}


async def test_claims_share_a_batch_between_accounts_by_what_they_hold(store: AnyStore) -> None:
    shop = [make_message(next_attempt_at=NOW - 100 + i / 100) for i in range(30)]
    bank = [make_message(account="bank", next_attempt_at=NOW - 1 + i / 100) for i in range(3)]
    await store.accept_many(shop)
    await store.accept_many(bank)
    assert dict(store.pending_by_account) == {"shop": 30, "bank": 3}

    claimed = await store.claim_due(NOW, 10)  # oldest first would give shop all ten

    assert sorted(m.account for m in claimed).count("bank") == 3
    assert [m.id for m in claimed if m.account == "shop"] == [m.id for m in shop[:7]]
    [one] = await store.claim_due(NOW, 1, {"shop": 7, "bank": 3})  # bank has no more due
    assert one.account == "shop"
    await store.record_submitted(one.id, PROVIDER, parts(one, 1), NOW)
    await store.finish(bank[0].id, MessageStatus.FAILED, "x", NOW)
    assert dict(store.pending_by_account) == {"shop": 29, "bank": 2}


async def test_hold_puts_a_claimed_message_back_until_later(store: AnyStore) -> None:
    m = make_message(next_attempt_at=NOW)
    await store.accept(m, None)
    await store.claim_due(NOW, 10)

    await store.hold(m.id, NOW + 60, "quiet hours")

    held = await store.get_message("shop", m.id)
    assert held is not None and held.status is MessageStatus.SCHEDULED
    assert (held.error, held.attempts) == ("quiet hours", 0)
    assert await store.claim_due(NOW + 59, 10) == []
    assert [x.id for x in await store.claim_due(NOW + 60, 10)] == [m.id]


async def test_send_rules_state_reads_optouts_and_marketing_history(store: AnyStore) -> None:
    ad = make_message(created_at=NOW - 10)
    ad.message_class = "marketing"
    await store.accept(ad, None)
    await store.add_optout("shop", "+38344999999", "keyword", NOW)

    opted, sent = await store.send_rules_state(
        [("shop", ad.to), ("shop", "+38344999999"), ("bank", "+38344999999")],
        [("shop", ad.to), ("bank", ad.to)], NOW - 60)

    assert opted == {("shop", "+38344999999"): "marketing"}
    assert sent == {("shop", ad.to): [NOW - 10]}
    assert await store.send_rules_state([], [], NOW) == ({}, {})


async def test_due_callbacks_carry_the_account_and_a_fair_read_limits_each_destination(
        store: AnyStore) -> None:
    shop = [make_message(callback_url="https://a.example/cb?n=1") for _ in range(4)]
    bank = make_message(account="bank", callback_url="https://b.example/cb")
    await store.accept_many([*shop, bank])
    for m in [*shop, bank]:
        await store.finish(m.id, MessageStatus.FAILED, "x", NOW)
    await store.enqueue_callback("https://a.example/mo", "{}", NOW)  # an MO: no account

    everything = await store.due_callbacks(NOW + 1, 100)
    assert sorted(job.account for job in everything) == ["", "bank", *["shop"] * 4]

    # At most two per (account, destination): shop's backlog does not hide bank's or the MO.
    fair = await store.due_callbacks(NOW + 1, 100, per_destination=2)
    assert sorted(job.account for job in fair) == ["", "bank", "shop", "shop"]
    assert [job.message_id for job in fair if job.account == "shop"] == [m.id for m in shop[:2]]


async def test_retention_purges_old_messages_with_decimal_ids_too(store: AnyStore) -> None:
    from aggregator.model import DecimalIds

    t = 1_750_000_000.0  # decimal ids count from 2024
    old = make_message(created_at=t - 100)
    old.id = DecimalIds(clock=lambda: t - 100).next()
    recent = make_message(created_at=t + 100)
    recent.id = DecimalIds(node=1, clock=lambda: t + 100).next()
    hex_old = make_message(created_at=t - 100)
    hex_old.id = id_bound(t - 100) + "0004"
    await store.accept_many([old, recent, hex_old])
    for m in (old, recent, hex_old):
        await store.finish(m.id, MessageStatus.FAILED, "x", t)

    assert await store.purge_before(t, 10) == 2
    assert await store.get_message("shop", old.id) is None
    assert await store.get_message("shop", hex_old.id) is None
    assert await store.get_message("shop", recent.id) is not None


# ---- per-type opt-outs (issue 19 item 6): scope "marketing" or "all" ---------------------------

XK_A, XK_B = "+38344123456", "+38344999999"


async def test_optout_scope_is_widened_to_all_but_never_narrowed(store: AnyStore) -> None:
    assert await store.add_optout("shop", XK_A, "api", NOW, "marketing")
    assert not await store.add_optout("shop", XK_A, "api", NOW + 1, "marketing")
    assert await store.optout_scope("shop", XK_A) == "marketing"
    assert await store.is_opted_out("shop", XK_A)

    # A STOP later: the marketing-only opt-out becomes one of everything, from then.
    assert await store.add_optout("shop", XK_A, "mo:sim", NOW + 5, "all")
    assert await store.list_optouts("shop", XK_A, 10) == [(XK_A, NOW + 5, "mo:sim", "all")]
    # Asking for less, or the same again, changes nothing.
    assert not await store.add_optout("shop", XK_A, "api", NOW + 6, "marketing")
    assert not await store.add_optout("shop", XK_A, "api", NOW + 7, "all")
    assert await store.list_optouts("shop", XK_A, 10) == [(XK_A, NOW + 5, "mo:sim", "all")]

    assert await store.add_optout("shop", XK_B, "api", NOW + 8)  # no scope: "marketing"
    assert await store.optout_scope("shop", XK_B) == "marketing"
    assert await store.optout_scope("bank", XK_A) is None
    assert await store.optout_scope("shop", "+38344000000") is None


async def test_removal_records_carry_the_scope_the_optout_had(store: AnyStore) -> None:
    await store.add_optout("shop", XK_A, "mo:sim", NOW, "all")
    await store.add_optout("shop", XK_B, "api", NOW + 1, "marketing")
    assert await store.remove_optout_logged("shop", XK_A, "api:ops", NOW + 10)
    assert await store.remove_optout_logged("shop", XK_B, "api", NOW + 11)

    assert await store.list_optout_removals("shop", None, 10) == [
        (XK_A, NOW, "mo:sim", NOW + 10, "api:ops", "all"),
        (XK_B, NOW + 1, "api", NOW + 11, "api", "marketing")]
    assert await store.optout_scope("shop", XK_A) is None


async def test_send_rules_state_gives_each_optouts_scope(store: AnyStore) -> None:
    await store.add_optout("shop", XK_A, "mo:sim", NOW, "all")
    await store.add_optout("shop", XK_B, "api", NOW, "marketing")
    await store.add_optout("bank", XK_B, "api", NOW, "all")

    opted, sent = await store.send_rules_state(
        [("shop", XK_A), ("shop", XK_B), ("bank", XK_A)], [], NOW - 60)
    assert opted == {("shop", XK_A): "all", ("shop", XK_B): "marketing"}
    assert sent == {}


def _sqlite_before_scopes(path: Path) -> None:
    """A database at schema 4, the last one without opt-out scopes, with an opt-out and a
    removal record in it."""
    import sqlite3

    from aggregator.store.sqlite_schema import MIGRATIONS

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for step in MIGRATIONS[:4]:
            conn.executescript(step)
        conn.execute("PRAGMA user_version = 4")
        conn.execute("INSERT INTO optouts VALUES ('shop', ?, ?, 'mo:sim')", (XK_A, NOW))
        conn.execute("INSERT INTO optout_removals (account, number, opted_out_at, source, "
                     "removed_at, removed_by) VALUES ('shop', ?, ?, 'api', ?, 'api')",
                     (XK_B, NOW, NOW + 1))
    finally:
        conn.close()


async def _postgres_before_scopes(dsn: str) -> None:
    """The same on PostgreSQL: schema 1, the last one without opt-out scopes."""
    import asyncpg

    from aggregator.store.postgres import MIGRATIONS

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE smsagg_schema (version INTEGER NOT NULL)")
        await conn.execute(MIGRATIONS[0])
        await conn.execute("INSERT INTO smsagg_schema VALUES (1)")
        await conn.execute("INSERT INTO optouts VALUES ('shop', $1, $2, 'mo:sim')", XK_A, NOW)
        await conn.execute("INSERT INTO optout_removals (account, number, opted_out_at, source, "
                           "removed_at, removed_by) VALUES ('shop', $1, $2, 'api', $3, 'api')",
                           XK_B, NOW, NOW + 1)
    finally:
        await conn.close()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_optouts_from_before_scopes_become_marketing_ones(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The migration (SQLite 4 -> 5, PostgreSQL 1 -> 2) keeps what an opt-out meant before:
    marketing refused, transactional only where the account blocks it."""
    dsn = ""
    if backend == "postgres":
        dsn = await create_database(request.getfixturevalue("pg_server"))
        await _postgres_before_scopes(dsn)
    else:
        _sqlite_before_scopes(tmp_path / "smsagg.db")
    store: AnyStore = build_store(backend_config(backend, tmp_path, dsn))
    await store.open()
    try:
        assert await store.list_optouts("shop", None, 10) == [(XK_A, NOW, "mo:sim", "marketing")]
        assert await store.list_optout_removals("shop", None, 10) == [
            (XK_B, NOW, "api", NOW + 1, "api", "marketing")]
        assert await store.add_optout("shop", XK_A, "mo:sim", NOW + 2, "all")  # widened
        assert await store.optout_scope("shop", XK_A) == "all"
    finally:
        await store.close()

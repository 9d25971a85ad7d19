"""`smsagg store copy`: a SQLite store with messages in every state, copied into PostgreSQL by
the command, then served there by two instances to completion."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from aggregator.model import Message, MessageStatus
from aggregator.store.postgres import PostgresStore
from aggregator.store.sqlite import SqliteStore
from tests.helpers import DEADLINE, ROOT
from tests.store_helpers import NOW, PROVIDER, make_message, parts, receipt


async def smsagg(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aggregator", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    out, err = await asyncio.wait_for(proc.communicate(), DEADLINE)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def fill_sqlite(path: Path) -> dict[str, Message]:
    """A store holding one message in each state, both outboxes, opt-outs, keys, history."""
    store = SqliteStore(str(path))
    await store.open()
    m = {
        "waiting": make_message(next_attempt_at=NOW + 3600),
        "scheduled": make_message(status=MessageStatus.SCHEDULED, next_attempt_at=NOW + 1800),
        "queued": make_message(next_attempt_at=NOW - 2),
        "submitted": make_message(segments=2, next_attempt_at=NOW - 1),
        "delivered": make_message(callback_url="https://cb.example/h", next_attempt_at=NOW - 1),
        "failed": make_message(next_attempt_at=NOW - 1),
    }
    m["delivered"].receipt_mode = 1
    m["waiting"].message_class = "marketing"
    try:
        await store.accept(m["waiting"], "key-1")
        for name in ("scheduled", "submitted", "delivered", "failed"):
            await store.accept(m[name], None)
        claimed = await store.claim_due(NOW, 10)
        assert len(claimed) == 3
        await store.record_submitted(m["submitted"].id, PROVIDER,
                                     parts(m["submitted"], 1, 2), NOW)
        await store.record_submitted(m["delivered"].id, PROVIDER, parts(m["delivered"], 1), NOW)
        await store.apply_receipts([receipt(m["delivered"], 1, at=NOW + 5)])
        await store.finish(m["failed"].id, MessageStatus.FAILED, "no route", NOW + 1)
        await store.accept(m["queued"], None)
        assert [x.id for x in await store.claim_due(NOW, 10)] == [m["queued"].id]
        await store.enqueue_smpp_mo("shop", "+38344123456", "Shop", "STOP", NOW)
        await store.add_optout("shop", "+38344123456", "keyword", NOW, "all")
        await store.add_optout("shop", "+38344999999", "api", NOW)
        await store.remove_optout_logged("shop", "+38344999999", "api:shop", NOW + 1)
        await store.add_consent("shop", "+38344123456", "marketing", "web", NOW - 9, NOW)
    finally:
        await store.close()  # with "queued" claimed: a dispatcher that is gone
    return m


async def test_copy_round_trip_then_two_instances_finish_the_work(
        tmp_path: Path, pg_dsn: str) -> None:
    source = tmp_path / "smsagg.db"
    m = await fill_sqlite(source)

    rc, out, err = await smsagg("store", "copy", "--from", f"sqlite:{source}",
                                "--to", f"postgres:{pg_dsn}")
    assert rc == 0, err
    assert out.strip() == ("copied: messages 6, segments 3, idempotency 1, callbacks 1, "
                           "smpp_receipts 2, optouts 1, marketing_log 1, consents 1, "
                           "optout_removals 1")

    a = PostgresStore(pg_dsn, instance="a")
    b = PostgresStore(pg_dsn, instance="b")
    await a.open()
    await b.open()
    try:
        assert await a.count_by_status() == {
            "accepted": 2, "scheduled": 1, "submitted": 1, "delivered": 1, "failed": 1}
        stored = await a.get_message("shop", m["submitted"].id)
        assert stored is not None and stored.provider == PROVIDER and stored.attempts == 1
        assert [s[3] for s in await a.segments_of(m["submitted"].id)] == ["submitted"] * 2
        # Keys, opt-outs and frequency history came along.
        replay = await b.accept(make_message(created_at=NOW + 60), "key-1")
        assert not replay.created and replay.message.id == m["waiting"].id
        assert await b.optout_scope("shop", "+38344123456") == "all"
        assert await b.list_optout_removals("shop", None, 10) == [
            ("+38344999999", NOW, "api", NOW + 1, "api:shop", "marketing")]
        assert await b.has_consent("shop", "+38344123456", "marketing")
        assert await b.add_consent("shop", "+1", "all", "x", NOW, NOW) == 2  # after the copied
        assert await b.marketing_history("shop", m["waiting"].to, NOW - 1) == (1, NOW)
        # Both outboxes, and ids after the copied ones for new rows.
        [job] = await a.due_callbacks(NOW + 100, 10)
        assert job.message_id == m["delivered"].id
        kinds = [r.kind for r in await b.due_smpp_receipts("shop", NOW + 100, 10)]
        assert kinds == ["receipt", "mo"]
        await a.enqueue_callback("https://cb.example/new", "{}", NOW)
        assert len(await a.due_callbacks(NOW + 100, 10)) == 2

        # Two instances finish the work: what was queued or due is claimed once, by either.
        due = [*await a.claim_due(NOW + 3600, 1), *await b.claim_due(NOW + 3600, 10)]
        assert sorted(x.id for x in due) == sorted(
            m[n].id for n in ("waiting", "scheduled", "queued"))
        for x in due:
            await (a if x.id < m["queued"].id else b).record_submitted(
                x.id, PROVIDER, parts(x, 1), NOW + 3601)
        results = await b.apply_receipts(
            [receipt(m["submitted"], 1), receipt(m["submitted"], 2),
             *(receipt(x, 1) for x in due)])
        assert sum(r.final is not None for r in results) == 4
        assert await a.count_by_status() == {"delivered": 5, "failed": 1}
    finally:
        await a.close()
        await b.close()

    rc, _, err = await smsagg("store", "copy", "--from", f"sqlite:{source}",
                              "--to", f"postgres:{pg_dsn}")
    assert rc == 1 and "is not empty" in err and "--force" in err
    rc, out, err = await smsagg("store", "copy", "--from", f"sqlite:{source}",
                                "--to", f"postgres:{pg_dsn}", "--force")
    assert rc == 0, err
    check = PostgresStore(pg_dsn, instance="c")
    await check.open()
    try:
        assert await check.count_by_status() == {
            "accepted": 2, "scheduled": 1, "submitted": 1, "delivered": 1, "failed": 1}
    finally:
        await check.close()


async def test_copy_says_what_is_wrong_with_its_arguments(tmp_path: Path) -> None:
    rc, _, err = await smsagg("store", "copy", "--from", "mysql:x", "--to", "postgres:y")
    assert rc == 2 and "expected sqlite:PATH" in err
    rc, _, err = await smsagg("store", "copy", "--from", f"sqlite:{tmp_path}/none.db",
                              "--to", "postgres:postgresql://u:pw@127.0.0.1:1/x")
    assert rc == 1 and "no such SQLite store" in err

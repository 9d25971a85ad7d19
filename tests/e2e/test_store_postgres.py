"""The PostgreSQL store's cluster rules, with two store instances on one real server: claims
never overlap, leases renew while an instance lives and run out when it dies, idempotency
keys hold across instances, receipts apply wherever they arrive; and its open-time checks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from aggregator.config import ConfigError, parse_config
from aggregator.model import MessageStatus
from aggregator.store.base import StoreError
from aggregator.store.postgres import SCHEMA_VERSION, PostgresStore
from tests.helpers import DEADLINE, ROOT, free_port, registry_value, running
from tests.pg import create_database, start_or_skip
from tests.store_helpers import NOW, PROVIDER, make_message, parts, receipt, submitted

Opener = Callable[..., Any]


@pytest.fixture
async def instances(pg_dsn: str) -> AsyncIterator[Opener]:
    """Opens PostgresStores ("instances") on one database; closes them after the test."""
    opened: list[PostgresStore] = []

    async def open_one(name: str, lease: float = 10.0, **kw: Any) -> PostgresStore:
        s = PostgresStore(pg_dsn, instance=name, lease_seconds=lease, **kw)
        await s.open()
        opened.append(s)
        return s

    yield open_one
    for s in opened:
        await s.close()


async def until(check: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """Await `check()` until it gives something truthy, with a deadline."""
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return result


# ---- claims and leases ----------------------------------------------------------------------


async def test_two_instances_claiming_at_once_never_claim_one_message(
        instances: Opener) -> None:
    a, b = await instances("a"), await instances("b")
    messages = [make_message(next_attempt_at=NOW - 1) for _ in range(300)]
    await a.accept_many(messages)

    async def drain(store: PostgresStore) -> list[str]:
        got: list[str] = []
        while batch := await store.claim_due(NOW, 7):
            got += [m.id for m in batch]
        return got

    results = await asyncio.gather(drain(a), drain(b), drain(a), drain(b))
    claimed = [mid for r in results for mid in r]
    assert sorted(claimed) == sorted(m.id for m in messages)  # each exactly once
    assert all(results), "both instances claimed some"


async def test_expired_lease_returns_messages_to_another_instance(instances: Opener) -> None:
    dead = await instances("dead", lease=1.0)
    survivor = await instances("survivor", lease=1.0)
    messages = [make_message(next_attempt_at=NOW - 1) for _ in range(5)]
    await dead.accept_many(messages)
    assert len(await dead.claim_due(NOW, 10)) == 5
    await dead.close()  # as if killed: nothing released, no more renewals
    assert await survivor.claim_due(NOW, 10) == []  # still leased
    before = registry_value("smsagg_store_lease_takeovers_total")

    taken = await until(lambda: survivor.claim_due(NOW, 10), "the lease to run out")

    assert sorted(m.id for m in taken) == sorted(m.id for m in messages)
    assert registry_value("smsagg_store_lease_takeovers_total") - before == 5


async def test_live_instance_keeps_its_claims_by_renewing_leases(instances: Opener) -> None:
    holder = await instances("holder", lease=1.0)
    other = await instances("other", lease=1.0)
    m = make_message(next_attempt_at=NOW - 1)
    await holder.accept(m, None)
    assert len(await holder.claim_due(NOW, 10)) == 1

    await asyncio.sleep(2.5)  # two and a half leases: renewed every third of one

    assert await other.recover() == 0
    assert await other.claim_due(NOW, 10) == []
    await holder.record_submitted(m.id, PROVIDER, parts(m, 1), NOW + 1)
    assert await other.count_by_status() == {"submitted": 1}


async def test_restarted_instance_takes_back_its_own_claims_at_once(instances: Opener) -> None:
    first = await instances("a")
    other = await instances("b")
    await first.accept(make_message(next_attempt_at=NOW - 1), None)
    await other.accept(make_message(next_attempt_at=NOW - 1), None)
    assert len(await first.claim_due(NOW, 1)) == 1
    assert len(await other.claim_due(NOW, 1)) == 1
    await first.close()

    again = await instances("a")  # lease of 10 s not run out: its own claim comes back anyway

    assert len(await again.claim_due(NOW, 10)) == 1
    assert await again.count_by_status() == {"queued": 2}  # b's claim stays b's


async def test_instances_register_by_heartbeat_and_leave_on_close(instances: Opener) -> None:
    a = await instances("a", lease=1.0)
    b = await instances("b", lease=1.0)

    async def live(n: int) -> bool:
        await asyncio.sleep(0)
        return a.live_instances == n and registry_value("smsagg_store_live_instances") == n

    await until(lambda: live(2), "two live instances")
    await b.close()
    await until(lambda: live(1), "b to have left")


# ---- idempotency, receipts, outboxes across instances ------------------------------------------


async def test_one_idempotency_key_on_two_instances_at_once_creates_one_message(
        instances: Opener) -> None:
    a, b = await instances("a"), await instances("b")
    messages = [make_message() for _ in range(10)]

    results = await asyncio.gather(*(
        (a if i % 2 else b).accept(m, "order-1") for i, m in enumerate(messages)))

    created = [r for r in results if r.created]
    assert len(created) == 1
    assert {r.message.id for r in results} == {created[0].message.id}
    assert await a.count_by_status() == {"accepted": 1}


async def test_receipts_apply_on_whichever_instance_they_reach(instances: Opener) -> None:
    a, b = await instances("a"), await instances("b")
    messages = [make_message(segments=2, callback_url="https://cb.example/hook")
                for _ in range(20)]
    await a.accept_many(messages)
    assert len(await a.claim_due(NOW, 100)) == 20
    for m in messages:
        await a.record_submitted(m.id, PROVIDER, parts(m, 1, 2), NOW + 1)

    # Each message's two receipts reach the two instances at the same moment.
    results = await asyncio.gather(*(
        store.apply_receipts([receipt(m, seq)])
        for m in messages for store, seq in ((b, 1), (a, 2))))

    assert all(r.matched for batch in results for r in batch)
    finals = [r.final for batch in results for r in batch if r.final is not None]
    assert sorted(f.message_id for f in finals) == sorted(m.id for m in messages)
    assert all(f.status is MessageStatus.DELIVERED for f in finals)
    assert await b.count_by_status() == {"delivered": 20}
    assert len(await b.due_callbacks(NOW + 100, 100)) == 20


async def test_outbox_held_by_a_live_instance_is_not_sent_by_another(instances: Opener) -> None:
    a = await instances("a", lease=1.0)
    b = await instances("b", lease=1.0)
    await a.enqueue_callback("https://cb.example/1", "{}", NOW)
    m = make_message()
    m.receipt_mode = 1
    await submitted(a, m)
    await a.apply_receipts([receipt(m, 1)])

    [job] = await a.due_callbacks(NOW + 100, 10)
    [dlr] = await a.due_smpp_receipts("shop", NOW + 100, 10)
    assert await a.due_callbacks(NOW + 100, 10) == [job]  # its own: as SQLite answers
    assert await b.due_callbacks(NOW + 100, 10) == []
    assert await b.due_smpp_receipts("shop", NOW + 100, 10) == []

    await a.smpp_receipt_retry(dlr.id, NOW + 100, give_up=False)  # released: bound elsewhere?
    [again] = await b.due_smpp_receipts("shop", NOW + 100, 10)
    assert (again.id, again.attempts) == (dlr.id, 1)

    await a.close()  # dies holding the callback
    [taken] = await until(lambda: b.due_callbacks(NOW + 100, 10), "the callback lease to end")
    assert taken.id == job.id


async def test_an_accept_on_one_instance_wakes_the_others(instances: Opener) -> None:
    woken = asyncio.Event()
    await instances("b", on_accepted=woken.set)
    a = await instances("a")
    woken.clear()

    await a.accept(make_message(), None)

    await asyncio.wait_for(woken.wait(), DEADLINE)


async def test_store_rides_out_a_database_restart_without_reopening() -> None:
    server = start_or_skip()  # its own: this test stops it
    try:
        dsn = await create_database(server)
        woken = asyncio.Event()
        a = PostgresStore(dsn, instance="a", lease_seconds=1.0, on_accepted=woken.set)
        b = PostgresStore(dsn, instance="b")
        await a.open()
        await b.open()
        try:
            await a.accept(make_message(), None)
            await asyncio.to_thread(server.stop)

            with pytest.raises(StoreError):  # at once, not after a hang
                await asyncio.wait_for(a.accept(make_message(), None), 10)
            assert a.write_failure() is not None  # readiness fails meanwhile

            await asyncio.to_thread(server.resume)
            await until(lambda: _accepts(a), "accepts to work again")
            assert a.write_failure() is None
            woken.clear()

            async def b_accepts_and_a_hears() -> bool:
                accepted = await _accepts(b)
                await asyncio.sleep(0.05)  # its NOTIFY
                return accepted and woken.is_set()

            await until(b_accepts_and_a_hears, "a to hear b's accepts again")
            counts = await a.count_by_status()
            assert counts["accepted"] >= 3 and list(counts) == ["accepted"]  # nothing lost
        finally:
            await a.close()
            await b.close()
    finally:
        with contextlib.suppress(RuntimeError):  # not running: the test failed while down
            server.stop("immediate")
        shutil.rmtree(server.root, ignore_errors=True)


async def _accepts(store: PostgresStore) -> bool:
    try:
        await store.accept(make_message(), None)
    except StoreError:
        return False
    return True


async def test_an_outbox_entry_on_one_instance_wakes_the_others(instances: Opener) -> None:
    heard: list[str | None] = []
    both = asyncio.Event()

    def on_outbox(account: str | None) -> None:
        heard.append(account)
        if None in heard and "shop" in heard:
            both.set()

    await instances("b", on_outbox=on_outbox)
    a = await instances("a")

    await a.enqueue_callback("https://cb.example/mo", "{}", NOW)
    await a.enqueue_smpp_mo("shop", "+38344123456", "Shop", "hi", NOW)

    await asyncio.wait_for(both.wait(), DEADLINE)


# ---- open-time checks ---------------------------------------------------------------------------


async def test_instances_opening_a_new_database_at_once_migrate_it_once(
        instances: Opener, pg_dsn: str) -> None:
    stores = await asyncio.gather(*(instances(f"i{n}") for n in range(4)))

    assert all(s.pending == 0 for s in stores)
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetch("SELECT version FROM smsagg_schema") == [(SCHEMA_VERSION,)]
    finally:
        await conn.close()


async def test_newer_schema_is_refused(instances: Opener, pg_dsn: str) -> None:
    await (await instances("a")).close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("UPDATE smsagg_schema SET version = 99")
    finally:
        await conn.close()

    with pytest.raises(StoreError, match=r"schema version 99 is newer"):
        await instances("a")


async def test_a_database_of_something_else_is_refused(instances: Opener, pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("CREATE TABLE invoices (id INT)")
    finally:
        await conn.close()

    with pytest.raises(StoreError, match="not an smsagg database"):
        await instances("a")


async def test_unreachable_server_is_one_line_without_the_password() -> None:
    dsn = f"postgresql://smsagg:s3cret-pw@127.0.0.1:{free_port()}/smsagg?sslmode=disable"
    store = PostgresStore(dsn, instance="a")

    with pytest.raises(StoreError) as caught:
        await store.open()

    text = str(caught.value)
    assert "\n" not in text and "s3cret-pw" not in text and "sslmode" not in text
    assert "postgresql://smsagg@127.0.0.1:" in text and "cannot connect" in text


async def test_daemon_with_an_unreachable_database_exits_1_saying_why(tmp_path: Path) -> None:
    config = tmp_path / "smsagg.toml"
    config.write_text("""
[store]
backend = "postgres"
dsn_env = "TEST_DSN"
[[accounts]]
name = "shop"
api_key = "k"
[[providers]]
name = "sim"
host = "127.0.0.1"
port = 1
system_id = "x"
password = "pw"
binds = 1
window = 1
max_tps = 1
[[routes]]
prefixes = ["*"]
providers = ["sim"]
""")
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "TEST_DSN": f"postgresql://u:s3cret-pw@127.0.0.1:{free_port()}/db"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aggregator", "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), DEADLINE)

    assert proc.returncode == 1
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smsagg: cannot start: PostgreSQL store")
    assert b"s3cret-pw" not in out + err


# ---- configuration --------------------------------------------------------------------------


BASE: dict[str, Any] = {
    "accounts": [{"name": "shop", "api_key": "k"}],
    "providers": [{"name": "sim", "host": "127.0.0.1", "port": 1, "system_id": "x",
                   "password": "pw", "binds": 1, "window": 1, "max_tps": 1}],
    "routes": [{"prefixes": ["*"], "providers": ["sim"]}],
}


def store_config(store: dict[str, Any], env: dict[str, str] | None = None,
                 **sections: Any) -> Any:
    return parse_config({**BASE, "store": store, **sections}, "<test>", env or {})


def problems(store: dict[str, Any], env: dict[str, str] | None = None,
             **sections: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        store_config(store, env, **sections)
    return caught.value.problems


def test_store_backend_keys_and_defaults() -> None:
    config = store_config({})
    assert (config.store.backend, config.store.pool_size, config.store.lease_seconds) == (
        "sqlite", 10, 10.0)
    assert config.instance.name  # the host name

    config = store_config({"backend": "postgres", "dsn_env": "DSN", "pool_size": 4,
                           "lease_seconds": 5}, {"DSN": "postgresql://u:pw@db/x"},
                          instance={"name": "a"})
    assert (config.store.dsn, config.store.pool_size, config.instance.name) == (
        "postgresql://u:pw@db/x", 4, "a")
    assert "pw" not in repr(config.store)


def test_store_backend_problems_are_named_and_never_show_the_dsn() -> None:
    assert problems({"backend": "mysql"}) == [
        "<test>: store.backend: must be one of 'sqlite', 'postgres', got 'mysql'"]
    assert problems({"backend": "postgres"}) == [
        '<test>: store.backend: backend = "postgres" needs dsn or dsn_env']
    assert problems({"backend": "postgres", "dsn_env": "NOPE"}) == [
        "<test>: store.dsn_env: environment variable 'NOPE' is not set"]
    bad = problems({"backend": "postgres", "dsn": "mysql://u:s3cret@h/db"})
    assert bad == ["<test>: store.dsn: must be a PostgreSQL URL (postgresql://user@host:port/db)"]
    assert problems({"dsn": "postgresql://h/db", "dsn_env": "X"}) == [
        "<test>: store.dsn_env: conflicts with dsn: give one of dsn, dsn_env"]
    assert problems({"pool_size": 0, "lease_seconds": 0.5}) == [
        "<test>: store.pool_size: must be an integer >= 1, got 0",
        "<test>: store.lease_seconds: must be a number >= 1, got 0.5"]
    assert problems({}, instance={"name": ""}) == [
        "<test>: instance.name: must be 1 to 64 printable characters, got ''"]


# ---- the daemon on PostgreSQL -----------------------------------------------------------------


async def test_daemon_on_postgres_relays_messages_with_receipts(
        tmp_path: Path, pg_dsn: str) -> None:
    async with running(tmp_path, store_opts={"backend": "postgres", "dsn": pg_dsn}) as r:
        ids = []
        for i in range(20):
            status, body = await r.post({"to": "+38344123456", "from": "Shop",
                                         "text": f"hello {i}"})
            assert status == 202, body
            ids.append(body["id"])
        for mid in ids:
            await r.wait_status(mid, {"delivered"})
        ready, why = r.app.readiness()
        assert ready, why


async def test_daemon_answers_503_while_the_database_is_down_then_recovers(
        tmp_path: Path) -> None:
    server = start_or_skip()  # its own: this test stops it
    try:
        dsn = await create_database(server)
        store = {"backend": "postgres", "dsn": dsn, "lease_seconds": 1}
        async with running(tmp_path, store_opts=store) as r:
            body = {"to": "+38344123456", "from": "Shop", "text": "hello"}
            status, first = await r.post(body)
            assert status == 202, first
            await asyncio.to_thread(server.stop)

            status, refused = await r.post(body)
            assert status == 503 and refused["error"]["code"] == "store_unavailable"
            assert "127.0.0.1" not in refused["error"]["message"]  # not where the server is
            async with r.http.get(f"{r.base}/readyz") as resp:
                assert resp.status == 503
                assert any("store" in p for p in (await resp.json())["problems"])

            await asyncio.to_thread(server.resume)

            async def accepted() -> str | None:
                status, answer = await r.post(body)
                return answer["id"] if status == 202 else None

            later = await until(accepted, "accepts after the restart")
            for mid in (first["id"], later):
                await r.wait_status(mid, {"delivered"})

            async def ready() -> bool:
                async with r.http.get(f"{r.base}/readyz") as resp:
                    return resp.status == 200

            await until(ready, "ready again")
    finally:
        with contextlib.suppress(RuntimeError):  # not running: the test failed while down
            server.stop("immediate")
        shutil.rmtree(server.root, ignore_errors=True)

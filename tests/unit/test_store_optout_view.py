"""The SQLite store's in-memory opt-outs (store/optout_view.py): the accept-time check answers
from memory, and never misses an opt-out that was acknowledged before it, whoever wrote it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aggregator import metrics
from aggregator.store import optout_view
from aggregator.store.sqlite import SqliteStore
from tests.store_helpers import NOW, opened_sqlite

ACCOUNT = "shop"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with opened_sqlite(tmp_path / "smsagg.db") as s:
        yield s


def _count(how: str) -> float:
    return metrics.REGISTRY.get_sample_value("smsagg_store_optout_view_total", {"how": how}) or 0.0


async def _warm(store: SqliteStore) -> None:
    """Check until the copy is read and current (it is read after some checks missed it)."""
    deadline = time.monotonic() + 5
    while True:
        before = _count("view")
        await store.optout_scope(ACCOUNT, "+38344000000")
        if _count("view") > before:
            return
        assert time.monotonic() < deadline, "the opt-out copy never became current"
        await asyncio.sleep(0.001)


async def test_checks_answer_from_memory_once_the_copy_is_read(store: SqliteStore) -> None:
    await store.add_optout(ACCOUNT, "+38344111111", "api", NOW, "all")
    await _warm(store)
    views, reads = _count("view"), _count("read")
    for _ in range(50):
        assert await store.optout_scope(ACCOUNT, "+38344111111") == "all"
        assert await store.optout_scope(ACCOUNT, "+38344222222") is None
        assert await store.optout_scope("other", "+38344111111") is None
    assert _count("view") - views == 150
    assert _count("read") == reads


async def test_an_opt_out_is_seen_by_the_next_check(store: SqliteStore) -> None:
    await _warm(store)
    number = "+38344333333"
    assert await store.optout_scope(ACCOUNT, number) is None
    await store.add_optout(ACCOUNT, number, "mo", NOW)
    assert await store.optout_scope(ACCOUNT, number) == "marketing"
    await store.add_optout(ACCOUNT, number, "mo", NOW, "all")  # widened
    assert await store.optout_scope(ACCOUNT, number) == "all"
    assert await store.remove_optout(ACCOUNT, number)
    assert await store.optout_scope(ACCOUNT, number) is None
    await store.add_optout(ACCOUNT, number, "mo", NOW)
    assert await store.remove_optout_logged(ACCOUNT, number, "admin", NOW)
    assert await store.optout_scope(ACCOUNT, number) is None


async def test_checks_after_a_change_go_to_sqlite_until_the_copy_is_read_again(
    store: SqliteStore,
) -> None:
    await _warm(store)
    await store.add_optout(ACCOUNT, "+38344444444", "api", NOW)
    reads = _count("read")
    assert await store.optout_scope(ACCOUNT, "+38344444444") == "marketing"
    assert _count("read") - reads == 1
    await _warm(store)  # read again, and current
    views = _count("view")
    assert await store.optout_scope(ACCOUNT, "+38344444444") == "marketing"
    assert _count("view") - views == 1


async def test_a_workers_opt_out_is_seen_by_the_daemons_next_check(
    store: SqliteStore, tmp_path: Path,
) -> None:
    """The worker's write goes straight to the writer process: the daemon's copy learns of it
    through the shared count, before the worker hears that it is done."""
    await _warm(store)
    assert store.writer_address is not None
    worker = SqliteStore(str(tmp_path / "smsagg.db"), join=store.writer_address)
    await worker.open()
    try:
        await _warm(worker)
        for i in range(20):
            number = f"+383445{i:05d}"
            await worker.add_optout(ACCOUNT, number, "api", NOW, "all")
            assert await store.optout_scope(ACCOUNT, number) == "all"
            await store.add_optout(ACCOUNT, number + "9", "api", NOW)
            assert await worker.optout_scope(ACCOUNT, number + "9") == "marketing"
    finally:
        await worker.close()


async def test_send_time_screen_answers_from_the_copy(store: SqliteStore) -> None:
    await store.add_optout(ACCOUNT, "+38344666666", "api", NOW, "all")
    await _warm(store)
    keys = [(ACCOUNT, "+38344666666"), (ACCOUNT, "+38344777777")]
    assert await store.send_rules_state(keys, [], NOW) == ({keys[0]: "all"}, {})
    await store.add_optout(ACCOUNT, "+38344777777", "api", NOW)
    assert await store.send_rules_state(keys, [], NOW) == (
        {keys[0]: "all", keys[1]: "marketing"}, {})


async def test_a_table_too_big_to_copy_is_read_each_time(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(optout_view, "MAX_ROWS", 3)
    for i in range(4):
        await store.add_optout(ACCOUNT, f"+3834488888{i}", "api", NOW)
    views, rebuilds = _count("view"), _count("rebuild")
    for _ in range(200):
        assert await store.optout_scope(ACCOUNT, "+383448888803") is None
        assert await store.optout_scope(ACCOUNT, "+38344888883") == "marketing"
        await asyncio.sleep(0)
    assert _count("view") == views
    assert _count("rebuild") == rebuilds


async def test_send_time_checks_alone_bring_the_copy_in(store: SqliteStore) -> None:
    """A daemon whose ingress workers make every accept checks opt-outs only at send time:
    those checks must bring the copy in too, and then answer from it."""
    await store.add_optout(ACCOUNT, "+38344555555", "api", NOW, "all")
    keys = [(ACCOUNT, "+38344555555"), (ACCOUNT, "+38344444444")]
    rebuilds = _count("rebuild")
    deadline = time.monotonic() + 5
    while True:
        views = _count("view")
        assert await store.send_rules_state(keys, [], NOW) == ({keys[0]: "all"}, {})
        if _count("view") > views:
            break
        assert time.monotonic() < deadline, "send-time checks never read the copy"
        await asyncio.sleep(0.001)
    assert _count("rebuild") > rebuilds

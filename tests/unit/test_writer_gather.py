"""Commit gathering in the writer process (writer_process.GATHER_S): accepts arriving one by one
a fraction of a millisecond apart share commits. A benchmark-style guard: on a loaded machine
commits only get fewer, so it can pass there without gathering; on a quiet one it cannot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aggregator.store.sqlite import SqliteStore
from tests.store_helpers import make_message, opened_sqlite


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with opened_sqlite(tmp_path / "smsagg.db") as s:
        yield s


async def test_paced_accepts_share_commits(store: SqliteStore) -> None:
    """200 accepts, one every 0.25 ms, none waiting for the one before: without gathering a
    quiet machine commits nearly each alone (a commit is about as long as the gap)."""
    before = store.commits
    tasks = []
    for _ in range(200):
        tasks.append(asyncio.ensure_future(store.accept(make_message(), None)))
        await asyncio.sleep(0.00025)
    results = await asyncio.gather(*tasks)
    assert all(r.created for r in results)
    assert store.commits - before <= 120


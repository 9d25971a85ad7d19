"""A real PostgreSQL server for the tests: Debian's binaries, initdb in a temporary directory
as an unprivileged user (initdb refuses root), a free loopback port, the unix socket in that
directory, fsync on. One server per test session; `pg_dsn` gives each test a fresh database.

Without the binaries the tests that need them skip, saying why; with CI=true they fail instead
(.ci/run installs the `postgresql` package)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from aggregator.store.postgres import PostgresStore

# The server itself lives in the simulator package (the bench starts one too).
from simulator.pgserver import PgServer, start_server
from simulator.pgserver import create_database as _create_database

__all__ = ["PgServer", "create_database", "opened_postgres", "pg_dsn", "pg_server",
           "start_or_skip", "start_server"]


def start_or_skip() -> PgServer:
    """start_server(), or skip the test saying why (fail it under CI=true)."""
    try:
        return start_server()
    except (FileNotFoundError, KeyError) as exc:
        reason = f"no PostgreSQL server to test with: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + " (CI=true: not skipping)")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server; skipped (failed under CI=true) without binaries."""
    server = start_or_skip()
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop("immediate")  # a throw-away cluster: no shutdown checkpoint
        shutil.rmtree(server.root, ignore_errors=True)


async def create_database(server: PgServer) -> str:
    """A fresh empty database on `server`; its DSN."""
    return await _create_database(server.admin_dsn)


@pytest.fixture
async def pg_dsn(pg_server: PgServer) -> AsyncIterator[str]:
    """A DSN of a new, empty database for this test."""
    yield await create_database(pg_server)


@contextlib.asynccontextmanager
async def opened_postgres(dsn: str, instance: str = "a",
                          **options: Any) -> AsyncIterator[PostgresStore]:
    """A PostgresStore on `dsn` (options as its constructor's), open, closed at the end."""
    store = PostgresStore(dsn, instance=instance, **options)
    await store.open()
    try:
        yield store
    finally:
        await store.close()

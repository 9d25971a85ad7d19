"""Store faults (issue 8): a full disk, a locked or read-only database refuse accepts with 503 /
ESME_RSYSERR, lose nothing acknowledged, and recover with no restart; versioned migrations; a
corrupt or newer-schema file is refused at start, by the store and by `smsagg run`."""

from __future__ import annotations

import asyncio
import hashlib
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiosmpplib import NPI, TON, PhoneNumber, SubmitSm

from aggregator import metrics
from aggregator.model import MessageStatus
from aggregator.smpp.session import BindMode
from aggregator.smpp.transport import SmppConnection, open_client
from aggregator.store import sqlite_schema, sqlite_writer
from aggregator.store.base import StoreError
from aggregator.store.rows import message_row
from aggregator.store.sqlite import SqliteStore
from aggregator.store.sqlite_schema import MIGRATIONS, SCHEMA_VERSION
from aggregator.store.writes import BUSY_TIMEOUT, INSERT_MESSAGE
from tests.helpers import AUTH, DEADLINE, Running, running, wait_for
from tests.store_helpers import NOW, make_message

MOBILE = "+38344123456"
SHOP = {"system_id": "shop", "password": "secret"}
ESME_ROK = 0x00
ESME_RSYSERR = 0x08
# 8 GSM-7 segments. A row this long does not fit in its b-tree page, so storing it always takes
# a new (overflow) page: with the database held at its size, that write fails with SQLITE_FULL.
LONG = "x" * 1200
TABLES = {"messages", "segments", "idempotency", "callbacks", "smpp_receipts", "optouts",
          "marketing_log", "consents", "optout_removals"}  # the last two: schema 2
REPO = Path(__file__).resolve().parents[2]


# ---- fault switches, run on the store's writer connection between transactions -----------------


# The faults below are made on the writer process's own connection, between transactions
# (run_on_writer's "pragma" tool).


async def disk_full(store: SqliteStore) -> int:
    """The database may not grow past its size now (PRAGMA max_page_count), as on a full disk."""
    # No free page to reuse: every write that needs a page must grow the file, and fails.
    assert await store.run_on_writer("pragma", "freelist_count", None) == 0
    size = await store.run_on_writer("pragma", "page_count", None)
    limit: int = await store.run_on_writer("pragma", "max_page_count", size)
    return limit


async def disk_freed(store: SqliteStore) -> None:
    await store.run_on_writer("pragma", "max_page_count", 1073741823)


async def read_only(store: SqliteStore) -> None:
    """Writes fail with SQLITE_READONLY ("attempt to write a readonly database"), as on a file
    that became unwritable (chmod cannot make one for root, which the tests may run as)."""
    await store.run_on_writer("pragma", "query_only", 1)


async def writable(store: SqliteStore) -> None:
    await store.run_on_writer("pragma", "query_only", 0)


@contextmanager
def locked(path: Path) -> Iterator[sqlite3.Connection]:
    """Another process holds the write lock (BEGIN EXCLUSIVE) until the block ends."""
    blocker = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        yield blocker
        blocker.execute("ROLLBACK")
    finally:
        blocker.close()


def store_errors(op: str) -> float:
    return metrics.REGISTRY.get_sample_value("smsagg_store_errors_total", {"op": op}) or 0.0


# ---- the store alone ----------------------------------------------------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "smsagg.db"


@asynccontextmanager
async def opened(path: Path, **kwargs: Any) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(str(path), **kwargs)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def long_message() -> Any:
    m = make_message()
    m.text = LONG
    return m


async def test_full_disk_fails_writes_keeps_what_was_committed_and_recovers(db_path: Path) -> None:
    async with opened(db_path) as store:
        kept = [make_message() for _ in range(20)]
        for m in kept:
            await store.accept(m, None)
        assert store.write_failure() is None

        await disk_full(store)
        with pytest.raises(StoreError, match="full"):
            await store.accept(long_message(), None)
        with pytest.raises(StoreError, match="full"):
            await store.accept_many([long_message(), make_message()])  # all or nothing
        failure = store.write_failure()
        assert failure is not None and "full" in failure
        assert store.write_errors >= 2
        assert store.pending == 20
        assert await store.count_by_status() == {"accepted": 20}

        await disk_freed(store)
        late = long_message()
        assert (await store.accept(late, None)).created
        assert store.write_failure() is None
        stored = await store.get_message("shop", late.id)
        assert stored is not None and stored.text == LONG
        for m in kept:
            assert await store.get_message("shop", m.id) is not None
        assert await store.count_by_status() == {"accepted": 21}


async def test_locked_database_fails_writes_after_the_busy_timeout_then_recovers(
    db_path: Path,
) -> None:
    async with opened(db_path, busy_timeout=0.2) as store:
        before = make_message()
        await store.accept(before, None)
        with locked(db_path):
            started = time.monotonic()
            with pytest.raises(StoreError, match="locked"):
                await store.accept(make_message(), None)
            assert time.monotonic() - started < 2.0  # the busy timeout, not 5 s or forever
            failure = store.write_failure()
            assert failure is not None and "locked" in failure
            assert await store.get_message("shop", before.id) is not None  # reads go on (WAL)
        after = make_message()
        assert (await store.accept(after, None)).created
        assert store.write_failure() is None
        assert await store.count_by_status() == {"accepted": 2}


async def test_default_busy_timeout_is_a_few_seconds_at_most(db_path: Path) -> None:
    async with opened(db_path) as store:
        ms = await store.run_on_writer("pragma", "busy_timeout", None)
    assert 0 < ms <= 3000
    assert ms == BUSY_TIMEOUT * 1000


async def test_read_only_database_fails_writes_then_recovers(db_path: Path) -> None:
    async with opened(db_path) as store:
        await read_only(store)
        with pytest.raises(StoreError, match="readonly"):
            await store.accept(make_message(), None)
        with pytest.raises(StoreError, match="readonly"):
            await store.claim_due(NOW, 10)
        assert store.write_failure() is not None
        await writable(store)
        assert (await store.accept(make_message(), None)).created
        assert store.write_failure() is None


async def test_write_failure_is_forgotten_once_old(db_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Readiness looks at recent failures only: with no write since, an old one is not news."""
    async with opened(db_path) as store:
        await read_only(store)
        with pytest.raises(StoreError):
            await store.accept(make_message(), None)
        assert store.write_failure() is not None
        monkeypatch.setattr(sqlite_writer, "WRITE_FAILURE_WINDOW", 0.0)
        assert store.write_failure() is None
        await writable(store)


# ---- end to end: HTTP, SMPP, readiness, metrics, delivery ------------------------------------


async def post(r: Running, path: str, body: Any) -> tuple[int, dict[str, str], dict[str, Any]]:
    async with r.http.post(f"{r.base}{path}", headers=AUTH, json=body) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def readyz(r: Running) -> tuple[int, dict[str, Any]]:
    async with r.http.get(f"{r.base}/readyz") as resp:
        return resp.status, await resp.json()


async def upstream(r: Running) -> SmppConnection:
    assert r.app.smpp is not None
    return await open_client("127.0.0.1", r.app.smpp.port, mode=BindMode.TRANSCEIVER,
                             system_id="shop", password="secret", window=20)


async def smpp_submit(conn: SmppConnection, text: str) -> Any:
    pdu = SubmitSm(
        short_message="", message_payload=text,
        source=PhoneNumber("ACME", TON.ALPHANUMERIC, NPI.UNKNOWN),
        destination=PhoneNumber(MOBILE.lstrip("+"), TON.INTERNATIONAL, NPI.ISDN),
        esm_class=0, registered_delivery=0, encoding=None, optional_params=[],
    )
    return await asyncio.wait_for(conn.request(pdu), DEADLINE)


def message(text: str = "hello") -> dict[str, str]:
    return {"to": MOBILE, "from": "ACME", "text": text}


async def accept_then_strike(r: Running, n: int, strike: Callable[[], Awaitable[object]],
                             monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """n messages acknowledged in one batch and handed to the SMSC; the fault strikes just
    before the first of their outcomes (submit_sm_resp) is written, so every outcome and every
    receipt of these messages meets it, however slow this machine is."""
    store = r.app.store
    record = store.record_submitted
    struck = asyncio.Event()

    async def record_submitted(*args: Any, **kwargs: Any) -> None:
        if not struck.is_set():
            await strike()
            struck.set()
        await record(*args, **kwargs)

    monkeypatch.setattr(store, "record_submitted", record_submitted)
    status, _, body = await post(r, "/v1/messages/batch",
                                 {"messages": [message(f"before {i}") for i in range(n)]})
    assert status == 200
    acked = [res["id"] for res in body["results"] if res["status"] == 202]
    assert len(acked) == n
    await asyncio.wait_for(struck.wait(), DEADLINE)
    return acked


async def outcomes_and_receipts_held(r: Running, acked: list[str], dispatch_errors: float) -> None:
    """While the fault lasts the submitted messages stay 'queued' (their outcome is retried)
    and the SMSC's receipts for them are not acknowledged."""
    n = len(acked)
    await wait_for(lambda: r.smsc.receipts_sent >= n, what="the SMSC to send its receipts")
    await wait_for(lambda: store_errors("dispatch") - dispatch_errors >= n,
                   what="each outcome write to fail")
    assert r.smsc.receipts_acked == 0
    for message_id in acked:
        _, view = await r.get(message_id)  # reads go on (WAL)
        assert view["status"] == MessageStatus.QUEUED.value


async def refused_while_faulted(r: Running, conn: SmppConnection, error: str) -> None:
    """Single and batch accepts get 503 store_unavailable with Retry-After, and submit_sm gets
    ESME_RSYSERR; each is counted in smsagg_store_errors_total."""
    counted = store_errors("accept")
    single, batch, resp = await asyncio.gather(
        post(r, "/v1/messages", message(LONG)),
        post(r, "/v1/messages/batch", {"messages": [message(LONG), message(LONG)]}),
        smpp_submit(conn, LONG),
    )
    for status, headers, body in (single, batch):
        assert status == 503, body
        assert body["error"]["code"] == "store_unavailable"
        assert error in body["error"]["message"]
        assert int(headers["Retry-After"]) >= 1
    assert int(resp.command_status) == ESME_RSYSERR
    assert store_errors("accept") - counted >= 3


async def accepted_after_recovery(r: Running, conn: SmppConnection) -> list[str]:
    status, _, body = await post(r, "/v1/messages", message(LONG))
    assert status == 202, body
    status, _, batch = await post(r, "/v1/messages/batch", {"messages": [message(LONG)]})
    assert status == 200 and batch["results"][0]["status"] == 202
    resp = await smpp_submit(conn, LONG)
    assert int(resp.command_status) == ESME_ROK
    return [body["id"], batch["results"][0]["id"], resp.message_id]


async def all_delivered(r: Running, acked: list[str]) -> None:
    """Every acknowledged message is delivered, and nothing else was stored."""
    for message_id in acked:
        await r.wait_status(message_id, {"delivered"})
    assert await r.app.store.count_by_status() == {"delivered": len(acked)}
    assert r.smsc.receipts_failed == 0


async def test_full_disk_refuses_accepts_and_recovers_losing_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, smpp={}, shop=SHOP) as r:
        conn = await upstream(r)
        store = r.app.store
        acked = await accept_then_strike(r, 5, lambda: disk_full(store),
                                         monkeypatch)

        await refused_while_faulted(r, conn, "full")
        # (Neither readiness nor held outcomes are asserted: writes that need no new page,
        # like most outcomes, still succeed on a full disk.)

        await disk_freed(store)
        acked += await accepted_after_recovery(r, conn)
        await all_delivered(r, acked)
        conn.close()


async def test_locked_database_refuses_accepts_quickly_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(tmp_path, smpp={}, shop=SHOP) as r:
        conn = await upstream(r)
        dispatch_errors = store_errors("dispatch")
        blocker = sqlite3.connect(tmp_path / "smsagg.db", isolation_level=None, timeout=10.0)

        async def lock() -> None:  # another process takes the write lock and keeps it
            blocker.execute("BEGIN EXCLUSIVE")

        try:
            acked = await accept_then_strike(r, 3, lock, monkeypatch)
            started = time.monotonic()
            await refused_while_faulted(r, conn, "locked")
            # Waits for the lock are bounded by the busy timeout (behind at most a few groups).
            assert time.monotonic() - started < 4 * BUSY_TIMEOUT
            status, ready = await readyz(r)
            assert status == 503
            assert any("store is failing writes" in p for p in ready["problems"])
            await outcomes_and_receipts_held(r, acked, dispatch_errors)
            blocker.execute("ROLLBACK")
        finally:
            blocker.close()

        await wait_for(lambda: r.app.store.write_failure() is None, what="a write to succeed")
        status, _ = await readyz(r)
        assert status == 200
        acked += await accepted_after_recovery(r, conn)
        await all_delivered(r, acked)
        conn.close()


async def test_read_only_database_holds_outcomes_and_receipts_until_writable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The submits' outcomes cannot be written: the dispatcher keeps trying, and the SMSC's
    receipts are not acknowledged meanwhile (they wait for the outcome). Once writable, all
    is recorded and every message delivered, with no restart."""
    async with running(tmp_path, smpp={}, shop=SHOP) as r:
        conn = await upstream(r)
        store = r.app.store
        dispatch_errors = store_errors("dispatch")
        acked = await accept_then_strike(r, 5, lambda: read_only(store),
                                         monkeypatch)

        await refused_while_faulted(r, conn, "readonly")
        status, ready = await readyz(r)
        assert status == 503
        assert any("readonly" in p for p in ready["problems"])
        await outcomes_and_receipts_held(r, acked, dispatch_errors)

        await writable(store)
        acked += await accepted_after_recovery(r, conn)
        await all_delivered(r, acked)
        await wait_for(lambda: r.smsc.receipts_acked >= 5, what="the receipts to be acked")
        status, _ = await readyz(r)
        assert status == 200
        conn.close()


# ---- migrations -------------------------------------------------------------------------------

# The version-1 schema as released, frozen by its digest: MIGRATIONS[0] must never change (a
# change is a new step), or databases created by earlier releases would differ from new ones.
FROZEN_V1_SHA256 = "33a6796b5ed8a997c8594751dd09b96e35076d13dec209273378213f57b00d78"
STEP_2 = """
    ALTER TABLE messages ADD COLUMN note TEXT;
    CREATE TABLE extra (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID
"""
STEP_3 = "CREATE INDEX extra_by_v ON extra (v)"
BROKEN_STEP = "CREATE TABLE half_done (x TEXT); ALTER TABLE no_such_table ADD COLUMN y TEXT"


def with_steps(monkeypatch: pytest.MonkeyPatch, *steps: str) -> None:
    """Pretend a later release added migration steps."""
    monkeypatch.setattr(sqlite_schema, "MIGRATIONS", [*MIGRATIONS, *steps])
    monkeypatch.setattr(sqlite_schema, "SCHEMA_VERSION", len(MIGRATIONS) + len(steps))


def sql(path: Path, query: str) -> list[Any]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def user_version(path: Path) -> int:
    version: int = sql(path, "PRAGMA user_version")[0][0]
    return version


def schema(path: Path) -> dict[str, str]:
    return dict(sql(path, "SELECT name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))


def columns(path: Path, table: str) -> list[str]:
    return [r[1] for r in sql(path, f"PRAGMA table_info({table})")]


def assert_not_locked(path: Path) -> None:
    """Nothing (a connection left open by a failed open) holds a lock on the file."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.DatabaseError as exc:  # not a database at all is fine; locked is not
        assert "locked" not in str(exc)
    finally:
        conn.close()


async def store_with_rows(path: Path, n: int = 3) -> list[str]:
    """A database written by this release, with messages and an opt-out in it."""
    async with opened(path) as store:
        messages = [make_message() for _ in range(n)]
        await store.accept_many(messages)
        await store.add_optout("shop", MOBILE, "api", NOW)
    return [m.id for m in messages]


async def assert_rows_kept(path: Path, ids: list[str]) -> None:
    async with opened(path) as store:
        for message_id in ids:
            m = await store.get_message("shop", message_id)
            assert m is not None and m.text == "hello"
        assert [n for n, *_ in await store.list_optouts("shop", None, 10)] == [MOBILE]
        pending = store.pending
        assert pending >= len(ids)
        assert (await store.accept(make_message(), None)).created  # and it takes writes
        assert store.pending == pending + 1


def test_schema_version_counts_the_migrations() -> None:
    assert len(MIGRATIONS) == SCHEMA_VERSION


@pytest.mark.parametrize("existing", [False, True], ids=["no_file", "empty_file"])
async def test_empty_database_migrates_to_the_current_version_with_every_table(
    tmp_path: Path, existing: bool
) -> None:
    path = tmp_path / "new" / "smsagg.db"
    if existing:
        path.parent.mkdir()
        path.write_bytes(b"")
    async with opened(path) as store:
        assert (await store.accept(make_message(), None)).created
    assert user_version(path) == SCHEMA_VERSION
    tables = {n for (n,) in sql(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == TABLES
    assert sql(path, "PRAGMA journal_mode") == [("wal",)]


async def test_version_1_database_keeps_its_rows_and_gets_todays_schema(tmp_path: Path) -> None:
    """A database made by the first release (frozen schema) opens with its rows, and ends with
    exactly the schema a new database gets: migrations append, they never edit a step."""
    assert hashlib.sha256(MIGRATIONS[0].encode()).hexdigest() == FROZEN_V1_SHA256, (
        "MIGRATIONS[0] changed: add a migration step instead")
    old = tmp_path / "v1.db"
    conn = sqlite3.connect(old, isolation_level=None)
    conn.executescript(MIGRATIONS[0])
    conn.execute("PRAGMA user_version = 1")
    messages = [make_message() for _ in range(3)]
    for m in messages:
        conn.execute(INSERT_MESSAGE, message_row(m))
    conn.execute("INSERT INTO optouts VALUES ('shop', ?, ?, 'api')", (MOBILE, NOW))
    conn.close()

    await assert_rows_kept(old, [m.id for m in messages])

    fresh = tmp_path / "fresh.db"
    async with opened(fresh):
        pass
    assert user_version(old) == user_version(fresh) == SCHEMA_VERSION
    assert schema(old) == schema(fresh)


async def test_older_database_is_migrated_forward_and_keeps_its_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "smsagg.db"
    ids = await store_with_rows(path)
    assert user_version(path) == len(MIGRATIONS)

    with_steps(monkeypatch, STEP_2, STEP_3)
    await assert_rows_kept(path, ids)

    assert user_version(path) == len(MIGRATIONS) + 2
    assert "note" in columns(path, "messages")
    assert {"extra", "extra_by_v"} <= set(schema(path))
    await assert_rows_kept(path, ids)  # opening again migrates nothing


async def test_every_step_runs_in_order_on_a_new_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_steps(monkeypatch, STEP_2, STEP_3)
    path = tmp_path / "smsagg.db"
    async with opened(path):
        pass
    assert user_version(path) == len(MIGRATIONS) + 2
    assert {"extra", "extra_by_v"} <= set(schema(path))


async def test_failing_migration_rolls_back_its_step_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 2 commits; step 3 fails half-way: its table is rolled back, the version stays at 2,
    the error names both versions, and no lock is left on the file."""
    path = tmp_path / "smsagg.db"
    ids = await store_with_rows(path)
    base = len(MIGRATIONS)
    with_steps(monkeypatch, STEP_2, BROKEN_STEP)

    store = SqliteStore(str(path))
    with pytest.raises(StoreError) as refused:
        await store.open()
    await store.close()

    message = str(refused.value)
    assert f"from version {base + 1} to {base + 2} failed" in message
    assert "no_such_table" in message and f"left at version {base + 1}" in message
    assert user_version(path) == base + 1
    assert "half_done" not in schema(path) and "extra" in schema(path)
    assert_not_locked(path)

    with_steps(monkeypatch, STEP_2)  # the fixed release
    await assert_rows_kept(path, ids)


# ---- files refused at start ---------------------------------------------------------------------


async def _real_database(path: Path) -> bytes:
    """The bytes of a database with a few hundred messages (WAL folded in at close)."""
    async with opened(path) as store:
        await store.accept_many([make_message() for _ in range(300)])
    assert not Path(f"{path}-wal").exists()
    data = path.read_bytes()
    path.unlink()
    return data


async def newer_schema(path: Path) -> str:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    return f"database schema version {SCHEMA_VERSION + 1} is newer than this smsagg understands"


async def negative_version(path: Path) -> str:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = -3")
    conn.close()
    return "schema version -3 is not one smsagg writes"


async def someone_elses_database(path: Path) -> str:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE messages (x)")
    conn.close()
    return "not an smsagg database"


async def truncated(path: Path) -> str:
    data = await _real_database(path)
    path.write_bytes(data[: len(data) // 2 + 1000])
    return "not a usable smsagg database"


async def noise_after_the_header(path: Path) -> str:
    data = await _real_database(path)
    path.write_bytes(data[:100] + random.Random(8).randbytes(len(data) - 100))
    return "not a usable smsagg database"


async def damaged_page(path: Path) -> str:
    """One b-tree page overwritten: only the integrity check at open finds it."""
    data = bytearray(await _real_database(path))
    page = 4096
    data[2 * page:3 * page] = random.Random(9).randbytes(page)
    path.write_bytes(bytes(data))
    return "not a usable smsagg database (integrity check failed"


async def garbage(path: Path) -> str:
    path.write_bytes(random.Random(7).randbytes(16_384))
    return "not a usable smsagg database"


BAD_FILES = [newer_schema, negative_version, someone_elses_database, truncated,
             noise_after_the_header, damaged_page, garbage]


@pytest.mark.parametrize("make", BAD_FILES, ids=lambda f: f.__name__)
async def test_unusable_file_is_refused_at_open(tmp_path: Path, make: Any) -> None:
    path = tmp_path / "smsagg.db"
    expected = await make(path)
    before = path.read_bytes()

    store = SqliteStore(str(path))
    with pytest.raises(StoreError) as refused:
        await store.open()
    await store.close()

    assert expected in str(refused.value)
    assert str(path) in str(refused.value)
    assert path.read_bytes()[100:] == before[100:]  # refused, not "repaired" or migrated
    assert_not_locked(path)


CLI_CONFIG = """
[http]
listen = "127.0.0.1:0"
[store]
path = "{path}"
[log]
format = "json"
[[accounts]]
name = "demo"
api_key = "demo-key"
[[providers]]
name = "sim"
host = "127.0.0.1"
port = 9
system_id = "smsagg"
password = "pw"
binds = 1
window = 1
max_tps = 10
[[routes]]
prefixes = ["*"]
providers = ["sim"]
"""


@pytest.mark.parametrize("make", [newer_schema, truncated, noise_after_the_header, damaged_page],
                         ids=lambda f: f.__name__)
async def test_smsagg_run_refuses_an_unusable_file_with_a_message(tmp_path: Path,
                                                                   make: Any) -> None:
    path = tmp_path / "smsagg.db"
    expected = await make(path)
    config = tmp_path / "smsagg.toml"
    config.write_text(CLI_CONFIG.format(path=path), encoding="utf-8")

    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "aggregator", "run", "--config", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"smsagg: cannot start: {path}: " in proc.stderr
    assert expected in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr

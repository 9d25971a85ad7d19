"""Ingress workers store on their own (issue 18): on PostgreSQL a worker writes to the database
with its own pool, on SQLite to the writer process; the daemon relays no store call."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import asyncpg

from simulator.smsc import Smsc, SmscProfile
from tests.cluster import cluster_config
from tests.helpers import (
    AUTH,
    daemon,
    delivered,
    metric_samples,
    metric_value,
    wait_async,
    write_daemon_config,
)

SINGLES = 40
BATCH = 10


async def send(http: aiohttp.ClientSession, base: str) -> list[str]:
    """SINGLES messages one by one and a batch of BATCH: their ids, every one answered 202."""
    ids = []
    for i in range(SINGLES):
        async with http.post(f"{base}/v1/messages", json={
                "to": f"+38344{830000 + i}", "from": "ACME", "text": f"d{i}"}) as r:
            assert r.status == 202, await r.text()
            ids.append((await r.json())["id"])
    batch = [{"to": f"+38344{840000 + i}", "from": "ACME", "text": f"b{i}"}
             for i in range(BATCH)]
    async with http.post(f"{base}/v1/messages/batch", json={"messages": batch}) as r:
        assert r.status == 200, await r.text()
        results = (await r.json())["results"]
    assert all(x["status"] == 202 for x in results), results
    return ids + [x["id"] for x in results]


async def counted_direct(http: aiohttp.ClientSession, base: str, backend: str) -> None:
    """Every accept call counted as stored by the worker itself (one per message, one for the
    batch), once its status report (every 2 s, or before a scrape it serves) reached the
    daemon's merged metrics."""

    async def done() -> bool:
        async with http.get(f"{base}/metrics") as r:
            value = metric_value(metric_samples(await r.text()),
                                 "smsagg_worker_direct_accepts_total", backend=backend)
        assert value is None or value <= SINGLES + 1
        return value == SINGLES + 1

    await wait_async(done)


@asynccontextmanager
async def worker_daemon(config: Callable[[int], Path], log: Path
                        ) -> AsyncIterator[tuple[aiohttp.ClientSession, str, Smsc]]:
    """A daemon with one ingress worker on the config `config(smsc_port)` writes, and a
    simulator SMSC; the HTTP port is the worker's (the daemon serves no HTTP itself)."""
    smsc = Smsc(SmscProfile())
    await smsc.start()
    try:
        async with daemon(config(smsc.port), log) as (_, base), aiohttp.ClientSession(
                headers=AUTH) as http:
            yield http, base, smsc
    finally:
        await smsc.stop()


async def test_a_worker_on_postgresql_writes_to_the_database_itself(
        tmp_path: Path, pg_dsn: str) -> None:
    def config(smsc_port: int) -> Path:
        path = cluster_config(tmp_path / "a", pg_dsn, "a", smsc_port, lease=10, binds=1,
                              max_tps=1000)
        path.write_text(path.read_text().replace("[http]\n", "[http]\nworkers = 1\n", 1))
        return path

    log = tmp_path / "daemon.log"
    async with worker_daemon(config, log) as (http, base, smsc):
        ids = await send(http, base)
        # Stored by the worker; the daemon's socket serves workers no store call at all.
        await counted_direct(http, base, "postgres")
        conn = await asyncpg.connect(pg_dsn)
        try:
            stored = await conn.fetchval(
                "SELECT count(*) FROM messages WHERE id = ANY($1::text[])", ids)
            # The worker's own connections to the database.
            own = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                "smsagg a/worker-1")
        finally:
            await conn.close()
        assert stored == len(ids)  # committed before the 202s: nothing accepted is lost
        assert own >= 1
        await wait_async(lambda: delivered(http, base, ids), timeout=60)
        assert len(smsc.received) >= len(ids)
    text = log.read_text()
    assert '"role": "worker"' in text and "worker_store_opened" in text


async def test_a_worker_on_sqlite_stores_through_the_writer_process(tmp_path: Path) -> None:
    def config(smsc_port: int) -> Path:
        path = tmp_path / "smsagg.toml"
        write_daemon_config(path, tmp_path / "smsagg.db", smsc_port, max_tps=1000,
                            http_workers=1)
        return path

    async with worker_daemon(config, tmp_path / "daemon.log") as (http, base, _):
        ids = await send(http, base)
        await counted_direct(http, base, "sqlite")
        await wait_async(lambda: delivered(http, base, ids), timeout=60)
        # The API's writes and reads from the worker: an opt-out, then the list.
        async with http.post(f"{base}/v1/optouts", json={"number": "+38344830001"}) as r:
            assert r.status in (200, 201), await r.text()
        async with http.get(f"{base}/v1/optouts") as r:
            assert "+38344830001" in await r.text()

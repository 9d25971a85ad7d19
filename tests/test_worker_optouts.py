"""An ingress worker reads the accept-time opt-out on its own SQLite connection
(store/optout_reads.py) instead of asking the daemon per message: an opt-out the daemon stored
a moment ago refuses the next message at once, and the reads are the worker's (metric)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from aggregator.store.optout_reads import LocalOptouts
from simulator.smsc import Smsc, SmscProfile
from tests.helpers import AUTH, DEADLINE, daemon, metric_samples, metric_value, write_daemon_config

NUMBER = "+38344810999"


async def local_reads(http: aiohttp.ClientSession, base: str) -> float:
    async with http.get(f"{base}/metrics") as r:
        snap = metric_samples(await r.text())
    return metric_value(snap, "smsagg_optout_local_reads_total", outcome="read") or 0.0


async def test_a_worker_refuses_at_once_what_the_daemon_stored_as_opted_out(
        tmp_path: Path) -> None:
    smsc = Smsc(SmscProfile())
    await smsc.start()
    config = tmp_path / "smsagg.toml"
    write_daemon_config(config, tmp_path / "smsagg.db", smsc.port, max_tps=1000, http_workers=1)
    try:
        async with daemon(config) as (_, base), aiohttp.ClientSession(headers=AUTH) as http:
            async with http.post(f"{base}/v1/messages", json={
                    "to": NUMBER, "from": "ACME", "text": "before"}) as r:
                assert r.status == 202, await r.text()
            async with http.post(f"{base}/v1/optouts", json={"number": NUMBER,
                                                              "scope": "all"}) as r:
                assert r.status == 201, await r.text()
            async with http.post(f"{base}/v1/messages", json={
                    "to": NUMBER, "from": "ACME", "text": "after"}) as r:
                assert r.status == 403, await r.text()
                assert (await r.json())["error"]["code"] == "opted_out"
            loop = asyncio.get_running_loop()
            deadline = loop.time() + DEADLINE
            while await local_reads(http, base) < 2:  # the worker reports every 0.5 s
                assert loop.time() < deadline, "the worker's own reads were not counted"
                await asyncio.sleep(0.1)
    finally:
        await smsc.stop()


def test_a_missing_database_is_not_created(tmp_path: Path) -> None:
    assert LocalOptouts.open(str(tmp_path / "absent.db")) is None
    assert not (tmp_path / "absent.db").exists()

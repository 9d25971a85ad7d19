"""[http] workers: HTTP ingress processes that validate on other cores and store through the
daemon. A 202 still means committed; the daemon's metrics include theirs; they stop with it."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest

from aggregator.ingress.rpc import RemoteStore, StoreServer
from aggregator.store.base import StoreError
from simulator.smsc import Smsc, SmscProfile
from tests.helpers import (
    AUTH,
    DEADLINE,
    daemon,
    metric_samples,
    metric_value,
    post_messages,
    wait_for,
    write_daemon_config,
)


async def port_closed(base: str) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz"):
            return False
    except aiohttp.ClientConnectionError:
        return True


async def delivered(http: aiohttp.ClientSession, base: str, ids: list[str]) -> bool:
    for mid in ids:
        async with http.get(f"{base}/v1/messages/{mid}") as r:
            if (await r.json())["status"] != "delivered":
                return False
    return True


async def wait_async(check: Any, timeout: float = DEADLINE) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.1)


async def test_worker_serves_the_api_and_metrics_sum_both_processes(tmp_path: Path) -> None:
    smsc = Smsc(SmscProfile())
    await smsc.start()
    config = tmp_path / "smsagg.toml"
    write_daemon_config(config, tmp_path / "smsagg.db", smsc.port, max_tps=1000, http_workers=1)
    try:
        async with daemon(config) as (proc, base), aiohttp.ClientSession(headers=AUTH) as http:
            ids = await post_messages(http, base, 40, first=810000, tag="w")
            await wait_async(lambda: delivered(http, base, ids))
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 200, await r.text()

            async def counted() -> bool:
                async with http.get(f"{base}/metrics") as r:
                    snap = metric_samples(await r.text())
                # Accepts are the worker's counter, submits the daemon's.
                return (metric_value(snap, "smsagg_messages_accepted_total", account="shop") == 40
                        and metric_value(snap, "smsagg_submits_total", provider="sim",
                                         status="ok") == 40)

            await wait_async(counted)  # workers report every 0.5 s
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), DEADLINE) == 0
            assert await port_closed(base), "a worker still serves after the daemon stopped"
    finally:
        await smsc.stop()
    assert Counter(s.destination for s in smsc.received) == Counter(
        f"38344{810000 + i}" for i in range(40))


async def test_workers_exit_when_the_daemon_is_killed_and_nothing_acknowledged_is_lost(
    tmp_path: Path,
) -> None:
    smsc = Smsc(SmscProfile())
    await smsc.start()
    config = tmp_path / "smsagg.toml"
    write_daemon_config(config, tmp_path / "smsagg.db", smsc.port, max_tps=50, http_workers=1)
    ids: list[str] = []
    try:
        async with daemon(config) as (proc, base), aiohttp.ClientSession(headers=AUTH) as http:
            for i in range(150):
                async with http.post(f"{base}/v1/messages", json={
                        "to": f"+38344{820000 + i}", "from": "ACME", "text": f"k{i}"}) as r:
                    assert r.status == 202
                    ids.append((await r.json())["id"])
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            await wait_async(lambda: port_closed(base))  # the worker saw the daemon go
        assert smsc.submits_total < len(ids), "the queue drained before the kill"
        async with daemon(config) as (proc, base), aiohttp.ClientSession(headers=AUTH) as http:
            await wait_async(lambda: delivered(http, base, ids), timeout=60)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), DEADLINE) == 0
    finally:
        await smsc.stop()
    seen = {s.destination for s in smsc.received}
    assert all(f"38344{820000 + i}" in seen for i in range(150))


class _FakeStore:
    pending = 7
    pending_by_account: ClassVar[dict[str, int]] = {"shop": 7}
    writer_address = None  # no writer process: accepts go through the daemon

    async def get_message(self, account: str, message_id: str) -> str:
        return f"{account}/{message_id}"

    async def claim_due(self, now: float, limit: int) -> list[str]:
        raise AssertionError("a worker must not reach this")


async def test_rpc_serves_only_the_ingress_store_methods() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s.sock")
        server = StoreServer(_FakeStore(), lambda: None, lambda: (True, []),  # type: ignore[arg-type]
                             lambda: "# metrics\n")
        await server.start(path)
        remote = await RemoteStore.connect(path, lambda: "")
        try:
            assert await remote.call("get_message", "shop", "m1") == "shop/m1"
            with pytest.raises(StoreError, match="not served"):
                await remote.call("claim_due", 0.0, 10)
            with pytest.raises(AttributeError):
                remote.claim_due  # noqa: B018
            await wait_for(lambda: remote.pending == 7)
            assert remote.pending_by_account == {"shop": 7}
            assert await remote.call("metrics") == "# metrics\n"
        finally:
            await remote.close()
            await server.stop()
        await asyncio.wait_for(remote.lost, DEADLINE)

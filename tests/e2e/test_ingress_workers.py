"""[http] workers: HTTP ingress processes that validate on other cores and store through the
daemon. A 202 still means committed; the daemon's metrics include theirs; they stop with it."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from aggregator.ingress.rpc import DaemonClient, WorkerServer
from aggregator.store.base import StoreError
from aggregator.wire import DAEMON_CALLS
from simulator.smsc import Smsc, SmscProfile
from tests.helpers import (
    AUTH,
    DEADLINE,
    daemon,
    delivered,
    metric_samples,
    metric_value,
    post_messages,
    wait_async,
    wait_for,
    write_daemon_config,
)


async def port_closed(base: str) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz"):
            return False
    except aiohttp.ClientConnectionError:
        return True


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


async def test_the_daemon_serves_workers_status_calls_only_never_the_store() -> None:
    """Workers store on their own: the daemon's socket refuses every store method."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s.sock")
        server = WorkerServer(lambda: (7, {"shop": 7}), lambda: (True, []),
                              lambda: "# metrics\n")
        await server.start(path)
        seen: list[tuple[int, dict[str, int]]] = []
        remote = await DaemonClient.connect(path, lambda: "",
                                            lambda p, by: seen.append((p, by)))
        try:
            for name in ("get_message", "claim_due", "accept"):
                with pytest.raises(StoreError, match="not a call the daemon serves"):
                    await remote.call(name)
                # Asked anyway (a worker of another version): the daemon refuses it.
                with pytest.raises(StoreError, match="not served"):
                    await remote.call_unchecked(name, DAEMON_CALLS["metrics"])
            await wait_for(lambda: bool(seen))
            assert seen[0] == (7, {"shop": 7})
            assert await remote.call("metrics") == "# metrics\n"
        finally:
            await remote.close()
            await server.stop()
        await asyncio.wait_for(remote.lost, DEADLINE)

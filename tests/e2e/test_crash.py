"""The daemon killed with SIGKILL mid-queue and restarted loses no accepted message."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import aiohttp

from aggregator.outbound.pool import ProviderPool
from simulator.smsc import Smsc, SmscProfile
from tests.helpers import AUTH, DEADLINE, daemon, write_daemon_config

BINDS, WINDOW = 2, 10


async def test_sigkill_mid_queue_loses_nothing(tmp_path: Path) -> None:
    smsc = Smsc(SmscProfile(latency=0.01))
    await smsc.start()
    config = tmp_path / "smsagg.toml"
    write_daemon_config(config, tmp_path / "smsagg.db", smsc.port, binds=BINDS, window=WINDOW)
    accepted: dict[str, str] = {}  # id -> destination
    try:
        async with daemon(config) as (proc, base), aiohttp.ClientSession(headers=AUTH) as http:

            async def post(i: int) -> None:
                to = f"+38344{500000 + i}"
                async with http.post(f"{base}/v1/messages",
                                     json={"to": to, "from": "ACME", "text": f"k{i}"}) as r:
                    if r.status == 202:
                        accepted[(await r.json())["id"]] = to

            await asyncio.gather(*(post(i) for i in range(600)))
            # max_tps 150 keeps most of them queued: kill while the queue is deep.
            await smsc.wait_for_submits(100, DEADLINE)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        submitted_before_restart = smsc.submits_total
        assert len(accepted) == 600
        assert submitted_before_restart < 600, "queue drained before the kill"

        async with daemon(config) as (proc, base), aiohttp.ClientSession(headers=AUTH) as http:
            pending = set(accepted)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while pending and loop.time() < deadline:
                for mid in list(pending):
                    async with http.get(f"{base}/v1/messages/{mid}") as r:
                        if (await r.json())["status"] == "delivered":
                            pending.discard(mid)
                if pending:
                    await asyncio.sleep(0.2)
            if pending:
                states = Counter()
                for mid in pending:
                    async with http.get(f"{base}/v1/messages/{mid}") as r:
                        states[(await r.json())["status"]] += 1
                print("STATES", states, smsc.summary())
            assert not pending, f"{len(pending)} accepted messages not delivered"
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), DEADLINE) == 0
    finally:
        await smsc.stop()
    seen = Counter(s.destination for s in smsc.received)
    for to in accepted.values():
        assert seen[to.lstrip("+")] >= 1, f"{to} never reached the SMSC"
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    # Only submits in flight (or answered but not yet committed) at the kill can repeat.
    assert duplicates <= BINDS * WINDOW * ProviderPool.HOLD_WINDOWS, duplicates

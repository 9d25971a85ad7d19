"""The daemon killed with SIGKILL mid-queue and restarted loses no accepted message."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from simulator.smsc import Smsc, SmscProfile
from tests.helpers import AUTH, DEADLINE

ROOT = Path(__file__).resolve().parent.parent
BINDS, WINDOW = 2, 10


def write_config(path: Path, store: Path, smsc_port: int) -> None:
    path.write_text(f"""
[http]
listen = "127.0.0.1:0"
[store]
path = "{store}"
[messages]
retry_min = 0.05
retry_max = 0.5
[[accounts]]
name = "shop"
api_key = "shop-key"
[[providers]]
name = "sim"
host = "127.0.0.1"
port = {smsc_port}
system_id = "smsagg"
password = "pw"
binds = {BINDS}
window = {WINDOW}
max_tps = 150
reconnect_min = 0.05
reconnect_max = 0.5
[[routes]]
prefixes = ["*"]
providers = ["sim"]
""")


@asynccontextmanager
async def daemon(config: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aggregator", "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=config.parent,
    )
    assert proc.stdout is not None
    base = ""
    while not base:
        line = await asyncio.wait_for(proc.stdout.readline(), DEADLINE)
        assert line, "daemon exited before it started"
        if b'"started"' in line:
            base = "http://" + json.loads(line)["http"]

    async def drain() -> None:
        assert proc.stdout is not None
        while await proc.stdout.readline():
            pass

    drainer = asyncio.create_task(drain())
    try:
        yield proc, base
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        drainer.cancel()


async def test_sigkill_mid_queue_loses_nothing(tmp_path: Path) -> None:
    smsc = Smsc(SmscProfile(latency=0.01))
    await smsc.start()
    config = tmp_path / "smsagg.toml"
    write_config(config, tmp_path / "smsagg.db", smsc.port)
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
    assert duplicates <= BINDS * WINDOW, duplicates

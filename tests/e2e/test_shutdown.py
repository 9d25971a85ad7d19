"""SIGTERM: the daemon stops accepting, waits for the submits in flight, unbinds, exits 0; a
restart resumes what was left, and nothing answered before the stop is sent twice."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import aiohttp

from simulator.smsc import Smsc, SmscProfile
from tests.helpers import AUTH, DEADLINE, daemon, wait_for, write_daemon_config

BINDS, WINDOW, MESSAGES = 2, 5, 200


async def test_sigterm_drains_unbinds_exits_0_and_a_restart_resumes(tmp_path: Path) -> None:
    # Answers take 0.3 s, so submits are in flight at the SIGTERM and the queue is deep.
    smsc = Smsc(SmscProfile(latency=0.3))
    await smsc.start()
    config = tmp_path / "smsagg.toml"
    write_daemon_config(config, tmp_path / "smsagg.db", smsc.port, binds=BINDS, window=WINDOW,
                        max_tps=1000)
    accepted: dict[str, str] = {}
    try:
        async with daemon(config) as (proc, base), aiohttp.ClientSession(headers=AUTH) as http:
            for i in range(MESSAGES):
                to = f"+38344{700000 + i}"
                async with http.post(f"{base}/v1/messages",
                                     json={"to": to, "from": "ACME", "text": f"s{i}"}) as r:
                    assert r.status == 202
                    accepted[(await r.json())["id"]] = to
            await wait_for(lambda: smsc.submits_total >= 2 * BINDS * WINDOW)
            await wait_for(lambda: any(s.outstanding for s in smsc.bind_stats.values()))
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), DEADLINE) == 0
            # It stopped listening: a new request is refused, not accepted and dropped.
            try:
                async with http.post(f"{base}/v1/messages",
                                     json={"to": "+38344799999", "from": "ACME", "text": "x"}):
                    raise AssertionError("the stopped daemon still answered")
            except aiohttp.ClientConnectionError:
                pass
        smpp_binds = [s for s in smsc.bind_stats.values() if s.system_id == "smsagg"]
        assert len(smpp_binds) == BINDS
        assert all(not s.bound and s.close_reason == "peer unbound" for s in smpp_binds), [
            (s.bound, s.close_reason) for s in smpp_binds]
        sent_before_restart = smsc.submits_total
        assert sent_before_restart < MESSAGES, "the queue drained before the SIGTERM"

        async with daemon(config) as (proc, base), aiohttp.ClientSession(headers=AUTH) as http:
            pending = set(accepted)

            async def all_delivered() -> bool:
                for mid in list(pending):
                    async with http.get(f"{base}/v1/messages/{mid}") as r:
                        if (await r.json())["status"] == "delivered":
                            pending.discard(mid)
                return not pending

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while not await all_delivered():
                assert loop.time() < deadline, f"{len(pending)} messages not delivered"
                await asyncio.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), DEADLINE) == 0
    finally:
        await smsc.stop()
    seen = Counter(s.destination for s in smsc.received)
    assert all(seen[to.lstrip("+")] == 1 for to in accepted.values()), (
        "a graceful stop must not resend what was answered: "
        f"{sum(n - 1 for n in seen.values() if n > 1)} duplicates")

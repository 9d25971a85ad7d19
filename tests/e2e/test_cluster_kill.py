"""Two smsagg daemons on one PostgreSQL database, one SIGKILLed under load: every accepted
message is delivered, or stays submitted because the SMSC took it and its receipt went down
with the killed bind; none is lost; what it had claimed is sent by the survivor once its lease
runs out. Duplicates are the killed instance's submits not yet recorded: those in its windows,
and those answered whose record had not committed. A slot stays taken until the record
commits, so HOLD_WINDOWS times the killed instance's windows (its share of the binds x window)
bound them."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncpg

from aggregator.outbound.pool import ProviderPool
from simulator.smsc import Smsc, SmscProfile
from tests.cluster import GRACE, cluster_config, final_states
from tests.helpers import AUTH, DEADLINE, daemon

BINDS, WINDOW, LEASE = 2, 10, 1
HOLD = ProviderPool.HOLD_WINDOWS  # a bind's submits sent and not yet recorded, in windows
COUNT = 600


async def test_one_of_two_instances_killed_under_load_loses_nothing(
        tmp_path: Path, pg_dsn: str) -> None:
    smsc = Smsc(SmscProfile(latency=0.01))
    await smsc.start()
    accepted: set[str] = set()
    try:
        async with daemon(cluster_config(tmp_path / "a", pg_dsn, "a", smsc.port, lease=LEASE,
                                         binds=BINDS, window=WINDOW),
                          tmp_path / "a.log") as (victim, base_a), \
                daemon(cluster_config(tmp_path / "b", pg_dsn, "b", smsc.port, lease=LEASE,
                                      binds=BINDS, window=WINDOW),
                       tmp_path / "b.log") as (_, base_b), \
                aiohttp.ClientSession(headers=AUTH) as http:
            sem = asyncio.Semaphore(50)

            async def post(i: int) -> None:
                body = {"to": f"+38344{500000 + i}", "from": "ACME", "text": f"k{i}"}
                try:
                    async with sem, http.post(f"{base_a if i % 2 else base_b}/v1/messages",
                                              json=body) as r:
                        if r.status == 202:
                            accepted.add((await r.json())["id"])
                except aiohttp.ClientError:  # the killed instance: not accepted
                    pass

            posting = asyncio.gather(*(post(i) for i in range(COUNT)))
            # Both instances accepting and sending (max_tps keeps a queue): kill one.
            await smsc.wait_for_submits(100, DEADLINE)
            victim_binds = await share_binds(http, base_a)
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
            killed_at = time.monotonic()
            await posting
            assert smsc.submits_total < len(accepted), "the queue drained before the kill"

            states = await final_states(http, base_b, accepted, deadline=60.0)
            took = time.monotonic() - killed_at
    finally:
        await smsc.stop()

    sent = Counter(r.short_message for r in smsc.received)
    duplicates = sum(n - 1 for n in sent.values())
    print(f"accepted {len(accepted)}, states {dict(states)}, duplicates {duplicates} "
          f"(killed instance's windows {victim_binds} x {WINDOW}), "
          f"survivor done {took:.1f} s after the kill")
    assert set(states) <= {"delivered", "submitted"}, states
    assert states["submitted"] <= BINDS * WINDOW  # receipts lost with the killed binds
    assert len(sent) >= len(accepted)  # every accepted message reached the SMSC: none lost
    assert 1 <= victim_binds <= BINDS
    assert duplicates <= victim_binds * WINDOW * HOLD  # at most the killed instance's windows
    assert took < LEASE + 5 + GRACE + 5  # the survivor sent what the killed one held


async def share_binds(http: aiohttp.ClientSession, base: str) -> int:
    """The binds an instance holds of the provider's: its share while both live (the gauge is
    set once a share differs from the whole)."""
    async with http.get(f"{base}/metrics") as r:
        text = await r.text()
    found = re.search(r'^smsagg_provider_share_binds\{provider="[^"]*"\} ([0-9.]+)$', text,
                      re.MULTILINE)
    return int(float(found.group(1))) if found else BINDS


async def test_killed_instance_sends_again_at_most_its_windows(tmp_path: Path,
                                                              pg_dsn: str) -> None:
    """While the store cannot record submits (a session holds the segments table), each
    instance goes on submitting only into its windows: a slot stays taken until its record
    commits. The instance killed then sends again (the survivor, after the lease) at most its
    windows, not every message it had in hand."""
    smsc = Smsc(SmscProfile(latency=0.005))
    await smsc.start()
    blocker = await asyncpg.connect(pg_dsn)
    try:
        async with daemon(cluster_config(tmp_path / "a", pg_dsn, "a", smsc.port, lease=LEASE,
                                         binds=BINDS, window=WINDOW, max_tps=1000),
                          tmp_path / "a.log") as (victim, base_a), \
                daemon(cluster_config(tmp_path / "b", pg_dsn, "b", smsc.port, lease=LEASE,
                                      binds=BINDS, window=WINDOW, max_tps=1000),
                       tmp_path / "b.log") as (_, base_b), \
                aiohttp.ClientSession(headers=AUTH) as http:
            await wait_until(lambda: share_binds(http, base_a), lambda n: n < BINDS)
            victim_binds = await share_binds(http, base_a)
            blocking = blocker.transaction()
            await blocking.start()
            await blocker.execute("LOCK TABLE segments IN EXCLUSIVE MODE")
            accepted: set[str] = set()
            for i in range(300):
                body = {"to": f"+38344{600000 + i}", "from": "ACME", "text": f"w{i}"}
                async with http.post(f"{base_a if i % 2 else base_b}/v1/messages",
                                     json=body) as r:
                    assert r.status == 202
                    accepted.add((await r.json())["id"])
            stuck = await submits_settled(smsc)
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
            await blocking.commit()
            states = await final_states(http, base_b, accepted, deadline=60.0)
    finally:
        await blocker.close()
        await smsc.stop()

    sent = Counter(r.short_message for r in smsc.received)
    duplicates = sum(n - 1 for n in sent.values())
    print(f"submitted while records waited: {stuck}; duplicates {duplicates} (killed "
          f"instance's windows {victim_binds} x {WINDOW}); states {dict(states)}")
    assert stuck <= BINDS * WINDOW * HOLD  # both instances stopped at their windows
    assert set(states) <= {"delivered", "submitted"}, states
    assert len(sent) >= len(accepted)
    assert duplicates <= victim_binds * WINDOW * HOLD


async def wait_until(read: Callable[[], Awaitable[int]], done: Callable[[int], bool]) -> None:
    end = time.monotonic() + DEADLINE
    while not done(await read()):
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.1)


async def submits_settled(smsc: Smsc, quiet: float = 1.5) -> int:
    """The SMSC's submit count once it has not moved for `quiet` seconds (at least one)."""
    end = time.monotonic() + DEADLINE
    last, since = -1, time.monotonic()
    while time.monotonic() < end:
        if smsc.submits_total != last:
            last, since = smsc.submits_total, time.monotonic()
        elif last > 0 and time.monotonic() - since >= quiet:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"submits kept moving: {smsc.submits_total}")

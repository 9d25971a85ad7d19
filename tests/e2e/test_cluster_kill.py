"""Two smsagg daemons on one PostgreSQL database, one SIGKILLed under load: every accepted
message is delivered, or stays submitted because the SMSC took it and its receipt went down
with the killed bind; none is lost; what it had claimed is sent by the survivor once its lease
runs out. Duplicates are the killed instance's submits not yet recorded: those in its windows,
and those answered whose record had not committed. The dispatcher holds a message until its
record commits, so its bound on messages in hand (max_in_flight) bounds them."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

import aiohttp

from simulator.smsc import Smsc, SmscProfile
from tests.cluster import GRACE, cluster_config, final_states
from tests.helpers import AUTH, DEADLINE, daemon

BINDS, WINDOW, LEASE = 2, 10, 1
MAX_IN_FLIGHT = max(100, 4 * BINDS * WINDOW)  # the daemon's (App._max_in_flight)
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
    print(f"accepted {len(accepted)}, states {dict(states)}, duplicates {duplicates}, "
          f"survivor done {took:.1f} s after the kill")
    assert set(states) <= {"delivered", "submitted"}, states
    assert states["submitted"] <= BINDS * WINDOW  # receipts lost with the killed binds
    assert len(sent) >= len(accepted)  # every accepted message reached the SMSC: none lost
    assert duplicates <= MAX_IN_FLIGHT
    assert took < LEASE + 5 + GRACE + 5  # the survivor sent what the killed one held

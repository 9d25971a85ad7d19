"""Chaos under load: the daemon SIGKILLed and restarted several times, its SMSC crashed and
restarted, and the SMSC hung long enough for submits to time out, all while the load generator
posts messages. Afterwards every accepted message is delivered, the SMSC saw each at least once,
and the duplicates stay within what was in flight at each fault.

The fault schedule (order and moments) comes from a random seed printed at the start and in the
summary line; rerun one with CHAOS_SEED=<seed>. `pytest -s tests/e2e/test_chaos.py` shows the lines.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aggregator.model import FINAL_STATUSES
from aggregator.outbound.pool import ProviderPool
from simulator.load import LoadOptions, LoadResult, run_load
from simulator.smsc import Smsc, SmscProfile
from tests.helpers import API_KEY, AUTH, DEADLINE, daemon, free_port, write_daemon_config
from tests.hostile_helpers import (
    FLOOD_BYTES,
    bound_flood_then_read,
    hostile_daemon,
    rss_bytes,
    still_served,
    warm_up,
)

pytestmark = pytest.mark.slow

BINDS, WINDOW = 2, 10
HOLD_WINDOWS = ProviderPool.HOLD_WINDOWS  # a bind's submits sent and not yet recorded, in windows
RESPONSE_TIMEOUT = 1.0
RATE = 200.0  # messages per second offered by the load generator
DAEMON_KILLS, SMSC_KILLS, SMSC_PAUSES = 3, 1, 1
SETTLE = 30.0  # seconds, after the load, for every accepted message to reach a final state
FINAL = {s.value for s in FINAL_STATUSES}


@dataclass
class Fault:
    kind: str  # "daemon kill" | "smsc kill" | "smsc pause"
    at: float  # time.time() when it ended (kill sent, SMSC aborted, SMSC resumed)
    bound: int  # submits it may make the SMSC see twice
    duplicates: int = 0  # extra sightings of messages first seen before it (and after the last)


class Daemon:
    """The daemon subprocess, restarted on the same config: same store, same HTTP port."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.base = ""
        self._stack: AsyncExitStack | None = None

    async def start(self) -> None:
        self._stack = AsyncExitStack()
        self.proc, self.base = await self._stack.enter_async_context(
            daemon(self.config, self.log))

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.proc.wait(), DEADLINE)
        await self.close()

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()


async def fetch(http: aiohttp.ClientSession, base: str, ids: set[str]) -> dict[str, Any]:
    """GET /v1/messages/{id} for each id, a few at a time."""
    slots = asyncio.Semaphore(16)

    async def one(message_id: str) -> tuple[str, Any]:
        async with slots, http.get(f"{base}/v1/messages/{message_id}") as r:
            body = await r.json()
            if r.status != 200:
                body = {"status": f"http {r.status}"}
            return message_id, body

    return dict(await asyncio.gather(*(one(m) for m in ids)))


@pytest.mark.parametrize("http_workers", [0, 1], ids=["one-process", "ingress-worker"])
async def test_chaos_under_load_loses_nothing(tmp_path: Path, http_workers: int) -> None:
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(2**32))
    print(f"\nchaos seed {seed}, [http] workers = {http_workers} "
          f"(rerun: CHAOS_SEED={seed} pytest -s tests/e2e/test_chaos.py)")
    rng = random.Random(seed)
    started = time.monotonic()
    smsc = Smsc(SmscProfile(latency=0.01, latency_jitter=0.005, receipt_delay=0.05, seed=seed))
    await smsc.start()
    config = tmp_path / "smsagg.toml"
    write_daemon_config(
        config, tmp_path / "smsagg.db", smsc.port, http_port=free_port(), binds=BINDS,
        window=WINDOW, max_tps=400, http_workers=http_workers,
        provider={"response_timeout": RESPONSE_TIMEOUT, "breaker_cooldown": 0.5,
                  "bind_timeout": 2.0},
    )
    log = tmp_path / "daemon.log"
    smsagg = Daemon(config, log)
    faults: list[Fault] = []
    stop_load = asyncio.Event()
    load: asyncio.Task[LoadResult] | None = None
    try:
        await smsagg.start()
        load = asyncio.create_task(run_load(LoadOptions(
            mode="http", url=smsagg.base, api_key=API_KEY, rate=RATE, duration=120.0,
            concurrency=20, timeout=5.0, prefix="+86138", digits=8, receipts=False,
            seed=seed, record_ids=True,
        ), stop_load))

        # The chaos schedule: the sleeps are the random moments, not waits for events.
        schedule = (["daemon kill"] * DAEMON_KILLS + ["smsc kill"] * SMSC_KILLS
                    + ["smsc pause"] * SMSC_PAUSES)
        rng.shuffle(schedule)
        for kind in schedule:
            await asyncio.sleep(rng.uniform(1.0, 2.5))
            assert not load.done(), load  # it ended early: an exception, or the duration
            if kind == "daemon kill":
                await smsagg.kill()
                faults.append(Fault(kind, time.time(), BINDS * WINDOW * HOLD_WINDOWS))
                await smsagg.start()
            elif kind == "smsc kill":
                unanswered = smsc.abort()
                faults.append(Fault(kind, time.time(), unanswered))
                await asyncio.sleep(rng.uniform(0.2, 1.0))  # down for a moment
                await smsc.start()
            else:
                smsc.pause()
                await asyncio.sleep(RESPONSE_TIMEOUT + rng.uniform(0.5, 1.5))
                held = smsc.resume()
                faults.append(Fault(kind, time.time(), held))
        await asyncio.sleep(rng.uniform(1.0, 2.0))  # load on the recovered system
        stop_load.set()
        result = await asyncio.wait_for(load, DEADLINE)
        accepted = set(result.ids)
        assert len(accepted) == result.accepted > 0

        # Every accepted message reaches a final state (polled with a deadline).
        states: dict[str, Any] = {}
        async with aiohttp.ClientSession(headers=AUTH) as http:
            pending = set(accepted)
            deadline = time.monotonic() + SETTLE
            while pending and time.monotonic() < deadline:
                got = await fetch(http, smsagg.base, pending)
                states.update(got)
                pending = {m for m, body in got.items() if body["status"] not in FINAL}
                if pending:
                    await asyncio.sleep(0.2)
        assert smsagg.proc is not None
        smsagg.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(smsagg.proc.wait(), DEADLINE) == 0, "unclean shutdown"
    finally:
        stop_load.set()
        if load is not None and not load.done():
            load.cancel()
        await smsagg.close()
        await smsc.stop(timeout=1.0)

    # What the SMSC saw, per destination: sightings in time order.
    sightings: dict[str, list[float]] = {}
    for submit in smsc.received:
        sightings.setdefault(submit.destination, []).append(submit.received_at)
    wanted = Counter(states[m]["to"].lstrip("+") for m in accepted if "to" in states[m])
    statuses = Counter(states[m]["status"] for m in accepted)
    unseen = [m for m in accepted
              if "to" not in states[m] or states[m]["to"].lstrip("+") not in sightings]
    delivered = statuses["delivered"]
    lost = len(accepted) - delivered
    # A destination no accepted message went to was a message stored just before a kill whose
    # 202 never arrived: it may be sent, once.
    duplicated = 0
    for destination, times in sightings.items():
        extra = len(times) - max(1, wanted[destination])
        if extra <= 0:
            continue
        duplicated += extra
        times.sort()
        for first in times[:extra]:  # blame the first fault after each earlier sighting
            fault = next((f for f in faults if f.at >= first), None)
            if fault is not None:
                fault.duplicates += 1
    bound = sum(f.bound for f in faults)
    kinds = Counter(f.kind for f in faults)
    per_fault = ", ".join(f"{f.kind} {f.duplicates}/{f.bound}" for f in faults)
    print(f"chaos seed {seed}, workers {http_workers}: accepted {len(accepted)},"
          f" delivered {delivered}, lost {lost},"
          f" duplicated {duplicated} (bound {bound}), daemon kills {kinds['daemon kill']},"
          f" SMSC kills {kinds['smsc kill']}, SMSC pauses {kinds['smsc pause']};"
          f" load errors {result.errors_total}, wall {time.monotonic() - started:.1f} s;"
          f" duplicates/bound per fault: {per_fault}")
    detail = (f"seed {seed}; statuses {dict(statuses)};"
              f" SMSC {smsc.summary() | {'bind_stats': None}}; daemon log {log}")
    assert kinds == {"daemon kill": DAEMON_KILLS, "smsc kill": SMSC_KILLS,
                     "smsc pause": SMSC_PAUSES}
    assert not unseen, f"{len(unseen)} accepted messages never reached the SMSC; {detail}"
    assert lost == 0, f"{lost} accepted messages not delivered; {detail}"
    assert duplicated <= bound, f"{duplicated} duplicates, more than {bound}; {detail}"


# -- SMPP write back-pressure: a peer that does not read its answers (issue 17) --


async def test_bound_client_that_stops_reading_is_paused_not_buffered(tmp_path: Path) -> None:
    async with hostile_daemon(tmp_path) as d:
        await asyncio.to_thread(warm_up, d.smpp_port)
        before = rss_bytes(d.pid)
        sent, peak, answers = await asyncio.to_thread(bound_flood_then_read, d.smpp_port, d.pid)
        growth = peak - before
        print(f"bound flood: sent {sent} bytes before the daemon stopped reading,"
              f" RSS +{growth / 2**20:.1f} MiB, {answers} answers read afterwards")
        assert growth < 8 * 2**20, growth
        assert sent < FLOOD_BYTES, "the daemon read the whole flood"
        # Slowed, not dropped: once the client reads, every request is answered.
        assert answers == sent // 16
        await still_served(d)

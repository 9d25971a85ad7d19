"""Micro-benchmark of the PostgreSQL store's latency on a busy event loop: what a write or a
claim costs in loop turns, not in server time.

    PYTHONPATH=$PWD python tests/bench_pg_turns.py [--ops 300] [--busy-ms 1.0]

On a loaded daemon every loop turn between an operation's start and its caller's resumption
waits for the other work of that turn (the bench's scenario a: 1-3 ms a turn). Here a callback
burns `--busy-ms` of CPU every turn, and optout_scope, accept, claim_due, record_submitted and
apply_receipts run one at a time against a throw-away server (simulator/pgserver.py); their
p50/p90 latency, less the same figures with an idle loop, is about the turns they take times
`--busy-ms` (also printed: the turns from call to return, the server's time included). The
server's own time is the idle figure. Run with PYTHONPATH pointing at another tree to compare
(the script uses only the store's public methods)."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable

from aggregator.model import MessageStatus, ReceiptUpdate, SegmentSubmit
from aggregator.store.postgres import PostgresStore
from tests.bench_pg_store import PROVIDER, bench_message, throwaway_store


class Busy:
    """Burns `ms` of CPU in every loop turn while on."""

    def __init__(self, ms: float) -> None:
        self.seconds = ms / 1000
        self.on = False
        self.turns = 0

    def start(self) -> None:
        self.on = self.seconds > 0
        if self.on:
            asyncio.get_running_loop().call_soon(self._turn)

    def _turn(self) -> None:
        if not self.on:
            return
        self.turns += 1
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            pass
        asyncio.get_running_loop().call_soon(self._turn)


async def _timed(lat: dict[str, list[float]], name: str,
                 work: Awaitable[object], busy: Busy) -> None:
    """`work` (a coroutine, not started yet) awaited: its latency and the loop turns it took."""
    started, turns = time.perf_counter(), busy.turns
    await work
    lat.setdefault(name, []).append((time.perf_counter() - started) * 1000)
    lat.setdefault(f"{name} turns", []).append(busy.turns - turns)


async def _rounds(store: PostgresStore, ops: int, busy: Busy, base: int) -> dict[str, list[float]]:
    lat: dict[str, list[float]] = {}
    busy.start()
    try:
        for i in range(ops):
            now = time.time()
            m = bench_message(base + i, now)
            await _timed(lat, "optout_scope", store.optout_scope(m.account, m.to), busy)
            await _timed(lat, "accept", store.accept(m, None), busy)
            claimed = await store.claim_due(now + 1, 1)
            await _timed(lat, "record_submitted", store.record_submitted(
                m.id, PROVIDER, [SegmentSubmit(1, f"p{m.id}")], now), busy)
            await _timed(lat, "apply_receipts", store.apply_receipts(
                [ReceiptUpdate(PROVIDER, f"p{m.id}", MessageStatus.DELIVERED, None, now)]), busy)
            await _timed(lat, "claim_due (none due)", store.claim_due(now + 1, 1), busy)
            assert len(claimed) == 1
    finally:
        busy.on = False
    return lat


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def run(ops: int, busy_ms: float) -> None:
    async with throwaway_store() as (store, _, _):
        await _rounds(store, 20, Busy(0), 0)  # warm: connections, prepared statements
        idle = await _rounds(store, ops, Busy(0), 100)
        busy = await _rounds(store, ops, Busy(busy_ms), 100 + ops)
    print(f"{ops} operations each, one at a time; ms p50 / p90, idle loop and with "
          f"{busy_ms} ms of other work a loop turn")
    for name in idle:
        print(f"  {name:22s} idle {_pct(idle[name], .5):6.2f} / {_pct(idle[name], .9):6.2f}"
              f"   busy {_pct(busy[name], .5):6.2f} / {_pct(busy[name], .9):6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=300)
    parser.add_argument("--busy-ms", type=float, default=1.0)
    args = parser.parse_args()
    asyncio.run(run(args.ops, args.busy_ms))


if __name__ == "__main__":
    main()

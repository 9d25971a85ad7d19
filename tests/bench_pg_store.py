"""Micro-benchmark of a relayed message's store operations on PostgreSQL: the server's CPU per
message for each step of its life, with no HTTP, SMPP or load generator in the way.

    PYTHONPATH=$PWD python -m tests.bench_pg_store [--messages N] [--batch B] [--vacuum]
                                                   [--settings "-c name=value ..."]

It starts a throw-away server (simulator/pgserver.py), opens a PostgresStore on a fresh
database and relays N messages in rounds of B, as the daemon does under load: B accepts at once
(one group), one claim_due of B, B record_submitted at once (one group), B one-receipt
apply_receipts at once (one group). It prints the server's CPU (utime + stime of the postmaster
and its children, bench_pg.server_cpu) per message for each step, and this process's. The
tables start empty and grow without a vacuum, as in a short `smsagg-sim bench` run (--vacuum:
VACUUM ANALYZE first, after a first round: plans made on statistics). Run it before and after a
change to the PostgreSQL store's hot statements: CPU per message is little moved by the
neighbours' load."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import asyncpg

from aggregator.model import (
    Encoding,
    Message,
    MessageStatus,
    ReceiptUpdate,
    SegmentSubmit,
    Sender,
    SenderKind,
)
from aggregator.store.postgres import PostgresStore
from simulator.pgserver import PgServer, create_database, start_server
from tests.bench_pg import server_cpu

T = TypeVar("T")
PROVIDER = "opA"
STEPS = ("accept", "claim_due", "record_submitted", "apply_receipts")


def bench_message(i: int, now: float) -> Message:
    """Message `i` of a bench run: single-part, waiting, to a Kosovo number."""
    return Message(
        id=f"{int(now * 1000):012x}{i:020x}", account="bench", to=f"+3834412{i % 100000:05d}",
        sender=Sender("Shop", SenderKind.ALPHANUMERIC), text="hello world", encoding=Encoding.GSM7,
        segments=1, concat_ref=7, created_at=now, next_attempt_at=now, expires_at=now + 86_400,
        callback_url=None)


async def _round(store: PostgresStore, start: int, batch: int, cpu: dict[str, float],
                 postmaster: int) -> int:
    now = time.time()

    async def step(name: str, work: Awaitable[T]) -> T:
        before = server_cpu(postmaster)
        result = await work
        cpu[name] += server_cpu(postmaster) - before
        return result

    messages = [bench_message(start + k, now) for k in range(batch)]
    await step("accept", asyncio.gather(*(store.accept(m, None) for m in messages)))
    claimed = await step("claim_due", store.claim_due(now + 1, batch))
    await step("record_submitted", asyncio.gather(*(
        store.record_submitted(m.id, PROVIDER, [SegmentSubmit(1, f"p{m.id}")], now)
        for m in claimed)))
    await step("apply_receipts", asyncio.gather(*(
        store.apply_receipts([ReceiptUpdate(PROVIDER, f"p{m.id}", MessageStatus.DELIVERED,
                                            None, now)]) for m in claimed)))
    return len(claimed)


@asynccontextmanager
async def throwaway_store(settings: str = "") -> AsyncIterator[tuple[PostgresStore, PgServer, str]]:
    """A PostgresStore open on a fresh database of a throw-away server (`settings`: more
    server options), that server and the database's DSN; all gone afterwards."""
    server = start_server(settings)
    try:
        dsn = await create_database(server.admin_dsn, server.socket_dsn)
        store = PostgresStore(dsn, instance="bench", pool_size=10)
        await store.open()
        try:
            yield store, server, dsn
        finally:
            await store.close()
    finally:
        server.discard()


async def run(messages: int, batch: int, vacuum: bool, settings: str) -> None:
    async with throwaway_store(settings) as (store, server, dsn):
        postmaster = int((Path(server.root) / "data" / "postmaster.pid").read_text().split()[0])
        cpu = dict.fromkeys(STEPS, 0.0)
        await _round(store, 0, batch, dict.fromkeys(STEPS, 0.0), postmaster)
        if vacuum:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute("VACUUM ANALYZE")
            finally:
                await conn.close()
        done = 0
        started = time.process_time()
        total_before = server_cpu(postmaster)
        while done < messages:
            done += await _round(store, batch + done, batch, cpu, postmaster)
        total = server_cpu(postmaster) - total_before
        client = time.process_time() - started
    print(f"{done} messages in rounds of {batch}: server CPU-µs per message")
    for name in STEPS:
        print(f"  {name:18s} {cpu[name] * 1e6 / done:6.0f}")
    print(f"  {'total':18s} {total * 1e6 / done:6.0f}   (this process: "
          f"{client * 1e6 / done:.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--vacuum", action="store_true")
    parser.add_argument("--settings", default="",
                        help='more server options, "-c name=value ..." (e.g. auto_explain\'s)')
    args = parser.parse_args()
    asyncio.run(run(args.messages, args.batch, args.vacuum, args.settings))


if __name__ == "__main__":
    main()

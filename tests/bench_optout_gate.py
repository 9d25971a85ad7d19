"""Micro-benchmark of the opt-out lookups on the accept path (PolicyGate.apply) and at send time
(SendCheck.screen), on a real store with no HTTP in the way.

    PYTHONPATH=$PWD python -m tests.bench_optout_gate [--messages N] [--rounds R] [--pg]

It stores 10,000 opt-outs for the account, then runs N transactional messages (to numbers
without a country profile and to Kosovo) and N marketing messages (Kosovo, at noon) through the
accept-path rules one at a time, and screens N transactional messages at send time in claims of
500. It prints microseconds per message: wall time (what a client waits) and CPU time of this
process (the machine is shared: wall time includes the neighbours). Run it on two trees to
compare them: the API it uses is the same before and after per-type opt-outs. With --pg it
runs against a throw-away PostgreSQL server (tests/pg.py) as well."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aggregator.config import AccountConfig
from aggregator.model import Encoding, Message, Sender, SenderKind
from aggregator.policy.gate import PolicyGate
from aggregator.policy.profiles import load_profiles
from aggregator.policy.sendcheck import SendCheck
from aggregator.store.sqlite import SqliteStore

NOON = datetime(2026, 6, 10, 10, 0, tzinfo=UTC).timestamp()  # 12:00 in Kosovo
PROFILES = Path(__file__).resolve().parent.parent / "aggregator" / "policy" / "countries"
OPTOUTS = 10_000
BATCH = 500
SMALL = 7  # a claim at 1,000 msg/s paced: on the event loop's connection (sqlite.POINT_KEYS)


def _message(i: int, to: str, region: str | None, message_class: str) -> Message:
    return Message(
        id=f"{i:032x}", account="shop", to=to, region=region,
        sender=Sender("ACME", SenderKind.ALPHANUMERIC), text="Your code is 1234",
        encoding=Encoding.GSM7, segments=1, concat_ref=0, message_class=message_class,
        created_at=NOON, next_attempt_at=NOON, expires_at=NOON + 86_400,
    )


async def _timed(n: int, one: Callable[[int], Awaitable[Any]]) -> tuple[float, float]:
    """(wall µs, CPU µs) per call."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        await one(i)
    return ((time.perf_counter() - wall) * 1e6 / n, (time.process_time() - cpu) * 1e6 / n)


async def run(store: Any, n: int, rounds: int) -> dict[str, tuple[float, float]]:
    for i in range(OPTOUTS):  # numbers not used below: a realistic index, no hits
        await store.add_optout("shop", f"+3834900{i:04d}", "api", NOON)
    accounts = {"shop": AccountConfig(name="shop", api_key="k")}
    profiles = load_profiles(PROFILES)
    gate = PolicyGate(profiles, accounts, store, clock=lambda: NOON)
    check = SendCheck(profiles, accounts, store, clock=lambda: NOON)
    cases: dict[str, Callable[[int], Awaitable[Any]]] = {
        "accept transactional, no profile (+44)": lambda i: gate.apply(
            _message(i, f"+4477009{i % 100000:05d}", "GB", "transactional"), "mobile"),
        "accept transactional, Kosovo": lambda i: gate.apply(
            _message(i, f"+3834412{i % 100000:05d}", "XK", "transactional"), "mobile"),
        "accept marketing, Kosovo": lambda i: gate.apply(
            _message(i, f"+3834512{i % 100000:05d}", "XK", "marketing"), "mobile"),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    results["send-time screen, transactional"] = []
    results[f"send-time screen, claims of {SMALL}"] = []
    batches = [[_message(b * BATCH + j, f"+3834412{(b * BATCH + j) % 100000:05d}", "XK",
                         "transactional") for j in range(BATCH)] for b in range(max(1, n // BATCH))]
    small = [batch[i:i + SMALL] for batch in batches for i in range(0, BATCH, SMALL)]
    n_small = sum(len(b) for b in small) / len(small)
    for _ in range(rounds):
        for name, one in cases.items():
            results[name].append(await _timed(n, one))
        wall, cpu = await _timed(len(batches), lambda b: check.screen(batches[b]))
        results["send-time screen, transactional"].append((wall / BATCH, cpu / BATCH))
        wall, cpu = await _timed(len(small), lambda b: check.screen(small[b]))
        results[f"send-time screen, claims of {SMALL}"].append((wall / n_small, cpu / n_small))
    return {name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
            for name, rs in results.items()}


def _print(backend: str, figures: dict[str, tuple[float, float]]) -> None:
    for name, (wall, cpu) in figures.items():
        print(f"{backend:8} {name:42} {wall:8.1f} µs wall {cpu:8.1f} µs CPU per message")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pg", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(str(Path(tmp) / "bench.db"))
        await store.open()
        try:
            _print("sqlite", await run(store, args.messages, args.rounds))
        finally:
            await store.close()
    if args.pg:
        from aggregator.store.postgres import PostgresStore
        from tests.pg import create_database, start_server

        server = start_server()
        try:
            pg = PostgresStore(await create_database(server), instance="bench")
            await pg.open()
            try:
                _print("postgres", await run(pg, args.messages, args.rounds))
            finally:
                await pg.close()
        finally:
            with contextlib.suppress(Exception):
                server.stop("immediate")
            shutil.rmtree(server.root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())

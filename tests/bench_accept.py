"""Micro-benchmark of the HTTP accept path's CPU in the process that serves it: the fast lane's
parse (fastpost.parse), HttpApi.fast_post (key, JSON, validation, number, rules, the store's
accept through a real SQLite writer process, the 202's bytes), as `bench` scenario f sends it
(random Kosovo numbers, the simulator's sender and text, the default country rules).

    PYTHONPATH=$PWD python -m tests.bench_accept [--messages N] [--rounds R] [--concurrency C]

It prints CPU microseconds of this process per message (best of R rounds; the writer process's
CPU is not counted) and the wall time. Run it on two trees to compare them."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path

from aggregator.config import parse_config
from aggregator.ingress import fastpost
from aggregator.ingress.accept import Acceptor
from aggregator.ingress.http import HttpApi
from aggregator.log import setup_logging
from aggregator.policy.gate import PolicyGate
from aggregator.policy.profiles import profiles_for
from aggregator.routing import Route, RouteTable
from aggregator.store.sqlite import SqliteStore
from simulator.harness import daemon_config

KEY = "bench-key"


def _request(to: str) -> bytes:
    """A request as the simulator's HTTP client writes it."""
    body = json.dumps({"to": to, "from": "LOAD", "text": "smsagg load test"}).encode()
    return (f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: "
            f"application/json\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {len(body)}"
            f"\r\n\r\n").encode() + body


async def run(messages: int, rounds: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config(daemon_config(1, {"path": str(Path(tmp) / "bench.db")},
                                            [{"name": "bench", "api_key": KEY}],
                                            provider={"max_tps": 1000}), "bench")
        store = SqliteStore(config.store.path)
        await store.open()
        try:
            accounts = {a.name: a for a in config.accounts}
            acceptor = Acceptor(
                store, RouteTable(Route.from_config(r) for r in config.routes), config.messages,
                max_pending=10**9, on_accepted=lambda: None, accounts=accounts,
                policy=PolicyGate(profiles_for(config.policy.countries), accounts, store))
            api = HttpApi(acceptor, store, config.accounts,
                          max_body_bytes=config.http.max_body_bytes, ready=lambda: (True, []))
            rng = random.Random(1)

            async def one(data: bytes) -> None:
                request = fastpost.parse(data, config.http.max_body_bytes)
                assert request is not None
                answer = await api.fast_post("127.0.0.1", request)
                assert answer.startswith(b"HTTP/1.1 202"), answer

            best_cpu, best_wall = float("inf"), float("inf")
            for _ in range(rounds + 1):  # the first round warms up
                data = [_request(f"+38344{rng.randrange(100000, 1000000)}")
                        for _ in range(messages)]
                wall, cpu = time.perf_counter(), time.process_time()
                for i in range(0, messages, concurrency):
                    await asyncio.gather(*(one(d) for d in data[i:i + concurrency]))
                cpu = (time.process_time() - cpu) * 1e6 / messages
                wall = (time.perf_counter() - wall) * 1e6 / messages
                best_cpu, best_wall = min(best_cpu, cpu), min(best_wall, wall)
            print(f"accept path: {best_cpu:.1f} µs CPU per message in this process "
                  f"({best_wall:.1f} µs wall), {messages} messages x {rounds} rounds, "
                  f"{concurrency} at a time")
        finally:
            await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    setup_logging("info")  # as the daemon runs: no per-message lines
    asyncio.run(run(args.messages, args.rounds, args.concurrency))


if __name__ == "__main__":
    main()

"""Micro-benchmark of the store's claim (the dispatcher's hot path) and of accepts, on the
writer's own connection with no event loop in the way.

    PYTHONPATH=$PWD python -m tests.bench_claim [--messages N] [--accounts K] [--batch B]

It stores N messages spread over K accounts (accept_many groups of 1,000, one transaction each),
then claims them in batches of B (one transaction each, as the writer does) until none is left,
and prints accepts/s and claims/s (messages per CPU second of this process: the machine is
shared, so wall time says more about the neighbours than about the code). Run it before and
after a change to claim_due."""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import tempfile
import time
from typing import Any

from aggregator.model import Encoding, Message, Sender, SenderKind
from aggregator.store import writes
from aggregator.store.rows import marketing_rows, message_row
from aggregator.store.sqlite_schema import open_database

NOW = 1_700_000_000.0


def _messages(n: int, accounts: int) -> list[Message]:
    return [
        Message(
            id=f"{i:032x}", account=f"acct{i % accounts}", to=f"+3834412{i % 100000:05d}",
            sender=Sender("Shop", SenderKind.ALPHANUMERIC), text="hello", encoding=Encoding.GSM7,
            segments=1, concat_ref=7, created_at=NOW + i / 1000, next_attempt_at=NOW + i / 1000,
            expires_at=NOW + 86_400,
        )
        for i in range(n)
    ]


def _claim(conn: Any, limit: int) -> int:
    fair = "held" in inspect.signature(writes.claim_due).parameters
    conn.execute("BEGIN IMMEDIATE")
    rows, _ = (writes.claim_due(conn, NOW + 10_000, limit, held={}) if fair
               else writes.claim_due(conn, NOW + 10_000, limit))
    conn.execute("COMMIT")
    return len(rows)


def run_once(n: int, accounts: int, batch: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.db")
        conn = open_database(path, writes.BUSY_TIMEOUT)
        messages = _messages(n, accounts)
        started = time.process_time()
        for i in range(0, n, 1000):
            chunk = messages[i:i + 1000]
            conn.execute("BEGIN IMMEDIATE")
            writes.accept_many(conn, [message_row(m) for m in chunk], marketing_rows(chunk))
            conn.execute("COMMIT")
        accepted = time.process_time() - started
        started = time.process_time()
        claimed = 0
        while (got := _claim(conn, batch)) > 0:
            claimed += got
        took = time.process_time() - started
        conn.close()
        assert claimed == n, (claimed, n)
        return n / accepted, n / took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--accounts", type=int, default=1)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = [run_once(args.messages, args.accounts, args.batch) for _ in range(args.rounds)]
    accepts = statistics.median(r[0] for r in results)
    claims = statistics.median(r[1] for r in results)
    print(f"messages={args.messages} accounts={args.accounts} batch={args.batch} "
          f"rounds={args.rounds}: accepts/s {accepts:,.0f}  claims/s {claims:,.0f} (medians)")


if __name__ == "__main__":
    main()

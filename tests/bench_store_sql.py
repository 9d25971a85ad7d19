"""Micro-benchmark of the SQLite statements a relayed message costs in the writer, without the
writer process, its framing or the daemon: writes.py's operations on one connection.

    PYTHONPATH=$PWD python tests/bench_store_sql.py [--messages 20000] [--group 10] [--rounds 3]
        [--sync] [--drop INDEX,...]

Per group of `group` messages, in one transaction: each is accepted alone (as the ingress
worker's accepts come), the group is claimed, recorded submitted in one record_submitted_many
and its delivery receipts applied in one apply_receipts. It prints CPU-µs per message of each
operation, the best of `rounds` runs (the machine is shared: its neighbours only ever add
time). Without --sync the commits do not wait for the disk (synchronous=OFF), so the
statements' own cost shows; with it (synchronous=FULL, as the store runs) the commit's too.
--drop drops indexes first, to price them. Destinations are random, as real ones are.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from typing import Any

from aggregator import model
from aggregator.model import Message, MessageStatus, ReceiptUpdate
from aggregator.store import writes
from aggregator.store.rows import message_row
from aggregator.store.sqlite_schema import open_database

PROVIDER = "opA"


def _message(i: int, now: float) -> Message:
    return Message(
        id=f"{int(now * 1000):012x}{i:020x}", account="shop",
        to=f"+3834{random.randrange(10 ** 8):08d}", region=None,
        sender=model.Sender("ACME", model.SenderKind.ALPHANUMERIC), text="Your code is 1234",
        encoding=model.Encoding.GSM7, segments=1, concat_ref=0, message_class="transactional",
        created_at=now, next_attempt_at=now, expires_at=now + 86_400,
    )


def one_run(conn: sqlite3.Connection, messages: int, group: int) -> dict[str, float]:
    """CPU seconds per operation for `messages` messages through their life."""
    spent = dict.fromkeys(("accept", "claim", "submitted", "receipt", "commit"), 0.0)

    def timed(name: str, fn: Callable[..., Any], *args: Any) -> Any:
        started = time.process_time()
        result = fn(*args)
        spent[name] += time.process_time() - started
        return result

    now = time.time()
    for start in range(0, messages, group):
        batch = [_message(start + i, now) for i in range(group)]
        rows = [message_row(m) for m in batch]
        conn.execute("BEGIN IMMEDIATE")
        for row in rows:
            timed("accept", writes.accept, conn, row, None)
        timed("claim", writes.claim_due_next, conn, now + 3600, group, {})
        timed("submitted", writes.record_submitted_many, conn,
              [(m.id, PROVIDER, [(1, m.id)], now) for m in batch])
        timed("receipt", writes.apply_receipts, conn,
              [ReceiptUpdate(PROVIDER, m.id, MessageStatus.DELIVERED, None, now) for m in batch])
        timed("commit", conn.execute, "COMMIT")
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--group", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sync", action="store_true", help="synchronous=FULL, as the store")
    parser.add_argument("--drop", default="", help="indexes to drop first, comma-separated")
    args = parser.parse_args()
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        random.seed(1)
        folder = tempfile.mkdtemp(prefix="bench-store-sql-")
        try:
            conn = open_database(os.path.join(folder, "smsagg.db"), 2.0)
            if not args.sync:
                conn.execute("PRAGMA synchronous=OFF")
            for index in filter(None, args.drop.split(",")):
                conn.execute(f"DROP INDEX {index}")
            spent = one_run(conn, args.messages, args.group)
            conn.close()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        total = sum(spent.values())
        if not best or total < best["total"]:
            best = {**spent, "total": total}
    print(", ".join(f"{name} {seconds * 1e6 / args.messages:.1f}"
                    for name, seconds in best.items()) + " CPU-µs per message")


if __name__ == "__main__":
    main()

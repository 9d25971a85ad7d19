"""Micro-benchmark of the store's writer process as a whole (its loop, framing, statements and
commits), driven over its socket in fixed rounds, so that the group sizes, unlike in a paced
run, do not depend on the machine's load.

    PYTHONPATH=$PWD python tests/bench_writer_loop.py [--rounds 1500] [--group 7] [--repeat 3]

Each round sends, in one write as the daemon's link does, `group` accepts (one call each, as an
ingress worker sends them), a claim, the submitted record of the round before's messages and
the delivery receipts of the round before that's, then waits for the writer's answer (one
group commit, synchronous=FULL). It prints the writer's CPU-µs per message, the best of
`repeat` runs. Run it on two trees back to back, PYTHONPATH naming each.

At the writer changes of issue 20 (recv_into one buffer, glibc's heap kept, the status index
gone), alternating with the tree before, best of 3 each, 3,000 rounds of 7, on the shared
2-core machine at load average 6: 94.8, 96.2, 100.0 before; 91.0, 99.5, 95.2 after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from aggregator.frames import FrameReader, frame
from aggregator.model import Message, MessageStatus, ReceiptUpdate
from aggregator.store.rows import message_row
from aggregator.store.sqlite_schema import open_database
from aggregator.store.writes import OPS
from aggregator.wire import Done, Ready, call, signature
from tests.bench_store_ops import _cpu, _message

PROVIDER = "opA"


class Driver:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = FrameReader()
        self.ids = 0

    def call(self, op: str, *args: Any) -> bytes:
        self.ids += 1
        return frame(call(self.ids, op, signature(OPS[op]).complete(args)))

    def receive(self, want: type) -> Any:
        while True:
            data = self.sock.recv(1 << 16)
            if not data:
                raise RuntimeError("the writer process ended")
            for obj in self.reader.feed(data):
                if isinstance(obj, want):
                    return obj


def one_run(rounds: int, group: int) -> float:
    folder = tempfile.mkdtemp(prefix="bench-writer-loop-")
    path = os.path.join(folder, "smsagg.db")
    open_database(path, 2.0).close()
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, "-m", "aggregator.store.writer_process", str(theirs.fileno()), path,
         "2.0", "1000", "0.0"], pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
    theirs.close()
    driver = Driver(ours)
    try:
        driver.receive(Ready)
        cpu0 = _cpu(proc.pid)
        now = time.time()
        batches: list[list[Message]] = []
        for r in range(rounds):
            batch = [_message(r * group + i, now) for i in range(group)]
            batches.append(batch)
            out = [driver.call("accept", message_row(m), None) for m in batch]
            out.append(driver.call("claim_due_next", now + 3600, group, {}))
            if r >= 1:
                out.append(driver.call("record_submitted_many", [
                    (m.id, PROVIDER, [(1, m.id)], now) for m in batches[r - 1]]))
            if r >= 2:
                out.append(driver.call("apply_receipts", [
                    ReceiptUpdate(PROVIDER, m.id, MessageStatus.DELIVERED, None, now)
                    for m in batches[r - 2]]))
            ours.sendall(b"".join(out))
            driver.receive(Done)
        return (_cpu(proc.pid) - cpu0) / (rounds * group)
    finally:
        ours.close()
        proc.wait(30)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1500)
    parser.add_argument("--group", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    best = min(one_run(args.rounds, args.group) for _ in range(args.repeat))
    print(f"writer process: {best * 1e6:.1f} CPU-µs per message "
          f"({args.group} messages a round, best of {args.repeat})")


if __name__ == "__main__":
    main()

"""Micro-benchmark of the SQLite store's path per relayed message, without HTTP or SMPP: what
the daemon and the writer process spend on the store's calls at a paced rate.

    PYTHONPATH=$PWD python tests/bench_store_ops.py [--rate 1000] [--seconds 8] [--window 20]

It accepts `rate` messages per second, one at a time, paced; a dispatcher as dispatch.py's
(claim what the window has room for, then wait for the next due time or a wake-up) takes them,
"submits" each (2 ms), records it submitted and, 5 ms later, applies its delivery receipt with
the others of that moment. It prints CPU-µs per message of this process (the driver included:
the same on both trees) and of the writer process, and the writer operations per message. The
store API is the Store protocol's, so it runs on any tree: run it on two, back to back, with
PYTHONPATH naming each."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from typing import Any

from aggregator import metrics, model
from aggregator.model import Message, ReceiptUpdate
from aggregator.store.sqlite import SqliteStore

SUBMIT_S = 0.002  # the provider's answer
RECEIPT_S = 0.005  # its receipt after that
IDLE = 0.5  # the dispatcher's idle poll (dispatch.IDLE_POLL)


def _cpu(pid: int) -> float:
    """utime + stime of `pid`, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _operations() -> dict[str, float]:
    """Writer operations answered so far, by name (the per-operation time's counts)."""
    return {sample.labels["op"]: sample.value
            for metric in metrics.store_operation_seconds.collect()
            for sample in metric.samples
            if sample.name.endswith("_count") and sample.labels.get("backend") == "sqlite"}


def _message(i: int, now: float) -> Message:
    return Message(
        id=f"{int(now * 1000):012x}{i:020x}", account="shop", to=f"+3834412{i % 10000:04d}",
        region=None, sender=model.Sender("ACME", model.SenderKind.ALPHANUMERIC),
        text="Your code is 1234", encoding=model.Encoding.GSM7, segments=1, concat_ref=0,
        message_class="transactional",
        created_at=now, next_attempt_at=now, expires_at=now + 86_400,
    )


class Relay:
    def __init__(self, store: SqliteStore, window: int) -> None:
        self.store = store
        self.window = window
        self.in_flight = 0
        self.wake = asyncio.Event()
        self.slot = asyncio.Event()
        self.receipts: list[ReceiptUpdate] = []
        self.relayed = 0
        self.tasks: set[asyncio.Task[Any]] = set()

    async def dispatch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            free = self.window - self.in_flight
            if free <= 0:
                self.slot.clear()
                await self.slot.wait()
                continue
            self.wake.clear()
            batch = await self.store.claim_due(time.time(), free)
            for m in batch:
                self.in_flight += 1
                task = asyncio.ensure_future(self.handle(m))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            if len(batch) < free:
                due = await self.store.next_due_at()
                wait = IDLE if due is None else min(IDLE, max(0.0, due - time.time()))
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), wait)

    async def handle(self, m: Message) -> None:
        await asyncio.sleep(SUBMIT_S)
        await self.store.record_submitted(m.id, "opA", [model.SegmentSubmit(1, m.id)], time.time())
        self.in_flight -= 1
        self.slot.set()
        self.relayed += 1
        await asyncio.sleep(RECEIPT_S)
        self.receipts.append(ReceiptUpdate("opA", m.id, model.MessageStatus.DELIVERED, None,
                                           time.time()))

    async def apply_receipts(self, stop: asyncio.Event) -> None:
        while not stop.is_set() or self.receipts or self.tasks:
            await asyncio.sleep(0.001)
            if self.receipts:
                batch, self.receipts = self.receipts, []
                await self.store.apply_receipts(batch)


async def run(rate: int, seconds: float, window: int) -> None:
    folder = tempfile.mkdtemp(prefix="bench-store-ops-")
    store = SqliteStore(os.path.join(folder, "smsagg.db"))
    await store.open()
    try:
        assert store.writer.proc is not None
        writer_pid = store.writer.proc.pid
        relay = Relay(store, window)
        stop = asyncio.Event()
        runners = [asyncio.ensure_future(relay.dispatch(stop)),
                   asyncio.ensure_future(relay.apply_receipts(stop))]
        accepts: set[asyncio.Task[Any]] = set()

        async def accept(i: int) -> None:
            await store.accept(_message(i, time.time()), None)
            relay.wake.set()

        cpu0, wcpu0, ops0 = time.process_time(), _cpu(writer_pid), store.commits
        calls0 = _operations()
        start = time.monotonic()
        n = int(rate * seconds)
        for i in range(n):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(accept(i))
            accepts.add(task)
            task.add_done_callback(accepts.discard)
        await asyncio.gather(*accepts)
        deadline = time.monotonic() + 30
        while relay.relayed < n and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        stop.set()
        relay.wake.set()
        await asyncio.gather(*runners[1:])
        runners[0].cancel()
        cpu, wcpu = time.process_time() - cpu0, _cpu(writer_pid) - wcpu0
        commits = store.commits - ops0
        calls = {op: count - calls0.get(op, 0) for op, count in _operations().items()}
        per = ", ".join(f"{op} {count / n:.3f}" for op, count in sorted(calls.items()) if count)
        print(f"{n} messages in {time.monotonic() - start:.1f} s, relayed {relay.relayed}: "
              f"CPU-µs/msg this process {cpu * 1e6 / n:.0f}, writer {wcpu * 1e6 / n:.0f}, "
              f"commits/msg {commits / n:.3f}; writer operations/msg: {per}; "
              f"final {await store.count_by_status()}")
    finally:
        await store.close()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--window", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(run(args.rate, args.seconds, args.window))


if __name__ == "__main__":
    main()

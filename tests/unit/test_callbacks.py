"""The callback sender against a scripted outbox: delivered callbacks leave the outbox in one
write per loop turn, and none is sent twice while that write is pending or after it failed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

from aggregator.config import CallbacksConfig
from aggregator.notify.callbacks import CallbackSender
from aggregator.store.base import CallbackJob, StoreError
from tests.helpers import callback_sink, wait_for

LOCAL = ("127.0.0.0/8",)  # the sink's address, which callbacks may not reach by default


class Outbox:
    """The store's callback outbox: a job is due until callbacks_done drops it."""

    def __init__(self, url: str, count: int) -> None:
        self.jobs = {
            i: CallbackJob(i, f"m{i}", url, json.dumps({"id": f"m{i}"}), 0)
            for i in range(1, count + 1)
        }
        self.drops: list[list[int]] = []  # every callbacks_done call's ids
        self.polls = 0
        self.release = asyncio.Event()  # callbacks_done waits for it
        self.fail_next = 0  # callbacks_done calls to fail

    async def due_callbacks(self, now: float, limit: int,
                            per_destination: int | None = None) -> list[CallbackJob]:
        self.polls += 1
        return list(self.jobs.values())[:limit]

    async def callbacks_done(self, job_ids: Sequence[int]) -> None:
        self.drops.append(list(job_ids))
        await self.release.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise StoreError("store write failed: disk I/O error")
        for job_id in job_ids:
            del self.jobs[job_id]


async def poll_once(sender: CallbackSender, outbox: Outbox) -> None:
    polls = outbox.polls
    sender.wake()
    await wait_for(lambda: outbox.polls > polls, what="a poll")


async def test_delivered_callbacks_leave_the_outbox_together_and_are_sent_once() -> None:
    async with callback_sink() as sink:
        outbox = Outbox(sink.url, 20)
        config = CallbacksConfig(concurrency=32, allowed_networks=LOCAL)
        sender = CallbackSender(outbox, config)  # type: ignore[arg-type]
        sender.start()
        try:
            await sink.wait_count(20)
            await wait_for(lambda: len(outbox.drops) >= 1, what="a drop")
            # Polls while the drop is pending still list every job: none may go out again.
            for _ in range(3):
                await poll_once(sender, outbox)
            outbox.release.set()
            await wait_for(lambda: not outbox.jobs, what="the outbox emptied")
            await poll_once(sender, outbox)
        finally:
            await sender.stop()
    assert sorted(m["id"] for m in sink.received) == sorted(f"m{i}" for i in range(1, 21))
    assert sorted(i for ids in outbox.drops for i in ids) == list(range(1, 21))
    assert len(outbox.drops) < 20  # grouped, not one write per callback


async def test_a_failed_drop_is_retried_without_sending_again() -> None:
    async with callback_sink() as sink:
        outbox = Outbox(sink.url, 5)
        outbox.fail_next = 1
        outbox.release.set()
        config = CallbacksConfig(concurrency=8, allowed_networks=LOCAL)
        sender = CallbackSender(outbox, config)  # type: ignore[arg-type]
        sender.start()
        try:
            await sink.wait_count(5)
            await wait_for(lambda: not outbox.jobs, timeout=5.0,
                           what="the outbox emptied after a failed drop")
        finally:
            await sender.stop()
    assert len(sink.received) == 5
    assert len(outbox.drops) >= 2


async def test_stop_waits_for_the_pending_drop() -> None:
    async with callback_sink() as sink:
        outbox = Outbox(sink.url, 3)
        config = CallbacksConfig(concurrency=8, allowed_networks=LOCAL)
        sender = CallbackSender(outbox, config)  # type: ignore[arg-type]
        sender.start()
        await sink.wait_count(3)
        await wait_for(lambda: len(outbox.drops) >= 1, what="a drop")
        outbox.release.set()
        await sender.stop()
    assert not outbox.jobs

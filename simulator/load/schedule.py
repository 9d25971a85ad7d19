"""Pacing: requests issued at a target rate with a bounded number in flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from simulator.load.options import LoadOptions

_STOP_CHECK = 0.05  # seconds a sender sleeps at most before it looks at the stop event again

# issue(first message index, number of messages): sends one request and records its outcome.
Issue = Callable[[int, int], Awaitable[None]]


async def schedule(options: LoadOptions, issue: Issue, slots: int, unit: int, start: float,
                   stop: asyncio.Event) -> None:
    """Issue requests of up to `unit` messages with at most `slots` in flight.

    Message i is due at start + i / rate. `slots` senders take the next index in turn and sleep
    only when it is not yet due, so when they are behind they issue back to back (as many as are
    free) and catch up. No task or semaphore per request: at thousands of requests a second the
    load generator's own CPU is taken from the daemon it measures."""
    count = options.count
    if count is None and options.duration is None:
        count = 1000
    deadline = start + options.duration if options.duration is not None else None
    rate = options.rate
    next_index = 0

    async def sender() -> None:
        nonlocal next_index
        while not stop.is_set():
            first = next_index
            n = unit if count is None else min(unit, count - first)
            if n <= 0:
                return
            due = start + first / rate if rate > 0 else 0.0
            if deadline is not None and due >= deadline:
                return
            next_index = first + n
            while True:
                now = time.perf_counter()
                if deadline is not None and now >= deadline:
                    return
                if due <= now:
                    break
                await asyncio.sleep(min(due - now, _STOP_CHECK))
                if stop.is_set():
                    return
            await issue(first, n)

    await asyncio.gather(*(sender() for _ in range(slots)))

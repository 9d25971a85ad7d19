"""Country throughput: a profile's [throughput] limits (SMS parts per second and per minute to
that country, over every provider) as sliding windows per country: at most N parts in ANY window
of that length, exactly. Self-contained: dispatch only calls ``take`` before it submits a
message (issue 19 item 10)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping

from aggregator import metrics
from aggregator.policy.profiles import CountryProfile


class _Window:
    """The send times of the last ``limit`` parts within ``span`` seconds."""

    __slots__ = ("limit", "sent", "span")

    def __init__(self, limit: int, span: float) -> None:
        self.limit = limit
        self.span = span
        self.sent: deque[float] = deque()

    def wait(self, now: float, cost: int) -> float:
        """Seconds until ``cost`` more parts fit (a cost above the limit waits for an empty
        window, so a long message is never stuck)."""
        while self.sent and self.sent[0] <= now - self.span:
            self.sent.popleft()
        over = len(self.sent) + min(cost, self.limit) - self.limit
        if over <= 0:
            return 0.0
        return self.sent[over - 1] + self.span - now

    def add(self, now: float, cost: int) -> None:
        self.sent.extend([now] * cost)
        while len(self.sent) > max(self.limit, cost):  # only the newest matter
            self.sent.popleft()


class CountryThroughput:
    def __init__(self, profiles: Mapping[str, CountryProfile],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, tuple[_Window, ...]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        for region, profile in profiles.items():
            limits = profile.throughput
            windows = []
            if limits.max_per_second is not None:
                windows.append(_Window(limits.max_per_second, 1.0))
            if limits.max_per_minute is not None:
                windows.append(_Window(limits.max_per_minute, 60.0))
            if windows:
                self._windows[region] = tuple(windows)

    def reserve(self, region: str | None, cost: int = 1) -> float:
        """Count ``cost`` parts sent now if every window of ``region`` has room (0.0); else
        count nothing and return the seconds to wait before asking again."""
        windows = self._windows.get(region or "")
        if not windows:
            return 0.0
        now = self._clock()
        wait = max(w.wait(now, cost) for w in windows)
        if wait <= 0.0:
            for w in windows:
                w.add(now, cost)
            return 0.0
        return wait

    async def take(self, region: str | None, cost: int = 1) -> None:
        """Wait until the country's limits let ``cost`` more SMS parts go (FIFO per country)."""
        if not region or region not in self._windows:
            return
        lock = self._locks.setdefault(region, asyncio.Lock())
        async with lock:
            waited = False
            while (wait := self.reserve(region, cost)) > 0:
                if not waited:
                    metrics.country_rate_waits.labels(region).inc()
                    waited = True
                await asyncio.sleep(wait)

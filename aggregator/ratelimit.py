"""The token bucket every rate limit uses: a provider's binds (with additive-increase /
multiplicative-decrease when the operator throttles us), routes, an account's HTTP and SMPP
request rate (auth.RateLimit, the SMPP server) and the simulated SMSC's max_tps."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable


class TokenBucket:
    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.max_rate = rate
        self.rate = rate
        self._fixed_burst = burst
        self._clock = clock or asyncio.get_running_loop().time
        self._tokens = self.burst
        self._stamp = self._clock()
        self._last_cut = float("-inf")
        self._last_grow = self._stamp
        # Recent successes, to learn the rate the operator really takes when it throttles.
        self._ok_times: deque[float] = deque(maxlen=max(16, int(rate * 2)))
        self._lock = asyncio.Lock()

    @property
    def burst(self) -> float:
        # A tenth of a second of the current rate: after a throttle the burst shrinks too, so
        # a pause cannot save up a volley the operator would refuse.
        return self._fixed_burst if self._fixed_burst is not None else max(1.0, self.rate / 10)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def try_take(self, cost: float = 1.0) -> float:
        """Take ``cost`` tokens if they are there: 0.0; otherwise the seconds until they will
        be. A cost above the burst (a batch) passes on a full bucket, which then goes below
        zero: later takes wait until it has refilled, so the long-run rate holds."""
        self._refill()
        needed = min(cost, self.burst)
        if self._tokens >= needed:
            self._tokens -= cost
            return 0.0
        return (needed - self._tokens) / self.rate

    async def take(self) -> None:
        # The lock keeps waiters in FIFO order instead of all waking at once.
        async with self._lock:
            while (wait := self.try_take()) > 0:
                await asyncio.sleep(wait)

    def slow_down(self) -> None:
        """The operator said throttled / queue full. Drop to just under what it accepted in the
        last second (or by 30% if that says little), floor 1/s. Answers to submits already in
        flight say the same thing again, so at most one cut per quarter second."""
        now = self._clock()
        if now - self._last_cut < 0.25:
            return
        self._last_cut = now
        self._last_grow = now
        self._refill()
        accepted = sum(1 for t in self._ok_times if t >= now - 1.0)
        target = self.rate * 0.7
        if accepted >= 5:
            target = min(target, 0.95 * accepted)
        self.rate = max(min(1.0, self.max_rate), target)
        self._tokens = min(self._tokens, 0.0)

    def recover(self) -> None:
        """A success: grow by 5% of the current rate per second, so the rate creeps up to the
        operator's limit (one throttle now and then) instead of bouncing off it."""
        now = self._clock()
        self._ok_times.append(now)
        if self.rate < self.max_rate:
            growth = max(1.0, self.rate * 0.05) * (now - self._last_grow)
            self.rate = min(self.max_rate, self.rate + growth)
        self._last_grow = now

    def set_rate(self, rate: float, *, burst: float | None = None) -> None:
        """A new fixed rate and burst, as a limit changed by hand: the time since the last take
        refills at the old rate, capped at the new burst."""
        now = self._clock()
        refilled = self._tokens + (now - self._stamp) * self.rate
        self.rate = self.max_rate = rate
        self._fixed_burst = burst
        self._tokens = min(self.burst, refilled)
        self._stamp = now

    def set_max_rate(self, rate: float) -> None:
        """A new ceiling (this instance's share of the provider's rate changed): the current
        rate scales with it, so a rate the operator cut keeps its proportion."""
        if rate <= 0 or rate == self.max_rate:
            return
        self._refill()
        self.rate = min(rate, self.rate * rate / self.max_rate)
        self.max_rate = rate
        self._tokens = min(self._tokens, self.burst)

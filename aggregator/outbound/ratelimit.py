"""Token bucket shared by the binds of one provider, with additive-increase/multiplicative-decrease
when the operator throttles us."""

from __future__ import annotations

import asyncio
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
        # A tenth of a second of burst keeps the rate smooth at the operator's side.
        self.burst = burst if burst is not None else max(1.0, rate / 10)
        self._clock = clock or asyncio.get_running_loop().time
        self._tokens = self.burst
        self._stamp = self._clock()
        self._last_cut = float("-inf")
        self._last_grow = self._stamp
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def try_take(self) -> float:
        """Take a token if one is there: 0.0; otherwise the seconds until one will be."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    async def take(self) -> None:
        # The lock keeps waiters in FIFO order instead of all waking at once.
        async with self._lock:
            while (wait := self.try_take()) > 0:
                await asyncio.sleep(wait)

    def slow_down(self) -> None:
        """The operator said throttled / queue full: cut our rate by 30% (down to 1/s, or the
        configured rate if lower). Answers to submits already in flight say the same thing
        again, so one cut per quarter second."""
        now = self._clock()
        if now - self._last_cut < 0.25:
            return
        self._last_cut = now
        self._last_grow = now
        self._refill()
        self.rate = max(min(1.0, self.max_rate), self.rate * 0.7)
        self._tokens = min(self._tokens, 0.0)

    def recover(self) -> None:
        """A success: grow back towards the configured rate by 5% of it per second, so the
        rate settles just under what the operator takes instead of bouncing off it."""
        now = self._clock()
        if self.rate < self.max_rate:
            self.rate = min(self.max_rate,
                            self.rate + self.max_rate * 0.05 * (now - self._last_grow))
        self._last_grow = now

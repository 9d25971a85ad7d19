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
        """The operator said throttled / queue full: halve our rate (down to 1/s, or the
        configured rate if that is lower)."""
        self.rate = max(min(1.0, self.max_rate), self.rate / 2)
        self._tokens = min(self._tokens, 0.0)

    def recover(self) -> None:
        """A success: creep back towards the configured rate (1% of it per success)."""
        if self.rate < self.max_rate:
            self.rate = min(self.max_rate, self.rate + max(0.01, self.max_rate * 0.01))

"""Per-provider circuit breaker: open after a run of failures, one probe after a cool-down
(half-open), closed again on success."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum

from aggregator import metrics
from aggregator.log import get_logger

log = get_logger("smsagg.health")


class BreakerState(IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        provider: str,
        failure_threshold: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._probe_out = False
        self._gauge = metrics.breaker_state.labels(provider)
        self._gauge.set(0)

    def _set(self, state: BreakerState) -> None:
        if state is not self.state:
            log.warning("breaker", provider=self.provider, state=state.name.lower(),
                        failures=self.failures)
            self.state = state
            self._gauge.set(int(state))

    def allow(self) -> bool:
        """May a message go to this provider now? In half-open, exactly one may (the probe)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self.cooldown:
                return False
            self._set(BreakerState.HALF_OPEN)
            self._probe_out = False
        if self._probe_out:
            return False
        self._probe_out = True
        return True

    def success(self) -> None:
        if self.state is BreakerState.CLOSED and not self.failures and not self._probe_out:
            return  # the usual answer: nothing to change (one a message)
        self.failures = 0
        self._probe_out = False
        self._set(BreakerState.CLOSED)

    def failure(self) -> None:
        self.failures += 1
        self._probe_out = False
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED and self.failures >= self.failure_threshold
        ):
            self._opened_at = self._clock()
            self._set(BreakerState.OPEN)

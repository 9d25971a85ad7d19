"""The binds of one provider: the provider's rate shared by all binds, the next submit on the bind
with the most free window, and every submit_sm outcome classified into an `Outcome`."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiosmpplib import NPI, TON, PhoneNumber, SubmitSm

from aggregator import metrics
from aggregator.config import ProviderConfig
from aggregator.log import get_logger
from aggregator.model import Sender
from aggregator.outbound import errors
from aggregator.outbound.connection import Bind, DeliverHandler
from aggregator.outbound.errors import Outcome
from aggregator.outbound.health import BreakerState, CircuitBreaker
from aggregator.outbound.ratelimit import TokenBucket
from aggregator.receipts import normalise_submit_id
from aggregator.smpp.session import WindowFull
from aggregator.smpp.transport import ConnectionLost, RequestTimeout

log = get_logger("smsagg.outbound")


@dataclass(slots=True, frozen=True)
class SubmitRequest:
    message_id: str
    seq: int
    sender: Sender
    to: str  # E.164 with '+'
    data_coding: int
    esm_class: int
    payload: bytes


@dataclass(slots=True, frozen=True)
class SubmitResult:
    outcome: Outcome
    provider_msg_id: str | None = None  # normalised for receipt matching
    error: str | None = None  # human text: SMPP status by name, or what went wrong
    reason: str = "ok"  # bounded label: status name, timeout, connection_lost, no_bind


def build_submit_sm(req: SubmitRequest) -> Any:
    pdu = SubmitSm(
        short_message="-",  # replaced by the pre-encoded octets (UDH included)
        source=PhoneNumber(req.sender.address, TON(req.sender.ton), NPI(req.sender.npi)),
        destination=PhoneNumber(req.to.lstrip("+"), TON.INTERNATIONAL, NPI.ISDN),
        esm_class=req.esm_class,
        registered_delivery=1,
        encoding="ucs2" if req.data_coding == 8 else None,
        log_id=req.message_id,
    )
    pdu.set_encoded_message(req.payload)
    return pdu


class ProviderPool:
    THROTTLE_RETRIES = 8  # slow-down answers retried here before the message goes back to store
    NO_BIND_WAIT = 2.0  # seconds a submit waits for a bind to come up

    def __init__(self, config: ProviderConfig, on_deliver: DeliverHandler) -> None:
        self.config = config
        self.name = config.name
        self.binds = [
            Bind(config, i + 1, on_deliver, self._wake, self._bind_up) for i in range(config.binds)
        ]
        self.breaker = CircuitBreaker(config.name, config.breaker_failures,
                                      config.breaker_cooldown)
        self._bucket: TokenBucket | None = None
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._latency = metrics.submit_latency.labels(self.name)
        self._ok = metrics.submits.labels(self.name, "ok")
        self.on_bind_change: Callable[[], None] | None = None
        self.on_bind_up: Callable[[], None] | None = None
        # Ids answered in submit_sm_resp whose store record is not committed yet: a receipt for
        # one waits for that commit instead of missing it (bounded by submits in flight).
        self._unrecorded: dict[str, asyncio.Future[None]] = {}

    @property
    def binds_up(self) -> int:
        return sum(1 for b in self.binds if b.up)

    @property
    def in_flight(self) -> int:
        return sum(b.in_flight for b in self.binds)

    @property
    def bucket(self) -> TokenBucket:
        if self._bucket is None:
            self._bucket = TokenBucket(self.config.max_tps)
        return self._bucket

    def recorded(self, provider_msg_ids: Iterable[str]) -> None:
        """The dispatcher committed (or gave up on) these ids: receipts may look them up."""
        for msg_id in provider_msg_ids:
            fut = self._unrecorded.pop(msg_id, None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    async def wait_recorded(self, provider_msg_id: str) -> None:
        fut = self._unrecorded.get(provider_msg_id)
        if fut is not None:
            await asyncio.shield(fut)

    def start(self) -> None:
        _ = self.bucket
        for bind in self.binds:
            bind.start()

    async def stop(self) -> None:
        await asyncio.gather(*(b.stop() for b in self.binds))

    def _wake(self) -> None:
        # With no bind left, every waiter must learn it now and fail over, not time out.
        free = sum(b.free_window for b in self.binds) if self.binds_up else len(self._waiters)
        while free > 0 and self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                free -= 1
        if self.on_bind_change is not None:
            self.on_bind_change()

    def _bind_up(self) -> None:
        if self.on_bind_up is not None:
            self.on_bind_up()

    def _best_bind(self) -> Bind | None:
        best: Bind | None = None
        best_free = 0
        for bind in self.binds:
            free = bind.free_window
            if free > best_free:
                best, best_free = bind, free
        return best

    async def _acquire(self) -> Bind | None:
        bind = self._best_bind()
        if bind is not None and not self._waiters:
            return bind
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.NO_BIND_WAIT if self.binds_up == 0 else 30.0)
        while True:
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            try:
                await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
            except TimeoutError:
                return None
            finally:
                if not fut.done():
                    fut.cancel()
            bind = self._best_bind()
            if bind is not None:
                return bind
            if self.binds_up == 0 or loop.time() >= deadline:
                return None

    async def submit(self, req: SubmitRequest) -> SubmitResult:
        """Send one segment; retries slow-down answers here with a lower rate."""
        result = SubmitResult(Outcome.FAILOVER, error="not sent", reason=errors.NO_BIND)
        for _ in range(self.THROTTLE_RETRIES):
            result = await self._submit_once(req)
            if result.outcome is not Outcome.SLOW_DOWN:
                return result
            metrics.retries.labels(self.name, result.reason).inc()
        return result

    async def _submit_once(self, req: SubmitRequest) -> SubmitResult:
        if self.binds_up == 0 and not self._waiters:
            # Do not hold a token while no bind can take the segment.
            bind = await self._acquire()
            if bind is None:
                metrics.submits.labels(self.name, errors.NO_BIND).inc()
                return SubmitResult(Outcome.FAILOVER, error="no bind up", reason=errors.NO_BIND)
        await self.bucket.take()
        bind = await self._acquire()
        if bind is None:
            metrics.submits.labels(self.name, errors.NO_BIND).inc()
            return SubmitResult(Outcome.FAILOVER, error="no bind up", reason=errors.NO_BIND)
        if self.breaker.state is BreakerState.OPEN:
            # It opened while this segment waited for a slot: do not send into a known fault.
            return SubmitResult(Outcome.FAILOVER, error="circuit breaker open",
                                reason=errors.BREAKER_OPEN)
        started = time.monotonic()
        try:
            resp = await bind.request(build_submit_sm(req))
        except WindowFull:  # cannot happen after _acquire in the same turn; be safe
            return SubmitResult(Outcome.SLOW_DOWN, error="window full", reason="window_full")
        except RequestTimeout:
            metrics.submits.labels(self.name, errors.TIMEOUT).inc()
            return SubmitResult(Outcome.FAILOVER, error="submit_sm response timeout",
                                reason=errors.TIMEOUT)
        except (ConnectionLost, ConnectionError) as exc:
            metrics.submits.labels(self.name, errors.CONNECTION_LOST).inc()
            return SubmitResult(Outcome.FAILOVER, error=f"connection lost: {exc}",
                                reason=errors.CONNECTION_LOST)
        except Exception as exc:  # e.g. NotBound after the bind dropped
            metrics.submits.labels(self.name, errors.CONNECTION_LOST).inc()
            return SubmitResult(Outcome.FAILOVER, error=f"{type(exc).__name__}: {exc}",
                                reason=errors.CONNECTION_LOST)
        self._latency.observe(time.monotonic() - started)
        status = int(resp.command_status)
        outcome = errors.classify(status)
        if outcome is Outcome.OK:
            self._ok.inc()
            self.bucket.recover()
            msg_id = normalise_submit_id(str(resp.message_id), self.config.receipt_id)
            if msg_id not in self._unrecorded:
                self._unrecorded[msg_id] = asyncio.get_running_loop().create_future()
            return SubmitResult(Outcome.OK, provider_msg_id=msg_id)
        name = errors.status_name(status)
        metrics.submits.labels(self.name, name).inc()
        if outcome is Outcome.SLOW_DOWN:
            self.bucket.slow_down()
        return SubmitResult(outcome, error=errors.describe(status), reason=name)

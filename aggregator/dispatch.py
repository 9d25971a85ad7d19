"""Takes due messages from the store, picks a provider from the route, submits every segment
through its pool, and turns the outcome into the next durable state: submitted, retry later, or
failed. The store is the only source of work, so a restart resumes from the last commit."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import ParamSpec, TypeVar

from aggregator import metrics
from aggregator.config import MessagesConfig
from aggregator.log import get_logger
from aggregator.model import FinalNotice, Message, MessageStatus, SegmentSubmit
from aggregator.outbound import errors
from aggregator.outbound.errors import Outcome
from aggregator.outbound.fairqueue import FairGate
from aggregator.outbound.pool import ProviderPool, SubmitRequest, SubmitResult
from aggregator.policy.sendcheck import CHECK_FAILED, Hold, Refuse, SendCheck, Verdict
from aggregator.policy.throughput import CountryThroughput
from aggregator.ratelimit import TokenBucket
from aggregator.routing import Route, RouteTable
from aggregator.store.base import NO_PROVIDER, Store, StoreError
from aggregator.text import EncodedMessage, encode_message
from aggregator.timefmt import iso_utc

log = get_logger("smsagg.dispatch")

CLAIM_BATCH = 500
IDLE_POLL = 1.0  # seconds between looks at the store when nothing woke us
STORE_RETRY_MIN = 0.05  # seconds before writing an outcome again after the store failed
STORE_RETRY_MAX = 1.0

P = ParamSpec("P")
T = TypeVar("T")


class Dispatcher:
    def __init__(
        self,
        store: Store,
        routes: RouteTable,
        pools: Mapping[str, ProviderPool],
        config: MessagesConfig,
        on_final: Callable[[FinalNotice], None],
        *,
        max_in_flight: int,
        clock: Callable[[], float] = time.time,
        send_check: SendCheck | None = None,
    ) -> None:
        self._store = store
        self._routes = routes
        self._pools = pools
        self._config = config
        self._on_final = on_final
        self._max_in_flight = max_in_flight
        self.clock = clock
        # Rules checked again when a message is taken for sending; None: none.
        self.send_check = send_check
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._stopping = False
        self._runner: asyncio.Task[None] | None = None
        self._route_buckets: dict[Route, TokenBucket] = {}
        # Country [throughput] limits over every provider (policy/throughput.py); None: none.
        self.country_limits: CountryThroughput | None = None
        self._route_gates: dict[Route, FairGate] = {}  # waits for a route's max_tps, fairly
        # Ids of the claimed messages in hand: the PostgreSQL store renews only their leases,
        # so a claim whose answer was lost (the database went away) runs out and is sent.
        self.holding: set[str] = set()
        # Messages in flight per account: the store's claim shares free slots fairly by it.
        self._held: dict[str, int] = {}
        self._watched: set[str] = set()  # accounts whose in-flight gauge reads _held
        self._accept_to_submit = metrics.batched(metrics.accept_to_submit)
        # The logger's debug, looked up once: through the module's lazy proxy it cost about
        # 1.5 us a message even with debug off (a no-op then).
        self._log_debug = log.bind().debug

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def max_in_flight(self) -> int:
        """Messages handled at once; the store keeps the rest."""
        return self._max_in_flight

    @max_in_flight.setter
    def max_in_flight(self, value: int) -> None:
        self._max_in_flight = value
        self._slot_free.set()

    def routes_changed(self) -> None:
        """The route table was reloaded: forget the rate buckets of routes that are gone."""
        live = set(self._routes.routes)
        self._route_buckets = {r: b for r, b in self._route_buckets.items() if r in live}
        self._route_gates = {r: g for r, g in self._route_gates.items() if r in live}

    def wake(self) -> None:
        """New work was committed (or a bind came up): look at the store now."""
        self._wake.set()

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="dispatcher")

    async def stop(self, deadline: float) -> None:
        """Take no new work; let submits in flight finish until the deadline (monotonic)."""
        self._stopping = True
        self._wake.set()
        if self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)
        if self._tasks:
            _, pending = await asyncio.wait(
                self._tasks, timeout=max(0.0, deadline - time.monotonic())
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _run(self) -> None:
        while not self._stopping:
            free = self._max_in_flight - len(self._tasks)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            self._wake.clear()
            claim_started = time.monotonic()
            try:
                batch = await self._store.claim_due(self.clock(), min(free, CLAIM_BATCH),
                                                    self._held)
            except StoreError as exc:
                metrics.store_errors.labels("claim_due").inc()
                log.error("claim_failed", error=str(exc))
                await self._sleep_or_wake(IDLE_POLL)
                continue
            self.holding.update(m.id for m in batch)
            verdicts = await self._screen(batch) if self.send_check is not None else {}
            claimed: dict[str, int] = {}
            for message in batch:
                task = asyncio.create_task(self._handle(message, verdicts.get(message.id)))
                self._tasks.add(task)
                self._count_in_flight(message.account)
                claimed[message.account] = claimed.get(message.account, 0) + 1
                # One done callback, not four (with a partial and a lambda): about 2 us a message.
                task.add_done_callback(functools.partial(self._done, message.id, message.account))
            for account, count in claimed.items():  # once per account a claim, not a message
                metrics.child(metrics.dispatch_claimed, account).inc(count)
            if batch:
                metrics.dispatch_claims.inc()
            if len(batch) < min(free, CLAIM_BATCH):
                await self._sleep_or_wake(await self._idle_wait())
                if batch:  # an empty claim (an idle look) has no company to gather for
                    await self._gather_claims(claim_started)

    async def _gather_claims(self, claim_started: float) -> None:
        """After a claim that took messages and all that was due, the next starts no sooner
        than [messages] claim_gather_ms after it: at paced rates one claim then takes the
        messages of several accepts, and they go out, are recorded and have their receipts
        applied in fewer, bigger batches. Scenario f: 20 ms took about 15 us a message off the
        daemon and a few off the writer (docs/performance.md); a message waits at most that
        much longer, and only while claims that take messages follow each other that closely."""
        gap = self._config.claim_gather_ms / 1000 - (time.monotonic() - claim_started)
        if gap > 0 and not self._stopping:
            self._log_debug("claim_gather", wait_ms=round(gap * 1000, 1))
            await asyncio.sleep(gap)

    async def _screen(self, batch: list[Message]) -> dict[str, Verdict]:
        """The send-time rules' verdicts on a claimed batch; when their state cannot be read,
        the messages they apply to wait a little rather than go unchecked."""
        check = self.send_check
        if check is None or not batch:
            return {}
        try:
            return await check.screen(batch)
        except StoreError as exc:
            metrics.store_errors.labels("send_check").inc()
            log.error("send_check_failed", error=str(exc), retry_in=IDLE_POLL)
            until = self.clock() + IDLE_POLL
            return {m.id: Hold(until, CHECK_FAILED, "the rules' state could not be read")
                    for m in batch if check.needs(m)}

    async def _apply_rule(self, message: Message, verdict: Verdict) -> None:
        """A rule checked at send time said no: rejected (opt-out) or held until it may go."""
        if isinstance(verdict, Refuse):
            metrics.send_rules.labels("rejected", verdict.reason).inc()
            log.info("send_rule_rejected", message_id=message.id, account=message.account,
                     reason=verdict.reason)
            await self._finish(message, MessageStatus.REJECTED, verdict.error)
            return
        if verdict.until >= message.expires_at:
            await self._finish(message, MessageStatus.EXPIRED,
                               f"validity period elapsed before {verdict.reason} "
                               "allowed sending")
            return
        metrics.send_rules.labels("held", verdict.reason).inc()
        log.info("send_rule_held", message_id=message.id, account=message.account,
                 reason=verdict.reason, until=iso_utc(verdict.until))
        await self._durably(message, self._store.hold, message.id, verdict.until,
                            f"{verdict.reason}: {verdict.detail}")

    async def _idle_wait(self) -> float:
        try:
            due = await self._store.next_due_at()
        except StoreError:
            return IDLE_POLL
        if due is None:
            return IDLE_POLL
        return min(IDLE_POLL, max(0.0, due - self.clock()))

    async def _sleep_or_wake(self, seconds: float) -> None:
        if seconds <= 0 or self._stopping or self._wake.is_set():
            return
        # A timer that wakes us rather than wait_for, which makes a task per wait (one every
        # few messages at 1,000 msg/s).
        timer = asyncio.get_running_loop().call_later(seconds, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()

    def _count_in_flight(self, account: str) -> None:
        held = self._held.get(account)
        self._held[account] = 1 if held is None else held + 1
        if account not in self._watched:
            # The gauge reads the count when scraped: no gauge update per message.
            self._watched.add(account)
            metrics.child(metrics.dispatch_in_flight, account).set_function(
                lambda: self._held.get(account, 0))

    def _done(self, message_id: str, account: str, task: asyncio.Task[None]) -> None:
        """A message's task ended: let its claim go, count it out, free its slot."""
        self.holding.discard(message_id)
        left = self._held[account] - 1
        if left:
            self._held[account] = left
        else:
            del self._held[account]
        self._task_done(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("dispatch_task_failed", error=repr(task.exception()))

    async def _route_rate(self, route: Route, account: str) -> None:
        """Wait for the route's max_tps; waiting accounts take turns."""
        if route.max_tps is None:
            return
        gate = self._route_gates.get(route)
        if gate is None:
            bucket = self._route_buckets[route] = TokenBucket(route.max_tps)
            gate = self._route_gates[route] = FairGate(bucket.try_take)
        turn = gate.enter(account)
        if turn is not None:
            metrics.route_rate_waits.labels(route.name).inc()
            await turn

    async def _handle(self, message: Message, verdict: Verdict | None = None) -> None:
        now = self.clock()
        if now >= message.expires_at:
            await self._finish(message, MessageStatus.EXPIRED, "validity period elapsed")
            return
        if verdict is not None:
            await self._apply_rule(message, verdict)
            return
        route = self._routes.lookup(message.to, message.message_class)
        if route is None:
            await self._finish(message, MessageStatus.FAILED, "no route to destination")
            return
        if route.max_tps is not None:
            await self._route_rate(route, message.account)
        if self.country_limits is not None:
            await self.country_limits.take(message.region, message.segments)
        encoded = encode_message(message.text, message.encoding, message.concat_ref)
        previous: ProviderPool | None = None
        last_failure: SubmitResult | None = None
        for name in route.order():
            pool = self._pools.get(name)
            # A provider with no bind up, or whose breaker is open, gets no new traffic.
            if pool is None or pool.binds_up == 0 or not pool.breaker.allow():
                continue
            if previous is not None:
                metrics.failovers.labels(previous.name, pool.name).inc()
            sent, failures = await self._submit_all(message, pool, encoded)
            try:
                if not failures:
                    pool.breaker.success()
                    now = self.clock()
                    try:  # _durably's first try inline: a coroutine less a message
                        await self._store.record_submitted(message.id, pool.name, sent, now)
                    except StoreError:
                        await self._durably(message, self._store.record_submitted, message.id,
                                            pool.name, sent, now)
                    self._accept_to_submit.observe(max(0.0, self.clock() - message.created_at))
                    self._log_debug("submitted", message_id=message.id, provider=pool.name,
                                    to=message.to, segments=len(encoded.parts))
                    return
                final = next((f for f in failures if f.outcome is Outcome.FINAL), None)
                if final is not None:
                    pool.breaker.success()  # the provider is fine; the message is not
                    await self._finish(message, MessageStatus.FAILED, final.error)
                    return
                slow = next((f for f in failures if f.outcome is Outcome.SLOW_DOWN), None)
                if slow is not None:  # still throttled after backing off: later, same provider
                    await self._retry(message, pool, sent, slow)
                    return
                if any(f.reason != errors.BREAKER_OPEN for f in failures):
                    pool.breaker.failure()
                previous, last_failure = pool, failures[0]
                log.debug("failover", message_id=message.id, provider=pool.name,
                          reason=last_failure.reason)
            finally:
                pool.recorded([s.provider_msg_id for s in sent])
        if previous is not None and last_failure is not None:
            await self._retry(message, previous, [], last_failure)
        else:
            await self._wait_for_provider(message, route)

    async def _durably(self, message: Message, write: Callable[P, Awaitable[T]],
                       *args: P.args, **kwargs: P.kwargs) -> T:
        """Write a message's outcome, again and again while the store fails (disk full,
        locked): the message is 'queued', which nothing else picks up before a restart, and
        receipts for its parts wait for this write. stop() cancels it at the drain deadline."""
        delay = STORE_RETRY_MIN
        failures = 0
        while True:
            try:
                result = await write(*args, **kwargs)
            except StoreError as exc:
                failures += 1
                metrics.store_errors.labels("dispatch").inc()
                (log.error if failures == 1 else log.debug)(
                    "dispatch_store_failed", message_id=message.id, error=str(exc),
                    attempts=failures, retry_in=delay)
            else:
                if failures:
                    log.info("dispatch_store_recovered", message_id=message.id,
                             attempts=failures + 1)
                return result
            await asyncio.sleep(delay)
            delay = min(STORE_RETRY_MAX, delay * 2)

    async def _submit_all(
        self, message: Message, pool: ProviderPool, encoded: EncodedMessage
    ) -> tuple[list[SegmentSubmit], list[SubmitResult]]:
        # Parts an earlier attempt got an id for stay sent if the same provider takes the rest:
        # operators reassemble per link, so all parts of a message go through one provider.
        parts = encoded.parts
        if len(parts) == 1 and not message.done_segments:  # most messages: no lists, no gather
            result = await pool.submit(SubmitRequest(
                message.id, 1, message.sender, message.to, encoded.data_coding,
                encoded.esm_class, parts[0], message.account))
            if result.outcome is not Outcome.OK:
                return [], [result]
            if result.provider_msg_id is None:
                return [], []
            return [SegmentSubmit(1, result.provider_msg_id)], []
        keep_done = message.done_segments if message.provider == pool.name else frozenset()
        todo = [
            SubmitRequest(message.id, seq, message.sender, message.to, encoded.data_coding,
                          encoded.esm_class, part, message.account)
            for seq, part in enumerate(encoded.parts, start=1)
            if seq not in keep_done
        ]
        if len(todo) == 1:
            results = [await pool.submit(todo[0])]
        else:
            results = list(await asyncio.gather(*(pool.submit(r) for r in todo)))
        sent = [
            SegmentSubmit(req.seq, res.provider_msg_id)
            for req, res in zip(todo, results, strict=True)
            if res.outcome is Outcome.OK and res.provider_msg_id is not None
        ]
        return sent, [r for r in results if r.outcome is not Outcome.OK]

    async def _wait_for_provider(self, message: Message, route: Route) -> None:
        """Every provider on the route is down or open: wait without spending an attempt."""
        delay = self._config.retry_max / 4
        next_at = self.clock() + delay
        if next_at >= message.expires_at:
            await self._finish(message, MessageStatus.EXPIRED,
                               "validity period elapsed; no provider available")
            return
        metrics.retries.labels(route.providers[0], "no_provider").inc()
        await self._durably(message, self._store.reschedule, message.id, None, [], next_at,
                            NO_PROVIDER, count_attempt=False)

    def provider_back(self) -> None:
        """A bind came up: what waited for a provider is due now."""
        task = asyncio.ensure_future(self._release_waiting())
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    async def _release_waiting(self) -> None:
        try:
            released = await self._store.release_waiting(self.clock())
        except StoreError:
            return
        if released:
            log.info("provider_back", released=released)
        self.wake()

    async def _retry(
        self,
        message: Message,
        pool: ProviderPool,
        sent: list[SegmentSubmit],
        failure: SubmitResult,
    ) -> None:
        attempts = message.attempts + 1
        metrics.retries.labels(pool.name, failure.reason).inc()
        if attempts >= self._config.max_attempts:
            await self._finish(
                message, MessageStatus.FAILED,
                f"gave up after {attempts} attempts; last error: {failure.error}",
            )
            return
        backoff = min(self._config.retry_max, self._config.retry_min * 2 ** (attempts - 1))
        next_at = self.clock() + backoff
        if next_at >= message.expires_at:
            await self._finish(message, MessageStatus.EXPIRED,
                               f"validity period elapsed; last error: {failure.error}")
            return
        log.debug("retry", message_id=message.id, provider=pool.name, reason=failure.reason,
                  in_seconds=backoff)
        await self._durably(message, self._store.reschedule, message.id, pool.name, sent,
                            next_at, failure.error)

    async def _finish(self, message: Message, status: MessageStatus, error: str | None) -> None:
        notice = await self._durably(message, self._store.finish, message.id, status, error,
                                     self.clock())
        log.debug("message_final", message_id=message.id, status=status.value, error=error)
        if notice is not None:
            metrics.messages_final.labels(status.value).inc()
            self._on_final(notice)

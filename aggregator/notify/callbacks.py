"""HTTP callbacks to upstream systems, from the durable outbox the store fills when a message
becomes final. Runs beside the pipeline with bounded concurrency (``concurrency`` requests).

Sharing: a destination (scheme, host, port) or an account alone may use every slot; when
another one's callback waits for a slot, a request of a destination above
``per_host_concurrency`` (or an account above ``per_account_concurrency``) that has waited
PREEMPT_AFTER for its answer gives its slot up (a failed attempt, retried later). So a receiver
that never answers holds its share, and slows only its own callbacks; a fast one keeps every
slot while nobody else needs them.

Hostile receivers: callbacks go only where callback_guard allows (checked after resolution),
redirects are not followed (a 3xx is a failed attempt), and at most MAX_ANSWER bytes of an
answer are read; URLs appear in logs and stored errors masked."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

from aggregator import metrics
from aggregator.config import CallbacksConfig
from aggregator.log import get_logger
from aggregator.notify.callback_guard import (
    CallbackPolicy,
    ForbiddenAddress,
    GuardedResolver,
    literal_address,
    mask_url,
    scrub,
)
from aggregator.store.base import CallbackJob, Store, StoreError
from aggregator.store.writes import callback_destination

log = get_logger("smsagg.callbacks")

MAX_ANSWER = 4096  # bytes of a callback's answer read at most: only its status matters
FORBIDDEN = "forbidden address"  # the error of a callback refused at send time
FAIR_INTERVAL = 0.25  # seconds between fair reads of the outbox (each costs the store more)
PREEMPT_AFTER = 1.0  # seconds unanswered after which a request above its share yields its slot
_JSON = {"Content-Type": "application/json"}  # the callbacks' one header of our own


class _Refused(Exception):
    """The callback's host is, or resolves to, an address callbacks may not reach."""


@dataclass(slots=True, eq=False)
class _Flight:
    """A callback request under way."""

    job: CallbackJob
    host: str
    started: float  # monotonic
    preempt: asyncio.Future[None]  # set: give the slot up


class CallbackSender:
    def __init__(self, store: Store, config: CallbacksConfig) -> None:
        self._store = store
        self._config = config
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._policy = CallbackPolicy(config.allowed_networks)
        # Requests under way per destination ("scheme://host:port") and per account.
        self._hosts: Counter[str] = Counter()
        self._accounts: Counter[str] = Counter()
        self._active: set[int] = set()  # sent or being sent, not yet dropped from the outbox
        self._jobs: set[asyncio.Task[None]] = set()
        self._flights: dict[int, _Flight] = {}  # by job id
        self._pending: deque[CallbackJob] = deque()  # read, due, waiting for a slot
        # Delivered, to drop from the outbox in one write per loop turn. They stay in _active
        # until that write commits, so a poll meanwhile does not send them again.
        self._delivered: list[int] = []
        self._dropping: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    @property
    def in_flight(self) -> int:
        """Callback requests under way (at most ``concurrency``)."""
        return len(self._flights)

    def in_flight_to(self, destination: str) -> int:
        """Callback requests under way to one destination ("scheme://host:port")."""
        return self._hosts[destination]

    def start(self) -> None:
        metrics.watch_buffer("callbacks", self._config.concurrency, lambda: self.in_flight)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=GuardedResolver(self._policy)),
            timeout=aiohttp.ClientTimeout(total=self._config.timeout),
            headers={"User-Agent": "smsagg"},
        )
        self._task = asyncio.create_task(self._run(), name="callbacks")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            # It may be waiting for a slot that a stuck receiver holds for a whole timeout.
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for job in list(self._jobs):
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        if self._dropping is not None:
            await asyncio.gather(self._dropping, return_exceptions=True)
        await self._drop_delivered()  # else sent again after a restart
        if self._session is not None:
            await self._session.close()
        metrics.unwatch_buffers("callbacks")

    async def _run(self) -> None:
        fair_at = 0.0
        while not self._stopping:
            self._wake.clear()
            pause = 1.0
            if not self._pending:  # all that the last read found has started: read on
                await self._read(None)
            if self._pending and not self._stopping:
                # Callbacks wait for a slot. One can be taken back only from a request
                # unanswered for PREEMPT_AFTER (a fast receiver's never are: its answers start
                # the waiting ones); then a fair read (per account and destination) looks
                # for callbacks of others, at most every FAIR_INTERVAL.
                now = time.monotonic()
                oldest = min((f.started for f in self._flights.values()), default=now)
                ripe = oldest + PREEMPT_AFTER - now
                if ripe > 0:
                    pause = ripe
                elif now - fair_at >= FAIR_INTERVAL:
                    fair_at = now
                    await self._read(2 * self._config.per_host_concurrency)
                    pause = FAIR_INTERVAL
                else:
                    pause = fair_at + FAIR_INTERVAL - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)

    async def _read(self, per_destination: int | None) -> None:
        """Read due callbacks and start them while slots are free, or can be taken back from a
        destination or account above its share; keep the others in _pending."""
        try:
            jobs = await self._store.due_callbacks(
                time.time(), self._config.concurrency * 4, per_destination)
        except StoreError:
            jobs = []
        self._start_drop()  # if an earlier drop failed
        pending: list[CallbackJob] = []
        for job in jobs:
            if self._stopping:
                break
            if job.id in self._active:
                continue
            host = callback_destination(job.url)
            if len(self._flights) >= self._config.concurrency and not self._take_slot(job, host):
                pending.append(job)
                continue
            self._launch(job, host)
        self._pending = deque(pending)

    def _fill(self) -> None:
        """A slot is free: start the next callback the last read found (or read again)."""
        while self._pending and len(self._flights) < self._config.concurrency:
            job = self._pending.popleft()
            if job.id not in self._active:
                self._launch(job, callback_destination(job.url))
        if not self._pending:
            self._wake.set()

    def _may_take(self, flight: _Flight, job: CallbackJob, host: str) -> bool:
        """True when ``job``'s destination (or account) is within its share and ``flight``'s
        other destination (or other account) is above its own."""
        hosts, accounts, config = self._hosts, self._accounts, self._config
        return ((flight.host != host and hosts[flight.host] > config.per_host_concurrency
                 and hosts[host] < config.per_host_concurrency)
                or (flight.job.account != job.account
                    and accounts[flight.job.account] > config.per_account_concurrency
                    and accounts[job.account] < config.per_account_concurrency))

    def _take_slot(self, job: CallbackJob, host: str) -> bool:
        """Preempt, for ``job``, the longest-unanswered request that _may_take; False when
        there is none."""
        cutoff = time.monotonic() - PREEMPT_AFTER
        victim = min((f for f in self._flights.values()
                      if f.started <= cutoff and not f.preempt.done()
                      and self._may_take(f, job, host)),
                     key=lambda f: f.started, default=None)
        if victim is None:
            return False
        victim.preempt.set_result(None)
        self._release(victim)  # its slot is the new job's from now
        metrics.callbacks_preempted.inc()
        return True

    def _launch(self, job: CallbackJob, host: str) -> None:
        self._active.add(job.id)
        self._hosts[host] += 1
        self._accounts[job.account] += 1
        flight = _Flight(job, host, time.monotonic(), asyncio.get_running_loop().create_future())
        self._flights[job.id] = flight
        task = asyncio.create_task(self._send(flight))
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    def _release(self, flight: _Flight) -> None:
        """The flight's slot is free (once per flight)."""
        if self._flights.get(flight.job.id) is not flight:
            return
        del self._flights[flight.job.id]
        self._hosts[flight.host] -= 1
        if self._hosts[flight.host] <= 0:
            del self._hosts[flight.host]
        self._accounts[flight.job.account] -= 1
        if self._accounts[flight.job.account] <= 0:
            del self._accounts[flight.job.account]

    async def _drop_delivered(self) -> None:
        try:
            while self._delivered:  # more may land while one write is under way
                ids, self._delivered = self._delivered, []
                try:
                    await self._store.callbacks_done(ids)
                except StoreError as exc:  # kept for _run's next round, not sent meanwhile
                    self._delivered.extend(ids)
                    metrics.store_errors.labels("callbacks").inc()
                    log.error("callback_store_failed", callbacks=len(ids), error=str(exc))
                    return
                self._active.difference_update(ids)
        finally:
            self._dropping = None

    def _start_drop(self) -> None:
        # A task started now runs after this turn's other deliveries have landed here.
        if self._delivered and self._dropping is None:
            self._dropping = asyncio.create_task(self._drop_delivered())

    async def _send(self, flight: _Flight) -> None:
        job = flight.job
        delivered = False
        try:
            try:
                error = await self._post_unless_preempted(flight)
            except _Refused:
                metrics.callbacks.labels("forbidden").inc()
                log.warning("callback_forbidden", message_id=job.message_id,
                            account=job.account, url=mask_url(job.url),
                            why="the host is or resolves to an address callbacks may not "
                                "reach ([callbacks] allowed_networks)")
                await self._store.callback_give_up(job.id, FORBIDDEN)
                return
            if error is None:
                metrics.callbacks.labels("ok").inc()
                delivered = True
                self._delivered.append(job.id)
                self._start_drop()
                return
            error = scrub(error, job.url)
            attempts = job.attempts + 1
            if attempts >= self._config.max_attempts:
                metrics.callbacks.labels("gave_up").inc()
                log.warning("callback_gave_up", message_id=job.message_id, attempts=attempts,
                            url=mask_url(job.url), error=error)
                await self._store.callback_give_up(job.id, error)
                return
            metrics.callbacks.labels("retry").inc()
            delay = min(self._config.retry_max, self._config.retry_min * 2 ** (attempts - 1))
            log.info("callback_retry", message_id=job.message_id, attempts=attempts,
                     url=mask_url(job.url), error=error, in_seconds=delay)
            await self._store.callback_retry(job.id, time.time() + delay, error)
        except StoreError as exc:  # the job stays due: sent again later
            metrics.store_errors.labels("callbacks").inc()
            log.error("callback_store_failed", message_id=job.message_id, error=str(exc))
        finally:
            if not delivered:
                self._active.discard(job.id)
            self._release(flight)
            if not self._stopping:
                self._fill()

    async def _post_unless_preempted(self, flight: _Flight) -> str | None:
        """_post, unless another destination's callback takes the slot back first."""
        post = asyncio.ensure_future(self._post(flight.job))
        try:
            await asyncio.wait((post, flight.preempt), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not post.done():
                post.cancel()
                await asyncio.gather(post, return_exceptions=True)
        if not post.cancelled() and post.done():
            return post.result()
        return f"no answer within {time.monotonic() - flight.started:.1f} s while other " \
               "callbacks waited for the slot"

    async def _post(self, job: CallbackJob) -> str | None:
        """POST one callback: None when answered 2xx, else the error; raises _Refused for a
        forbidden address (a literal one here; a name in the resolver, after resolution)."""
        assert self._session is not None
        try:
            host = urlsplit(job.url).hostname or ""
        except ValueError:
            host = ""
        literal = literal_address(host)
        if literal is not None and self._policy.forbidden(literal):
            raise _Refused
        try:
            async with self._session.post(
                # Bytes: aiohttp's payload for str looks its type up further down its registry
                # and re-encodes (7.8 -> 5.2 us a callback).
                job.url, data=job.payload.encode("utf-8"), headers=_JSON, allow_redirects=False,
            ) as resp:
                await self._read_answer(resp)
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status}"
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ForbiddenAddress):
                raise _Refused from None
            return f"{type(exc).__name__}: {exc}"[:200]
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"[:200]

    @staticmethod
    async def _read_answer(resp: aiohttp.ClientResponse) -> None:
        """Read at most MAX_ANSWER bytes; a longer answer's connection is closed, not read."""
        got = 0
        while got <= MAX_ANSWER:
            chunk = await resp.content.read(MAX_ANSWER + 1 - got)
            if not chunk:
                return  # the whole answer: the connection may be used again
            got += len(chunk)
        metrics.callbacks_answer_truncated.inc()
        resp.close()

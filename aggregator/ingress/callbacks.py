"""HTTP callbacks to upstream systems, from the durable outbox the store fills when a message
becomes final. Runs beside the pipeline with bounded concurrency, shared between destinations
and accounts (at most ``per_host_concurrency`` / ``per_account_concurrency`` of the slots each),
so a slow or dead receiver slows only its own callbacks.

Hostile receivers: callbacks go only where callback_guard allows (checked after resolution),
redirects are not followed (a 3xx is a failed attempt), and at most MAX_ANSWER bytes of an
answer are read; URLs appear in logs and stored errors masked."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from urllib.parse import urlsplit

import aiohttp

from aggregator import metrics
from aggregator.config import CallbacksConfig
from aggregator.ingress.callback_guard import (
    CallbackPolicy,
    ForbiddenAddress,
    GuardedResolver,
    literal_address,
    mask_url,
    scrub,
)
from aggregator.log import get_logger
from aggregator.store.base import CallbackJob, Store, StoreError
from aggregator.store.writes import callback_destination

log = get_logger("smsagg.callbacks")

MAX_ANSWER = 4096  # bytes of a callback's answer read at most: only its status matters
FORBIDDEN = "forbidden address"  # the error of a callback refused at send time
FAIR_INTERVAL = 0.1  # seconds between fair reads of the outbox (each costs the store more)


class _Refused(Exception):
    """The callback's host is, or resolves to, an address callbacks may not reach."""


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
        # Delivered, to drop from the outbox in one write per loop turn. They stay in _active
        # until that write commits, so a poll meanwhile does not send them again.
        self._delivered: list[int] = []
        self._dropping: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    @property
    def in_flight(self) -> int:
        """Callback requests under way (at most ``concurrency``)."""
        return len(self._jobs)

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
            # The plain read (oldest first) is cheap; a fair read (per account and destination)
            # only when a destination or account at its share held back what the plain one
            # found, and at most every FAIR_INTERVAL.
            pause = 1.0
            skipped = await self._start_due(None)
            if skipped and len(self._jobs) < self._config.concurrency and not self._stopping:
                early = fair_at + FAIR_INTERVAL - time.monotonic()
                if early > 0:
                    pause = early  # the fair read's turn comes then
                else:
                    fair_at = time.monotonic()
                    await self._start_due(2 * self._config.per_host_concurrency)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)

    async def _start_due(self, per_destination: int | None) -> int:
        """Start due callbacks while slots are free; the number held back by a share."""
        try:
            jobs = await self._store.due_callbacks(
                time.time(), self._config.concurrency * 4, per_destination)
        except StoreError:
            jobs = []
        self._start_drop()  # if an earlier drop failed
        skipped = 0
        for job in jobs:
            if self._stopping or len(self._jobs) >= self._config.concurrency:
                break
            if job.id in self._active:
                continue
            host = callback_destination(job.url)
            if (self._hosts[host] >= self._config.per_host_concurrency
                    or self._accounts[job.account] >= self._config.per_account_concurrency):
                skipped += 1  # its destination or account has its share: others go first
                continue
            self._active.add(job.id)
            self._hosts[host] += 1
            self._accounts[job.account] += 1
            task = asyncio.create_task(self._send(job, host))
            self._jobs.add(task)
            task.add_done_callback(self._jobs.discard)
        return skipped

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

    async def _send(self, job: CallbackJob, host: str) -> None:
        delivered = False
        try:
            try:
                error = await self._post(job)
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
            self._hosts[host] -= 1
            if self._hosts[host] <= 0:
                del self._hosts[host]
            self._accounts[job.account] -= 1
            if self._accounts[job.account] <= 0:
                del self._accounts[job.account]
            self._wake.set()  # a slot is free: the next due callback may go

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
                job.url, data=job.payload, headers={"Content-Type": "application/json"},
                allow_redirects=False,
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

"""HTTP callbacks to upstream systems, from the durable outbox the store fills when a message
becomes final. Runs beside the pipeline with bounded concurrency, so a slow receiver slows only
its own callbacks."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp

from aggregator import metrics
from aggregator.config import CallbacksConfig
from aggregator.log import get_logger
from aggregator.store.base import CallbackJob, Store, StoreError

log = get_logger("smsagg.callbacks")


class CallbackSender:
    def __init__(self, store: Store, config: CallbacksConfig) -> None:
        self._store = store
        self._config = config
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._sem = asyncio.Semaphore(config.concurrency)
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
        while not self._stopping:
            self._wake.clear()
            try:
                jobs = await self._store.due_callbacks(time.time(), self._config.concurrency * 4)
            except StoreError:
                jobs = []
            self._start_drop()  # if an earlier drop failed
            for job in jobs:
                if self._stopping:
                    return
                if job.id in self._active:
                    continue
                self._active.add(job.id)
                await self._sem.acquire()
                task = asyncio.create_task(self._send(job))
                self._jobs.add(task)
                task.add_done_callback(self._jobs.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)

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

    async def _send(self, job: CallbackJob) -> None:
        delivered = False
        try:
            error = await self._post(job)
            if error is None:
                metrics.callbacks.labels("ok").inc()
                delivered = True
                self._delivered.append(job.id)
                self._start_drop()
                return
            attempts = job.attempts + 1
            if attempts >= self._config.max_attempts:
                metrics.callbacks.labels("gave_up").inc()
                log.warning("callback_gave_up", message_id=job.message_id, attempts=attempts,
                            error=error)
                await self._store.callback_give_up(job.id, error)
                return
            metrics.callbacks.labels("retry").inc()
            delay = min(self._config.retry_max, self._config.retry_min * 2 ** (attempts - 1))
            log.info("callback_retry", message_id=job.message_id, attempts=attempts,
                     error=error, in_seconds=delay)
            await self._store.callback_retry(job.id, time.time() + delay, error)
        except StoreError as exc:  # the job stays due: sent again later
            metrics.store_errors.labels("callbacks").inc()
            log.error("callback_store_failed", message_id=job.message_id, error=str(exc))
        finally:
            if not delivered:
                self._active.discard(job.id)
            self._sem.release()

    async def _post(self, job: CallbackJob) -> str | None:
        assert self._session is not None
        try:
            async with self._session.post(
                job.url, data=job.payload, headers={"Content-Type": "application/json"}
            ) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"[:200]

"""Message retention ([messages] keep_text, retention_days): a periodic task that blanks texts
the configuration no longer keeps and purges the metadata of final messages older than
retention_days. Both run as store writes in bounded batches, so a sweep never holds the writer
for long."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from aggregator import metrics
from aggregator.config import MessagesConfig
from aggregator.log import get_logger
from aggregator.store.base import StoreError
from aggregator.store.postgres import PostgresStore
from aggregator.store.sqlite import SqliteStore

log = get_logger("smsagg.retention")

INTERVAL = 30.0  # seconds between sweeps
BATCH = 2000  # rows per store write
DAY = 86400.0


class Retention:
    def __init__(self, store: SqliteStore | PostgresStore, config: MessagesConfig,
                 clock: Callable[[], float] = time.time, interval: float = INTERVAL) -> None:
        self._store = store
        self.config = config
        self.clock = clock  # public: tests move time past the retention cutoff
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except StoreError as exc:
                metrics.store_errors.labels("retention").inc()
                log.warning("retention_failed", error=str(exc))
            await asyncio.sleep(self._interval)

    async def sweep(self) -> tuple[int, int]:
        """One pass: (texts erased, messages purged)."""
        erased = purged = 0
        while (n := await self._store.erase_texts(self.config.keep_text, BATCH)) > 0:
            erased += n
            if n < BATCH:
                break
        cutoff = self.clock() - self.config.retention_days * DAY
        while (n := await self._store.purge_before(cutoff, BATCH)) > 0:
            purged += n
            if n < BATCH:
                break
        if erased:
            metrics.messages_retention.labels("text_erased").inc(erased)
        if purged:
            metrics.messages_retention.labels("purged").inc(purged)
        if erased or purged:
            log.info("retention_sweep", texts_erased=erased, messages_purged=purged,
                     keep_text=self.config.keep_text, retention_days=self.config.retention_days)
        return erased, purged

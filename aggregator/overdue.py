"""Receipts that never come: an operator acknowledged a submit and its receipt did not follow.

Parts still waiting after their provider's `query_after` seconds are asked about with query_sm
(again every `query_after` while they stay en route), and a final answer is applied exactly like
a receipt. A provider that answers generic_nack, an error or nothing is not asked again for a
while (doubling back-off). A message still without a final state `[messages] receipt_timeout`
seconds after its submit becomes final "unknown", with its callback and SMPP receipt."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aggregator import metrics
from aggregator.config import MessagesConfig
from aggregator.log import get_logger
from aggregator.model import FinalNotice, MessageStatus, ReceiptUpdate
from aggregator.outbound.pool import ProviderPool
from aggregator.receipts import ReceiptProcessor, parse_query_answer, receipt_error
from aggregator.smpp.querysm import QUERY_SM_RESP
from aggregator.smpp.status import CommandStatus
from aggregator.smpp.transport import ConnectionLost, RequestTimeout
from aggregator.store.base import OverdueSegment, Store, StoreError

log = get_logger("smsagg.overdue")

QUERY_BATCH = 200  # parts claimed per provider and pass
QUERY_CONCURRENCY = 10  # query_sm in flight per provider
EXPIRE_BATCH = 500
BACKOFF_MIN = 60.0  # seconds a provider is not asked after its first failed query
BACKOFF_MAX = 3600.0
MAX_INTERVAL = 1.0  # seconds between passes
MIN_INTERVAL = 0.05

FAILURES = frozenset({"error", "nack", "timeout"})


@dataclass(slots=True)
class _Backoff:
    until: float = 0.0
    delay: float = 0.0


class OverdueReceipts:
    def __init__(
        self,
        store: Store,
        pools: Mapping[str, ProviderPool],
        receipts: ReceiptProcessor,
        config: MessagesConfig,
        on_final: Callable[[FinalNotice], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._pools = pools  # the App's dict: reloads change it in place
        self._receipts = receipts
        self._config = config
        self._on_final = on_final
        self._clock = clock
        self._backoff: dict[str, _Backoff] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="overdue-receipts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def interval(self) -> float:
        """Passes run often enough for the shortest configured wait (tests use short ones)."""
        waits = [p.config.query_after for p in self._pools.values() if p.config.query_after > 0]
        waits.append(self._config.receipt_timeout)
        return max(MIN_INTERVAL, min(MAX_INTERVAL, min(waits) / 4))

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except StoreError as exc:
                metrics.store_errors.labels("overdue").inc()
                log.error("overdue_store_failed", error=str(exc))
            except Exception as exc:  # one bad pass must not end the loop
                log.error("overdue_pass_failed", error=repr(exc))
            await asyncio.sleep(self.interval())

    async def run_once(self) -> None:
        pools = [p for p in self._pools.values() if self._may_ask(p)]
        await asyncio.gather(*(self._query_provider(p) for p in pools))
        await self._expire()

    def _may_ask(self, pool: ProviderPool) -> bool:
        if pool.config.query_after <= 0 or pool.binds_up == 0:
            return False
        backoff = self._backoff.get(pool.name)
        return backoff is None or self._clock() >= backoff.until

    # ---- query_sm -------------------------------------------------------------------------------

    async def _query_provider(self, pool: ProviderPool) -> None:
        now = self._clock()
        cutoff = now - pool.config.query_after
        try:
            overdue = await self._store.claim_overdue_segments(pool.name, cutoff, cutoff, now,
                                                               QUERY_BATCH)
        except StoreError as exc:
            metrics.store_errors.labels("overdue").inc()
            log.error("overdue_claim_failed", provider=pool.name, error=str(exc))
            return
        for start in range(0, len(overdue), QUERY_CONCURRENCY):
            chunk = overdue[start:start + QUERY_CONCURRENCY]
            outcomes = await asyncio.gather(*(self._query_one(pool, seg) for seg in chunk))
            failed = next((o for o in outcomes if o in FAILURES), None)
            if failed is not None:
                # The rest were marked as queried: they are asked after query_after again.
                self._back_off(pool.name, failed)
                return
            if any(o != "no_bind" for o in outcomes):
                self._backoff.pop(pool.name, None)

    async def _query_one(self, pool: ProviderPool, seg: OverdueSegment) -> str:
        try:
            resp = await pool.query(seg.provider_msg_id, seg.sender)
        except RequestTimeout:
            outcome = "timeout"
        except (ConnectionLost, ConnectionError):
            outcome = "no_bind"
        else:
            outcome = await self._answer(pool, seg, resp)
        metrics.receipt_queries.labels(pool.name, outcome).inc()
        log.debug("receipt_query", provider=pool.name, message_id=seg.message_id, seq=seg.seq,
                  outcome=outcome)
        return outcome

    async def _answer(self, pool: ProviderPool, seg: OverdueSegment, resp: Any) -> str:
        if int(resp.smpp_command) != QUERY_SM_RESP:
            return "nack"  # generic_nack: the provider does not take query_sm
        status = int(resp.command_status)
        # The SMSC does not know that id: about the message, not the provider.
        if status == CommandStatus.ESME_RINVMSGID:
            return "not_found"
        if status != CommandStatus.ESME_ROK:
            return "error"
        parsed = parse_query_answer(seg.provider_msg_id, int(resp.message_state),
                                    int(resp.error_code))
        if parsed is None:
            return "error"
        if parsed.status is MessageStatus.SUBMITTED:  # en route or accepted: ask again later
            return "pending"
        update = ReceiptUpdate(provider=pool.name, provider_msg_id=seg.provider_msg_id,
                               status=parsed.status, error=receipt_error(parsed),
                               received_at=self._clock())
        try:
            await self._receipts.apply(update)
        except StoreError as exc:  # asked again after query_after
            metrics.store_errors.labels("overdue").inc()
            log.error("receipt_query_store_failed", provider=pool.name, error=str(exc))
        return "final"

    def _back_off(self, provider: str, why: str) -> None:
        backoff = self._backoff.setdefault(provider, _Backoff())
        backoff.delay = min(BACKOFF_MAX, backoff.delay * 2) if backoff.delay else BACKOFF_MIN
        backoff.until = self._clock() + backoff.delay
        metrics.receipt_query_backoffs.labels(provider).inc()
        log.warning("receipt_query_backoff", provider=provider, reason=why,
                    seconds=backoff.delay)

    # ---- receipt_timeout ------------------------------------------------------------------------

    async def _expire(self) -> None:
        timeout = self._config.receipt_timeout
        error = f"no receipt within {timeout:g} s"
        while True:
            now = self._clock()
            notices = await self._store.expire_unreceipted(now - timeout, now, EXPIRE_BATCH, error)
            for notice in notices:
                metrics.messages_final.labels(MessageStatus.UNKNOWN.value).inc()
                metrics.receipt_timeouts.labels(notice.provider or "").inc()
                log.debug("receipt_timeout", message_id=notice.message_id,
                          provider=notice.provider, account=notice.account)
                with contextlib.suppress(Exception):
                    self._on_final(notice)
            if notices:  # one line per batch: an operator that lost a day's receipts is many
                log.warning("receipts_timed_out", messages=len(notices), seconds=timeout,
                            providers=sorted({n.provider or "" for n in notices}))
            if len(notices) < EXPIRE_BATCH:
                return

"""deliver_sm from providers: each one is a delivery receipt (to receipts.py) or a
mobile-originated message (to mo.py), and is answered on the connection it came on once its
outcome is stored. At most `max_delivers` are handled at once; above that, ESME_RTHROTTLED."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiosmpplib import DeliverSm

from aggregator import metrics
from aggregator.log import get_logger
from aggregator.mo import MoHandler
from aggregator.model import ReceiptUpdate
from aggregator.outbound.connection import Bind
from aggregator.outbound.pool import ProviderPool
from aggregator.receipts import (
    ReceiptProcessor,
    normalise_receipt_id,
    parse_receipt,
    receipt_error,
)
from aggregator.smpp.deliver_fast import ReceiptPdu
from aggregator.smpp.status import CommandStatus
from aggregator.smpp.transport import SmppConnection
from aggregator.store.base import ReceiptResult, StoreError

log = get_logger("smsagg.delivers")

# deliver_sm (receipts, MO) from providers being handled at once; above: ESME_RTHROTTLED, and
# the provider sends it again later.
MAX_DELIVERS = 10_000


class ProviderDelivers:
    def __init__(self, receipts: ReceiptProcessor, mo: MoHandler,
                 pool_of: Callable[[Bind], ProviderPool | None]) -> None:
        """`pool_of`: the pool a bind belongs to (current or draining), or None."""
        self.receipts = receipts
        self.mo = mo
        self._pool_of = pool_of
        self.max_delivers = MAX_DELIVERS
        self._tasks: set[asyncio.Task[Any]] = set()
        # Receipts handed to the store without a task (ReceiptProcessor.apply_then), not yet
        # answered; `_idle` is resolved when the last of them is.
        self._handling = 0
        self._idle: asyncio.Future[None] | None = None

    @property
    def in_flight(self) -> int:
        """deliver_sm being handled now (at most `max_delivers`)."""
        return len(self._tasks) + self._handling

    def on_deliver(self, bind: Bind, conn: SmppConnection, pdu: Any) -> None:
        if self.in_flight >= self.max_delivers:
            metrics.receipts.labels(bind.provider.name, "throttled").inc()
            if not conn.closed.done():
                conn.respond_deliver(pdu, CommandStatus.ESME_RTHROTTLED)
            return
        lean = type(pdu) is ReceiptPdu
        if lean or (isinstance(pdu, DeliverSm) and pdu.is_receipt()):
            update = self._receipt_update(bind, conn, pdu, lean)
            if update is None:
                return
            pool = self._pool_of(bind)
            if pool is None or not pool.unrecorded(update.provider_msg_id):
                # The usual receipt: applied and answered through callbacks, with no task.
                self._apply_receipt(bind, conn, pdu, update)
                return
            coro: Coroutine[Any, Any, None] = self._after_record(bind, conn, pdu, update, pool)
        else:
            coro = self._handle_mo(bind, conn, pdu)
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle_mo(self, bind: Bind, conn: SmppConnection, pdu: Any) -> None:
        """Store a mobile-originated deliver_sm and answer it on `conn`, the connection it came
        on."""
        provider = bind.provider
        try:
            await self.mo.handle(provider.name, pdu)
        except StoreError as exc:  # not acknowledged: the operator sends it again
            metrics.store_errors.labels("mo").inc()
            log.error("mo_store_failed", provider=provider.name, error=str(exc))
            return
        if not conn.closed.done():
            conn.respond_deliver(pdu)

    def _receipt_update(self, bind: Bind, conn: SmppConnection, pdu: Any,
                        lean: bool) -> ReceiptUpdate | None:
        """The receipt in `pdu` (a ReceiptPdu when `lean`, else a DeliverSm); None (answered,
        counted) when it cannot be parsed."""
        provider = bind.provider
        if lean:
            parsed = parse_receipt(pdu.text, pdu.tlvs)
        else:
            tlvs = {p.tag: p.value for p in (pdu.optional_params or [])}
            parsed = parse_receipt(pdu.short_message or pdu.message_payload or "", tlvs)
        if parsed is None:
            metrics.receipts.labels(provider.name, "unparsable").inc()
            log.warning("receipt_unparsable", provider=provider.name, bind=bind.name)
            if not conn.closed.done():
                conn.respond_deliver(pdu)
            return None
        return ReceiptUpdate(
            provider=provider.name,
            provider_msg_id=normalise_receipt_id(parsed.provider_msg_id, provider.receipt_id),
            status=parsed.status,
            error=receipt_error(parsed),
            received_at=time.time(),
        )

    async def _after_record(self, bind: Bind, conn: SmppConnection, pdu: Any,
                            update: ReceiptUpdate, pool: ProviderPool) -> None:
        """A receipt that overtook the commit of its own submit: applied once that commits."""
        await pool.wait_recorded(update.provider_msg_id)
        self._apply_receipt(bind, conn, pdu, update)

    def _apply_receipt(self, bind: Bind, conn: SmppConnection, pdu: Any,
                       update: ReceiptUpdate) -> None:
        """Apply a receipt and answer it on `conn`, the connection it came on, once committed."""
        self._handling += 1

        def then(result: ReceiptResult | StoreError) -> None:
            self._handled()
            if isinstance(result, StoreError):
                # Not acknowledged: the operator sends it again.
                log.error("receipt_store_failed", provider=update.provider, error=str(result))
            elif not conn.closed.done():
                conn.respond_deliver(pdu)

        self.receipts.apply_then(update, then)

    def _handled(self) -> None:
        self._handling -= 1
        if not self._handling and self._idle is not None:
            if not self._idle.done():
                self._idle.set_result(None)
            self._idle = None

    async def wait(self, timeout: float) -> None:
        """Until the deliver_sm being handled are done, or `timeout` seconds."""
        waiting: set[asyncio.Future[Any]] = set(self._tasks)
        if self._handling:
            if self._idle is None:
                self._idle = asyncio.get_running_loop().create_future()
            waiting.add(self._idle)
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)

    async def cancel(self) -> None:
        """Stop handling the rest: unanswered, the providers send them again."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

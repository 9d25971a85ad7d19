"""deliver_sm from providers: each one is a delivery receipt (to receipts.py) or a
mobile-originated message (to mo.py), and is answered on the connection it came on once its
outcome is stored. At most `max_delivers` are handled at once; above that, ESME_RTHROTTLED."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiosmpplib import DeliverSm, DeliverSmResp

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
from aggregator.smpp.status import CommandStatus
from aggregator.smpp.transport import SmppConnection
from aggregator.store.base import StoreError

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

    @property
    def in_flight(self) -> int:
        """deliver_sm being handled now (at most `max_delivers`)."""
        return len(self._tasks)

    def on_deliver(self, bind: Bind, conn: SmppConnection, pdu: Any) -> None:
        if len(self._tasks) >= self.max_delivers:
            metrics.receipts.labels(bind.provider.name, "throttled").inc()
            if not conn.closed.done():
                resp = DeliverSmResp()
                resp.command_status = CommandStatus.ESME_RTHROTTLED
                conn.respond(pdu, resp)
            return
        task = asyncio.ensure_future(self._handle_deliver(bind, conn, pdu))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle_deliver(self, bind: Bind, conn: SmppConnection, pdu: Any) -> None:
        """Apply a deliver_sm and answer it on `conn`, the connection it came on."""
        provider = bind.provider
        if not isinstance(pdu, DeliverSm) or not pdu.is_receipt():
            try:
                await self.mo.handle(provider.name, pdu)
            except StoreError as exc:  # not acknowledged: the operator sends it again
                metrics.store_errors.labels("mo").inc()
                log.error("mo_store_failed", provider=provider.name, error=str(exc))
                return
            if not conn.closed.done():
                conn.respond(pdu, DeliverSmResp())
            return
        tlvs = {p.tag: p.value for p in (pdu.optional_params or [])}
        parsed = parse_receipt(pdu.short_message or pdu.message_payload or "", tlvs)
        if parsed is None:
            metrics.receipts.labels(provider.name, "unparsable").inc()
            log.warning("receipt_unparsable", provider=provider.name, bind=bind.name)
            if not conn.closed.done():
                conn.respond(pdu, DeliverSmResp())
            return
        update = ReceiptUpdate(
            provider=provider.name,
            provider_msg_id=normalise_receipt_id(parsed.provider_msg_id, provider.receipt_id),
            status=parsed.status,
            error=receipt_error(parsed),
            received_at=time.time(),
        )
        pool = self._pool_of(bind)
        try:
            if pool is not None:
                await pool.wait_recorded(update.provider_msg_id)
            await self.receipts.apply(update)
        except StoreError as exc:
            # Not acknowledged: the operator sends it again.
            log.error("receipt_store_failed", provider=provider.name, error=str(exc))
            return
        if not conn.closed.done():
            conn.respond(pdu, DeliverSmResp())

    async def wait(self, timeout: float) -> None:
        """Until the deliver_sm being handled are done, or `timeout` seconds."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout)

    async def cancel(self) -> None:
        """Stop handling the rest: unanswered, the providers send them again."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

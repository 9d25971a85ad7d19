"""The SMPP outbox: receipts and MO owed to upstream ESMEs, read from the store's durable outbox
and sent as deliver_sm on the account's receiver or transceiver sessions (the one with the
most free window). An answer other than ESME_ROK, or none, is retried with backoff, at most
`attempts` times; an unanswered one stays due and goes out after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiosmpplib import NPI, TON, PhoneNumber

from aggregator import metrics
from aggregator.log import get_logger
from aggregator.model import MessageStatus
from aggregator.smpp.deliver_pdu import mo_pdu as mo_deliver_sm
from aggregator.smpp.deliver_pdu import receipt_pdu as receipt_deliver_sm
from aggregator.smpp.session import WindowFull
from aggregator.smpp.status import CommandStatus
from aggregator.smpp.transport import SmppConnection
from aggregator.store.base import SmppOutboxItem, Store, StoreError

log = get_logger("smsagg.smpp")

# A final status as a receipt says it: the stat word and the message_state value.
RECEIPT_STATE = {
    MessageStatus.DELIVERED: ("DELIVRD", 2),
    MessageStatus.EXPIRED: ("EXPIRED", 3),
    MessageStatus.UNDELIVERABLE: ("UNDELIV", 5),
    MessageStatus.REJECTED: ("REJECTD", 8),
    MessageStatus.FAILED: ("UNDELIV", 5),
    MessageStatus.CANCELLED: ("DELETED", 4),
}


def mo_pdu(r: SmppOutboxItem) -> Any:
    """A handset's message (source) to what it replied to (dest), for the upstream."""
    dest_ton = TON.INTERNATIONAL if r.dest.lstrip("+").isdigit() else TON.ALPHANUMERIC
    return mo_deliver_sm(
        r.text or " ",
        source=PhoneNumber(r.source.lstrip("+"), TON.INTERNATIONAL, NPI.ISDN),
        destination=PhoneNumber(r.dest.lstrip("+"), dest_ton,
                                NPI.ISDN if dest_ton is TON.INTERNATIONAL else NPI.UNKNOWN),
    )


def receipt_pdu(r: SmppOutboxItem) -> Any:
    """A message's final state, as a delivery receipt to the account that sent it."""
    stat, state = RECEIPT_STATE.get(r.status, ("UNKNOWN", 7))
    src_ton = TON.INTERNATIONAL if r.source.startswith("+") else TON.ALPHANUMERIC
    return receipt_deliver_sm(
        r.message_id, stat, state, r.submitted_at, r.done_at,
        source=PhoneNumber(r.dest.lstrip("+"), TON.INTERNATIONAL, NPI.ISDN),
        destination=PhoneNumber(r.source.lstrip("+"), src_ton,
                                NPI.ISDN if src_ton is TON.INTERNATIONAL else NPI.UNKNOWN),
    )


def deliver_pdu(item: SmppOutboxItem) -> Any:
    """The deliver_sm an outbox item stands for: an MO, or a receipt."""
    return mo_pdu(item) if item.kind == "mo" else receipt_pdu(item)


@dataclass(slots=True)
class _Lane:
    """One account's sending loop."""

    account: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    removed: bool = False  # by a configuration reload: its loop ends


class SmppOutbox:
    def __init__(
        self,
        store: Store,
        receivers: Callable[[str], Sequence[SmppConnection]],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        window: int,
        attempts: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`receivers`: the account's sessions that may receive (receiver, transceiver);
        `spawn`: runs a coroutine as a task the SMPP server waits for when it stops."""
        self._store = store
        self._receivers = receivers
        self._spawn = spawn
        self._window = window
        self._attempts = attempts
        self._clock = clock
        self._lanes: dict[str, _Lane] = {}
        self._stopping = False
        self.in_flight = 0  # deliver_sm sent and not yet answered

    def add(self, account: str) -> None:
        """Start the account's loop."""
        lane = self._lanes[account] = _Lane(account)
        lane.task = asyncio.create_task(self._send_due(lane))

    def remove(self, account: str) -> None:
        """End the account's loop (removed by a reload); what it owes stays in the store."""
        lane = self._lanes.pop(account, None)
        if lane is None:
            return
        lane.removed = True
        lane.wake.set()
        if lane.task is not None:
            lane.task.cancel()

    def wake(self, account: str) -> None:
        """Something may be due for the account, or a session that may receive it bound."""
        lane = self._lanes.get(account)
        if lane is not None:
            lane.wake.set()

    def halt(self) -> list[asyncio.Task[None]]:
        """End every loop (the deliver_sm in flight go on); their tasks, to wait for."""
        self._stopping = True
        tasks = [lane.task for lane in self._lanes.values() if lane.task]
        for lane in self._lanes.values():
            lane.wake.set()
        for task in tasks:
            task.cancel()
        return tasks

    def _receiver(self, account: str) -> SmppConnection | None:
        best: SmppConnection | None = None
        for conn in self._receivers(account):
            if conn.closed.done():
                continue
            if best is None or conn.session.free_window > best.session.free_window:
                best = conn
        if best is not None and best.session.free_window <= 0:
            return None
        return best

    async def _send_due(self, state: _Lane) -> None:
        in_flight: set[int] = set()
        while not self._stopping and not state.removed:
            state.wake.clear()
            sent_any = False
            if self._receiver(state.account) is not None:
                try:
                    due = await self._store.due_smpp_receipts(
                        state.account, self._clock(), self._window * 4)
                except StoreError:
                    due = []
                for item in due:
                    if item.id in in_flight:
                        continue
                    conn = self._receiver(state.account)
                    if conn is None:
                        break
                    try:
                        fut = conn.request(deliver_pdu(item))
                    except WindowFull:
                        break
                    except Exception:  # NotBound: the session went away
                        break
                    in_flight.add(item.id)
                    self.in_flight += 1
                    sent_any = True
                    self._spawn(self._await_answer(state, item, fut, in_flight))
            if not sent_any:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.wake.wait(), 1.0)
            else:
                await asyncio.sleep(0)

    async def _await_answer(self, state: _Lane, item: SmppOutboxItem,
                            fut: asyncio.Future[Any], in_flight: set[int]) -> None:
        try:
            resp = await fut
            ok = int(resp.command_status) == CommandStatus.ESME_ROK
        except Exception:  # timeout or the session closed: try again
            ok = False
        try:
            if ok:
                metrics.smpp_receipts.labels("ok").inc()
                await self._store.smpp_receipt_done(item.id)
            else:
                attempts = item.attempts + 1
                give_up = attempts >= self._attempts
                metrics.smpp_receipts.labels("gave_up" if give_up else "retry").inc()
                await self._store.smpp_receipt_retry(
                    item.id, self._clock() + min(60.0, 2.0 ** attempts), give_up)
        except StoreError as exc:  # the item stays due: sent again later
            metrics.store_errors.labels("smpp_receipts").inc()
            log.error("smpp_receipt_store_failed", error=str(exc))
        finally:
            in_flight.discard(item.id)
            self.in_flight -= 1
            state.wake.set()

"""Receipts and handset replies: which to send, the per-system_id queue, the session each goes
out on, and retries."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from aggregator.smpp.deliver_pdu import mo_pdu, receipt_pdu
from aggregator.smpp.querysm import DELIVERED, UNDELIVERABLE
from aggregator.smpp.session import SessionError, SessionState
from aggregator.smpp.status import CommandStatus
from aggregator.smpp.transport import ConnectionLost, SmppConnection
from simulator.smsc.base import SmscCore
from simulator.smsc.records import CAN_RECEIVE, QueuedDeliver

log = logging.getLogger("simulator.smsc")

PENDING_MAX = 100_000  # receipts and replies queued, over all system_ids
RECEIPT_RETRIES = 3


class SmscReceipts(SmscCore):
    """Sends receipts and handset replies on the system_id's receiver binds, queued while none
    has a free window slot."""

    def _make_receipt(
        self, conn: SmppConnection, system_id: str, pdu: Any, message_id: str, delivered: bool
    ) -> QueuedDeliver | None:
        if not self.profile.receipts:
            return None
        if self.profile.honor_registered_delivery:
            wanted = pdu.registered_delivery & 0x03
            if wanted == 0 or (wanted == 2 and delivered):
                return None
        lose = self.profile.lose_receipts
        if lose > 0 and self._rng.random() < lose:  # the operator's link or store loses it
            self.receipts_lost += 1
            return None
        return QueuedDeliver(
            message_id=message_id, system_id=system_id, origin=conn,
            source=pdu.destination, destination=pdu.source,
            submitted_at=time.time(), delivered=delivered,
        )

    def _delivered(
        self, receipt: QueuedDeliver | None, reply: QueuedDeliver | None, reply_delay: float
    ) -> None:
        """The handset has the message: send the receipt, then (after its delay) the reply."""
        if receipt is not None:
            self._dispatch(receipt)
        if reply is not None:
            if reply_delay > 0:
                self._later(reply_delay, self._dispatch, reply)
            else:
                self._dispatch(reply)

    def _dispatch(self, receipt: QueuedDeliver) -> None:
        """Send the receipt on a bound RX/TRX session with a free slot, or queue it."""
        conn = None if self._paused else self._pick_session(receipt)
        if conn is None:
            self._enqueue(receipt)
        else:
            self._send_receipt(conn, receipt)

    def _pick_session(self, receipt: QueuedDeliver) -> SmppConnection | None:
        if self.profile.receipts_any_bind:
            conn = self._next_session(receipt.system_id)
            if conn is not None and conn is not receipt.origin:
                self.receipts_elsewhere += 1
            return conn
        origin = receipt.origin
        if origin is not None and self._can_deliver(origin, receipt.system_id):
            return origin
        receipt.origin = None  # no longer useful; lets a closed connection be collected
        best: SmppConnection | None = None
        for conn in self._peers:
            if self._can_deliver(conn, receipt.system_id) and (
                best is None or conn.session.free_window > best.session.free_window
            ):
                best = conn
        return best

    def _next_session(self, system_id: str) -> SmppConnection | None:
        """The next session of `system_id` able to take a receipt, round robin."""
        able = [conn for conn in self._peers if self._can_deliver(conn, system_id)]
        if not able:
            return None
        self._any_bind_turn += 1
        return able[self._any_bind_turn % len(able)]

    def _can_deliver(self, conn: SmppConnection, system_id: str) -> bool:
        peer = self._peers.get(conn)
        if peer is None or peer.stats is None or peer.stats.system_id != system_id:
            return False
        session = conn.session
        return (
            session.state is SessionState.BOUND
            and session.mode in CAN_RECEIVE
            and session.free_window > 0
        )

    def _enqueue(self, receipt: QueuedDeliver) -> None:
        queue = self._pending.setdefault(receipt.system_id, deque())
        if self._pending_count >= PENDING_MAX:
            # Bounded: drop the oldest receipt of this system_id (or refuse if it has none).
            if not queue:
                self.receipts_dropped += 1
                return
            queue.popleft()
            self._pending_count -= 1
            self.receipts_dropped += 1
        queue.append(receipt)
        self._pending_count += 1
        self._notify()

    def _drain(self, system_id: str) -> None:
        queue = self._pending.get(system_id)
        while queue and not self._paused:
            conn = self._pick_session(queue[0])
            if conn is None:
                return
            receipt = queue.popleft()
            self._pending_count -= 1
            self._send_receipt(conn, receipt)

    def _send_receipt(self, conn: SmppConnection, receipt: QueuedDeliver) -> None:
        pdu = self._receipt_pdu(receipt)
        try:
            future = conn.request(pdu)
        except SessionError as exc:  # WindowFull / NotBound: raced with the session
            log.debug("smsc: receipt not sent on %s: %r", conn.peername, exc)
            self._enqueue(receipt)
            return
        if receipt.mo_text is None:
            self.receipts_sent += 1
        else:
            self.mo_sent_total += 1
        future.add_done_callback(
            lambda fut: self._on_receipt_result(fut, receipt)
        )

    def _on_receipt_result(self, future: asyncio.Future[Any], receipt: QueuedDeliver) -> None:
        if future.cancelled():
            self._enqueue(receipt)
            return
        exc = future.exception()
        if exc is None and future.result().command_status == CommandStatus.ESME_ROK:
            if receipt.mo_text is None:
                self.receipts_acked += 1
            else:
                self.mo_acked_total += 1
        elif exc is not None and not _counts_as_attempt(exc):
            # The connection went away (or the window was full): not the receipt's fault.
            self._enqueue(receipt)
        else:
            receipt.attempts += 1
            if receipt.attempts > RECEIPT_RETRIES:
                if receipt.mo_text is None:
                    self.receipts_failed += 1
                else:
                    self.mo_failed_total += 1
                log.info("smsc: giving up %s %s after %d attempts",
                         "receipt" if receipt.mo_text is None else "reply to",
                         receipt.message_id, receipt.attempts)
            else:
                self._dispatch(receipt)
        # A slot has freed on some session: send what waits for this system_id.
        self._drain(receipt.system_id)
        self._notify()

    def _receipt_pdu(self, receipt: QueuedDeliver) -> Any:
        if receipt.mo_text is not None:
            return mo_pdu(receipt.mo_text, receipt.source, receipt.destination)
        receipt_id = receipt.message_id
        if self.profile.receipt_id_format == "decimal":
            receipt_id = str(int(receipt_id, 16))
        stat, state = ("DELIVRD", DELIVERED) if receipt.delivered else ("UNDELIV", UNDELIVERABLE)
        return receipt_pdu(receipt_id, stat, state, receipt.submitted_at, time.time(),
                           source=receipt.source, destination=receipt.destination)


def _counts_as_attempt(exc: BaseException) -> bool:
    """A timeout counts against the receipt's retries; a lost connection does not."""
    return not isinstance(exc, ConnectionLost | SessionError)


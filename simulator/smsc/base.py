"""The simulated SMSC's state, timers, waiting helpers and statistics: the base the other
layers (receipts, faults, submits, server) build on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from aggregator.ratelimit import TokenBucket
from aggregator.smpp.transport import SmppConnection
from simulator.handsets import HandsetBook
from simulator.smsc.profile import SmscProfile
from simulator.smsc.records import BindStats, Peer, QueuedDeliver, ReceivedSubmit, Waiter

log = logging.getLogger("simulator.smsc")


class SmscCore:
    """State and counters of one simulated SMSC (see Smsc for the whole)."""

    def __init__(self, profile: SmscProfile) -> None:
        self.profile = profile
        self.submits_total = 0
        self.throttled_total = 0
        self.receipts_sent = 0
        self.receipts_acked = 0
        self.receipts_failed = 0  # given up after RECEIPT_RETRIES
        self.receipts_dropped = 0  # pushed out of the full pending queue
        self.binds_total = 0
        self.bind_failures = 0
        self.accepted_total = 0  # submits answered ESME_ROK (or about to be: latency)
        self.errors_total = 0  # answered with profile.error_status
        self.dropped_total = 0  # never answered (drop_ratio)
        self.disconnects_total = 0  # links dropped by disconnect_after/every, abort()
        self.invalid_total = 0  # answered ESME_RINVDSTADR: the handset is "invalid"
        self.mo_sent_total = 0  # handset replies (MO deliver_sm) sent, retries included
        self.mo_acked_total = 0
        self.mo_failed_total = 0  # given up after RECEIPT_RETRIES
        self.receipts_lost = 0  # not sent: lose_receipts
        self.queries_total = 0  # query_sm received
        self.queries_answered = 0  # answered with the message's state
        # Each accepted message's state for query_sm: (message_state, final time or 0), the
        # last RECEIVED_MAX.
        self._states: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self.bind_stats: dict[str, BindStats] = {}
        self._any_bind_turn = 0  # receipts_any_bind: whose turn it is
        self.receipts_elsewhere = 0  # receipts_any_bind: sent on a session not the submit's
        # The last RECEIVED_MAX (up to 10% more: trimmed in chunks so appends stay O(1)).
        self.received: list[ReceivedSubmit] = []
        self._peers: dict[SmppConnection, Peer] = {}
        # Receipts waiting for a bound RX/TRX session with a free slot, per system_id.
        self._pending: dict[str, deque[QueuedDeliver]] = {}
        self._pending_count = 0
        self._buckets: dict[str, TokenBucket] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._waiters: list[Waiter] = []
        self._rng = random.Random(self.profile.seed)
        # Random high part so that ids differ between runs (as a restarted SMSC's would).
        self._id_base = secrets.randbits(24) << 40
        self._id_counter = 0
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._ticking = False  # the _disconnect_tick timer chain runs
        self._paused = False
        self._held: list[tuple[Callable[..., None], tuple[Any, ...]]] = []  # answers pause() held
        self._last_link_drop: float | None = None  # disconnect_every: base of the next drop

    @property
    def handsets(self) -> HandsetBook | None:
        return self.profile.handsets

    @handsets.setter
    def handsets(self, book: HandsetBook | None) -> None:
        self.profile.handsets = book

    @property
    def max_outstanding(self) -> int:
        return max((s.max_outstanding for s in self.bind_stats.values()), default=0)

    @property
    def pending_receipts(self) -> int:
        return self._pending_count

    def summary(self) -> dict[str, Any]:
        return {
            "submits": self.submits_total,
            "accepted": self.accepted_total,
            "throttled": self.throttled_total,
            "errors": self.errors_total,
            "dropped": self.dropped_total,
            "disconnects": self.disconnects_total,
            "receipts_sent": self.receipts_sent,
            "receipts_acked": self.receipts_acked,
            "receipts_failed": self.receipts_failed,
            "receipts_dropped": self.receipts_dropped,
            "receipts_pending": self._pending_count,
            "invalid": self.invalid_total,
            "mo_sent": self.mo_sent_total,
            "mo_acked": self.mo_acked_total,
            "mo_failed": self.mo_failed_total,
            "receipts_lost": self.receipts_lost,
            "queries": self.queries_total,
            "queries_answered": self.queries_answered,
            "binds": self.binds_total,
            "bind_failures": self.bind_failures,
            "active_binds": sum(1 for s in self.bind_stats.values() if s.bound),
            "max_outstanding": self.max_outstanding,
            "bind_stats": [asdict(s) for s in self.bind_stats.values()],
        }

    async def wait_for_submits(self, n: int, timeout: float) -> None:
        """Wait until submits_total >= n; raises TimeoutError after `timeout` seconds."""
        await self.wait_until(lambda: self.submits_total >= n, timeout)

    async def wait_until(self, condition: Callable[[], bool], timeout: float) -> None:
        """Wait until `condition()` holds; it is re-checked whenever a counter changes."""
        if condition():
            return
        waiter = Waiter(condition, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.future.done() and waiter.condition():
                waiter.future.set_result(None)

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _later(self, delay: float, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            try:
                callback(*args)
            except Exception:
                log.exception("smsc: timer callback failed")

        handle = self._loop.call_later(delay, fire)
        self._timers.add(handle)

"""Counting what a load run sees: answers, errors, latencies, the per-second timeline and
receipts matched to their messages."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from simulator.load.options import LoadOptions, LoadResult, TimelinePoint
from simulator.stats import LatencyHistogram

_EARLY_RECEIPTS_MAX = 10_000


@dataclass(slots=True)
class _Second:
    sent: int = 0
    accepted: int = 0
    errors: int = 0
    receipts: int = 0
    accept: LatencyHistogram = field(default_factory=LatencyHistogram)
    receipt: LatencyHistogram = field(default_factory=LatencyHistogram)


class Recorder:
    """Counters, histograms, the per-second timeline and receipt matching. Times are
    `time.perf_counter()` values."""

    def __init__(self, result: LoadResult, start: float, track_receipts: bool) -> None:
        self.result = result
        self.start = start
        self.track_receipts = track_receipts
        self.in_flight = 0
        self.sending_done = False
        self.all_receipts = asyncio.Event()
        self._awaiting: dict[str, float] = {}  # message id -> request time
        self._early: dict[str, tuple[float, str]] = {}  # receipts that beat their accept
        self._second = 0
        self._current = _Second()
        self.last_answer = start

    def _at(self, now: float) -> _Second:
        second = int(now - self.start)
        while second > self._second:
            self._close_second()
        return self._current

    def _close_second(self) -> None:
        s = self._current
        ms = 1000.0
        self.result.timeline.append(TimelinePoint(
            t=self._second, sent=s.sent, accepted=s.accepted, errors=s.errors,
            receipts=s.receipts,
            accept_p50_ms=round(s.accept.percentile(50) * ms, 3),
            accept_p99_ms=round(s.accept.percentile(99) * ms, 3),
            receipt_p50_ms=round(s.receipt.percentile(50) * ms, 3),
            receipt_p99_ms=round(s.receipt.percentile(99) * ms, 3),
        ))
        self._second += 1
        self._current = _Second()

    def finish(self, now: float) -> None:
        self._at(now)
        self._close_second()

    def sent(self, n: int, now: float) -> None:
        self.result.sent += n
        self.in_flight += n
        self._at(now).sent += n

    def accepted(self, message_id: str, t0: float, now: float) -> None:
        second = self._at(now)
        self.in_flight -= 1
        self.last_answer = now
        self.result.accepted += 1
        second.accepted += 1
        self.result.accept_latency.record(now - t0)
        second.accept.record(now - t0)
        if self.result.options.record_ids:
            self.result.ids.append(message_id)
        if not self.track_receipts:
            return
        self.result.receipts_expected += 1
        early = self._early.pop(message_id, None)
        if early is not None:
            self._count_receipt(early[1], early[0] - t0, early[0])
            return
        if len(self._awaiting) >= self.result.options.max_pending_receipts:
            del self._awaiting[next(iter(self._awaiting))]  # the oldest
            self.result.untracked += 1
        self._awaiting[message_id] = t0

    def error(self, code: str, now: float, n: int = 1) -> None:
        self.in_flight -= n
        self.last_answer = now
        self.result.errors[code] = self.result.errors.get(code, 0) + n
        self._at(now).errors += n

    def receipt(self, message_id: str, status: str, now: float) -> None:
        t0 = self._awaiting.pop(message_id, None)
        if t0 is not None:
            self._count_receipt(status, now - t0, now)
            self.check_done()
        elif self.track_receipts and not self.sending_done:
            # Possibly faster than the accept answer we have not processed yet.
            if len(self._early) >= _EARLY_RECEIPTS_MAX:
                del self._early[next(iter(self._early))]
            self._early[message_id] = (now, status)

    def _count_receipt(self, status: str, latency: float, now: float) -> None:
        second = self._at(now)
        self.result.receipts += 1
        second.receipts += 1
        self.result.receipt_latency.record(latency)
        second.receipt.record(latency)
        by_status = self.result.receipts_by_status
        by_status[status] = by_status.get(status, 0) + 1

    def check_done(self) -> None:
        if self.sending_done and not self._awaiting:
            self.all_receipts.set()

    @property
    def awaiting(self) -> int:
        return len(self._awaiting)


async def wait_receipts(options: LoadOptions, rec: Recorder, stop: asyncio.Event) -> None:
    rec.sending_done = True
    rec.check_done()
    if not options.receipts or stop.is_set():
        return
    waiters = [asyncio.ensure_future(rec.all_receipts.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waiters, timeout=options.receipt_wait,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()

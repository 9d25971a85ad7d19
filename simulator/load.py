"""`smsagg-sim load`: a load generator for smsagg over HTTP (single or batch) or SMPP.

It issues messages at a target rate (or as fast as the concurrency/window allows), measures the
accept latency (request to 202 / submit_sm_resp) and the receipt latency (request to HTTP callback
/ deliver_sm receipt), shows live progress on stderr, and reports throughput and percentiles as
text and JSON, optionally as a plot.

Memory is bounded: latencies go into fixed log-bucket histograms (`simulator.stats`), requests
in flight are bounded by --concurrency (HTTP) or --binds x --window (SMPP), and messages waiting
for their receipt by `LoadOptions.max_pending_receipts`. The one exception is asked for: with
--ids FILE (`LoadOptions.record_ids`) every accepted message id is kept, for tests that check
what became of each.

Programmatic use (benchmarks): `await run_load(LoadOptions(...))` returns a `LoadResult`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from aiosmpplib import NPI, TON, DeliverSmResp, PhoneNumber, SubmitSm

from aggregator.model import Encoding
from aggregator.smpp.fields import MESSAGE_STATE, RECEIPTED_MESSAGE_ID
from aggregator.smpp.session import BindMode, NotBound, RequestReceived, WindowFull
from aggregator.smpp.status import CommandStatus, status_name
from aggregator.smpp.transport import ConnectionLost, RequestTimeout, SmppConnection, open_client
from aggregator.text import GSM7_PART, GSM7_SINGLE, count_segments, is_gsm7
from simulator.callback_server import CallbackServer
from simulator.http_client import HttpClient, HttpError
from simulator.stats import LatencyHistogram

MODES = ("http", "batch", "smpp")
CALLBACK_PATH = "/receipts"
TTY_PROGRESS_INTERVAL = 1.0
PLAIN_PROGRESS_INTERVAL = 5.0
_EARLY_RECEIPTS_MAX = 10_000
_STOP_CHECK = 0.05  # seconds a sender sleeps at most before it looks at the stop event again

# SMPP message_state (TLV 0x0427) to the status names of the HTTP API.
_MESSAGE_STATES = {
    1: "enroute", 2: "delivered", 3: "expired", 4: "deleted", 5: "undeliverable",
    6: "accepted", 7: "unknown", 8: "rejected",
}


# -- options and results --------------------------------------------------------------------------


@dataclass(slots=True)
class LoadOptions:
    mode: str = "http"  # http | batch | smpp
    url: str = "http://127.0.0.1:8080"
    api_key: str = ""
    smpp_host: str = "127.0.0.1"
    smpp_port: int = 2775
    system_id: str = ""
    password: str = ""
    binds: int = 1
    window: int = 10
    rate: float = 0.0  # messages per second; 0: as fast as possible
    count: int | None = None  # with duration None too: 1000
    duration: float | None = None  # seconds of sending
    concurrency: int = 50  # HTTP requests in flight (http, batch)
    batch_size: int = 100
    prefix: str = "+38344"
    digits: int = 6
    sender: str = "LOAD"
    text: str = "smsagg load test"
    segments: int | None = None  # make the text this many GSM-7 segments long
    callback_url: str | None = None  # URL put in messages (default: the local receiver's)
    callback_listen: str | None = None  # host:port of the local receiver (default 127.0.0.1:0)
    receipts: bool = True
    receipt_wait: float = 30.0
    timeout: float = 30.0  # per request (HTTP) / response timeout (SMPP)
    seed: int | None = None
    progress: bool = False  # live progress on `progress_stream` (stderr by default)
    max_pending_receipts: int = 1_000_000
    record_ids: bool = False  # keep every accepted id in LoadResult.ids (--ids FILE)

    def check(self) -> None:
        """Raise ValueError naming the option that is wrong."""
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}")
        if self.rate < 0:
            raise ValueError("--rate must be >= 0")
        if self.count is not None and self.count < 0:
            raise ValueError("--count must be >= 0")
        if self.duration is not None and self.duration <= 0:
            raise ValueError("--duration must be > 0")
        if self.concurrency < 1 or self.binds < 1 or self.window < 1 or self.batch_size < 1:
            raise ValueError("--concurrency, --binds, --window and --batch-size must be >= 1")
        if not (self.prefix.startswith("+") and self.prefix[1:].isdigit()):
            raise ValueError("--prefix must be '+' and digits, e.g. +38344")
        if not 1 <= self.digits <= 14 or len(self.prefix) - 1 + self.digits > 15:
            raise ValueError("--digits: prefix + digits must be at most 15 digits (E.164)")
        if self.segments is not None and self.segments < 1:
            raise ValueError("--segments must be >= 1")
        if self.segments is not None and not is_gsm7(self.text):
            raise ValueError("--segments needs a --text in the GSM-7 alphabet")
        if self.receipt_wait < 0 or self.timeout <= 0:
            raise ValueError("--receipt-wait must be >= 0 and --timeout > 0")
        if self.callback_listen is not None:
            _split_host_port(self.callback_listen)
        if self.mode != "smpp":
            http_target(self.url)

    def public_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for secret in ("api_key", "password"):
            if data[secret]:
                data[secret] = "***"
        return data


@dataclass(slots=True, frozen=True)
class TimelinePoint:
    t: int  # second since the start
    sent: int
    accepted: int
    errors: int
    receipts: int
    accept_p50_ms: float
    accept_p99_ms: float
    receipt_p50_ms: float
    receipt_p99_ms: float


@dataclass(slots=True)
class LoadResult:
    options: LoadOptions
    sent: int = 0
    accepted: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0  # start to the last accept answer
    total_elapsed: float = 0.0  # including the receipt wait
    accept_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    receipt_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    receipts: int = 0
    receipts_expected: int = 0
    receipts_by_status: dict[str, int] = field(default_factory=dict)
    untracked: int = 0  # accepted but dropped from receipt matching (max_pending_receipts)
    stopped: bool = False  # interrupted (stop event)
    timeline: list[TimelinePoint] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # accepted ids in order, with record_ids

    @property
    def errors_total(self) -> int:
        return sum(self.errors.values())

    @property
    def throughput(self) -> float:
        """Accepted messages per second over the sending phase."""
        return self.accepted / self.elapsed if self.elapsed > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.options.mode,
            "sent": self.sent,
            "accepted": self.accepted,
            "errors_total": self.errors_total,
            "errors": dict(sorted(self.errors.items())),
            "elapsed_s": round(self.elapsed, 3),
            "total_elapsed_s": round(self.total_elapsed, 3),
            "throughput_msg_s": round(self.throughput, 1),
            "accept_latency_ms": self.accept_latency.summary_ms(),
            "receipt_latency_ms": self.receipt_latency.summary_ms(),
            "receipts": self.receipts,
            "receipts_expected": self.receipts_expected,
            "receipts_by_status": dict(sorted(self.receipts_by_status.items())),
            "untracked": self.untracked,
            "stopped": self.stopped,
            "timeline": [asdict(p) for p in self.timeline],
            "options": self.options.public_dict(),
        }


# -- message content ------------------------------------------------------------------------------


def segment_text(text: str, segments: int) -> str:
    """`text` repeated (space-separated) to fill exactly `segments` GSM-7 segments."""
    if not text:
        text = "x"
    target = GSM7_SINGLE if segments == 1 else GSM7_PART * segments
    unit = text + " "
    out = (unit * (target // len(unit) + 1))[:target].rstrip(" ")
    while count_segments(out, Encoding.GSM7) > segments:  # extension characters count twice
        out = out[:-1]
    while out.endswith(" "):
        out = out[:-1]
    return out


class Destinations:
    """Random numbers: the prefix and `digits` random digits (no leading zero)."""

    def __init__(self, prefix: str, digits: int, rng: random.Random) -> None:
        self._prefix = prefix
        self._low = 10 ** (digits - 1) if digits > 1 else 0
        self._high = 10**digits
        self._rng = rng

    def next(self) -> str:
        return f"{self._prefix}{self._rng.randrange(self._low, self._high)}"


# -- recording ------------------------------------------------------------------------------------


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


# -- pacing ---------------------------------------------------------------------------------------

# issue(first message index, number of messages): sends one request and records its outcome.
Issue = Callable[[int, int], Awaitable[None]]


async def schedule(options: LoadOptions, issue: Issue, slots: int, unit: int, start: float,
                   stop: asyncio.Event) -> None:
    """Issue requests of up to `unit` messages with at most `slots` in flight.

    Message i is due at start + i / rate. `slots` senders take the next index in turn and sleep
    only when it is not yet due, so when they are behind they issue back to back (as many as are
    free) and catch up. No task or semaphore per request: at thousands of requests a second the
    load generator's own CPU is taken from the daemon it measures."""
    count = options.count
    if count is None and options.duration is None:
        count = 1000
    deadline = start + options.duration if options.duration is not None else None
    rate = options.rate
    next_index = 0

    async def sender() -> None:
        nonlocal next_index
        while not stop.is_set():
            first = next_index
            n = unit if count is None else min(unit, count - first)
            if n <= 0:
                return
            due = start + first / rate if rate > 0 else 0.0
            if deadline is not None and due >= deadline:
                return
            next_index = first + n
            while True:
                now = time.perf_counter()
                if deadline is not None and now >= deadline:
                    return
                if due <= now:
                    break
                await asyncio.sleep(min(due - now, _STOP_CHECK))
                if stop.is_set():
                    return
            await issue(first, n)

    await asyncio.gather(*(sender() for _ in range(slots)))


# -- HTTP -----------------------------------------------------------------------------------------


def _error_code(status: int, data: object) -> str:
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            return str(error["code"])
    return f"http_{status}"


class HttpLoad:
    def __init__(self, options: LoadOptions, rec: Recorder, content: Callable[[], dict[str, Any]],
                 client: HttpClient) -> None:
        self.options = options
        self.rec = rec
        self.content = content
        self.client = client
        self.path = urlsplit(options.url).path.rstrip("/")

    async def single(self, index: int, n: int) -> None:
        body = json.dumps(self.content()).encode()
        rec = self.rec
        t0 = time.perf_counter()
        rec.sent(1, t0)
        try:
            status, raw = await self.client.post(f"{self.path}/v1/messages", body)
        except HttpError as exc:
            rec.error(exc.code, time.perf_counter())
            return
        now = time.perf_counter()
        data = _json_or_none(raw)
        if status == 202 and isinstance(data, dict) and "id" in data:
            rec.accepted(str(data["id"]), t0, now)
        else:
            rec.error(_error_code(status, data), now)

    async def batch(self, index: int, n: int) -> None:
        body = json.dumps({"messages": [self.content() for _ in range(n)]}).encode()
        rec = self.rec
        t0 = time.perf_counter()
        rec.sent(n, t0)
        try:
            status, raw = await self.client.post(f"{self.path}/v1/messages/batch", body)
        except HttpError as exc:
            rec.error(exc.code, time.perf_counter(), n)
            return
        now = time.perf_counter()
        data = _json_or_none(raw)
        results = data.get("results") if isinstance(data, dict) else None
        if status != 200 or not isinstance(results, list):
            rec.error(_error_code(status, data), now, n)
            return
        for item in results[:n]:
            if not isinstance(item, dict):
                rec.error("bad_batch_item", now)
            elif item.get("status") == 202 and "id" in item:
                rec.accepted(str(item["id"]), t0, now)
            else:
                rec.error(_error_code(int(item.get("status") or 0), item), now)
        if len(results) < n:
            rec.error("missing_batch_result", now, n - len(results))


def _json_or_none(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def http_target(url: str) -> tuple[str, int]:
    """(host, port) of an http:// URL; ValueError for anything the load cannot drive."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"--url must be http://host:port, not {url!r}")
    return parts.hostname, parts.port or 80


def _split_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--callback-listen must be host:port, not {text!r}")
    return host or "127.0.0.1", int(port)


@contextlib.asynccontextmanager
async def callback_receiver(options: LoadOptions, rec: Recorder) -> AsyncIterator[str]:
    """A server for delivery callbacks (`simulator.callback_server`); yields the URL to put in
    messages."""

    def receive(body: dict[str, object]) -> None:
        message_id = body.get("id")
        if isinstance(message_id, str):
            rec.receipt(message_id, str(body.get("status", "unknown")), time.perf_counter())

    host, port = _split_host_port(options.callback_listen or "127.0.0.1:0")
    server = CallbackServer(host, port, CALLBACK_PATH, receive)
    await server.start()
    try:
        url_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        if ":" in url_host:
            url_host = f"[{url_host}]"
        yield options.callback_url or f"http://{url_host}:{server.port}{CALLBACK_PATH}"
    finally:
        server.close()


async def _run_http(options: LoadOptions, rec: Recorder, start: float, stop: asyncio.Event,
                    text: str, rng: random.Random) -> None:
    destinations = Destinations(options.prefix, options.digits, rng)
    async with contextlib.AsyncExitStack() as stack:
        callback_url: str | None = None
        if options.receipts:
            callback_url = await stack.enter_async_context(callback_receiver(options, rec))

        def content() -> dict[str, Any]:
            body: dict[str, Any] = {"to": destinations.next(), "from": options.sender,
                                    "text": text}
            if callback_url is not None:
                body["callback_url"] = callback_url
            return body

        host, port = http_target(options.url)
        client = HttpClient(host, port, {"Authorization": f"Bearer {options.api_key}"},
                            options.timeout)
        stack.callback(client.close)
        load = HttpLoad(options, rec, content, client)
        if options.mode == "batch":
            await schedule(options, load.batch, options.concurrency, options.batch_size, start,
                           stop)
        else:
            await schedule(options, load.single, options.concurrency, 1, start, stop)
        await _wait_receipts(options, rec, stop)


async def _wait_receipts(options: LoadOptions, rec: Recorder, stop: asyncio.Event) -> None:
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


# -- SMPP -----------------------------------------------------------------------------------------


def _tlv(pdu: Any, tag: int) -> Any:
    for param in getattr(pdu, "optional_params", None) or []:
        if param.tag == tag:
            return param.value
    return None


class SmppLoad:
    def __init__(self, options: LoadOptions, rec: Recorder, text: str,
                 destinations: Destinations) -> None:
        self.options = options
        self.rec = rec
        self.text = text
        self.destinations = destinations
        self.conns: list[SmppConnection] = []

    def on_event(self, conn: SmppConnection, event: object) -> None:
        if not isinstance(event, RequestReceived):
            return
        pdu = event.pdu
        conn.respond(pdu, DeliverSmResp())
        message_id = _tlv(pdu, RECEIPTED_MESSAGE_ID)
        if message_id is None:
            return  # a mobile-originated message, not a receipt
        state = _tlv(pdu, MESSAGE_STATE)
        status = _MESSAGE_STATES.get(int(state), str(state)) if state is not None else "unknown"
        self.rec.receipt(str(message_id), status, time.perf_counter())

    async def connect(self) -> None:
        o = self.options
        self.conns = list(await asyncio.gather(*(
            open_client(o.smpp_host, o.smpp_port, mode=BindMode.TRANSCEIVER,
                        system_id=o.system_id, password=o.password, window=o.window,
                        response_timeout=o.timeout, on_event=self.on_event)
            for _ in range(o.binds)
        )))

    async def close(self) -> None:
        await asyncio.gather(*(c.unbind() for c in self.conns), return_exceptions=True)

    def _pick(self) -> SmppConnection | None:
        best: SmppConnection | None = None
        best_free = 0
        for conn in self.conns:
            if conn.closed.done():
                continue
            free = conn.session.window - conn.session.in_flight
            if free > best_free:
                best, best_free = conn, free
        return best

    def _pdu(self) -> Any:
        sender = self.options.sender
        source = (PhoneNumber(sender.lstrip("+"), TON.INTERNATIONAL, NPI.ISDN)
                  if sender.lstrip("+").isdigit()
                  else PhoneNumber(sender, TON.ALPHANUMERIC, NPI.UNKNOWN))
        long = len(self.text) > GSM7_SINGLE
        return SubmitSm(
            short_message="" if long else self.text,
            message_payload=self.text if long else "",
            source=source,
            destination=PhoneNumber(self.destinations.next()[1:], TON.INTERNATIONAL, NPI.ISDN),
            registered_delivery=1 if self.options.receipts else 0,
        )

    async def submit(self, index: int, n: int) -> None:
        rec = self.rec
        t0 = time.perf_counter()
        rec.sent(1, t0)
        conn = self._pick()
        if conn is None:
            rec.error("no_bind", t0)
            return
        try:
            resp = await conn.request(self._pdu())
        except RequestTimeout:
            rec.error("timeout", time.perf_counter())
            return
        except (ConnectionLost, NotBound, WindowFull) as exc:
            rec.error(type(exc).__name__, time.perf_counter())
            return
        now = time.perf_counter()
        status = int(resp.command_status)
        if status == CommandStatus.ESME_ROK:
            rec.accepted(str(resp.message_id), t0, now)
        else:
            rec.error(status_name(status) or f"0x{status:08X}", now)


async def _run_smpp(options: LoadOptions, rec: Recorder, start: float, stop: asyncio.Event,
                    text: str, rng: random.Random) -> None:
    load = SmppLoad(options, rec, text, Destinations(options.prefix, options.digits, rng))
    try:
        await load.connect()
        await schedule(options, load.submit, options.binds * options.window, 1, start, stop)
        await _wait_receipts(options, rec, stop)
    finally:
        await load.close()


# -- progress -------------------------------------------------------------------------------------


def progress_line(rec: Recorder, now: float, rate: float) -> str:
    r = rec.result
    return (f"t={now - rec.start:6.1f}s rate={rate:7.0f}/s in_flight={rec.in_flight:5d}"
            f" accepted={r.accepted} errors={r.errors_total} receipts={r.receipts}")


async def _progress(rec: Recorder, stream: TextIO) -> None:
    tty = stream.isatty()
    interval = TTY_PROGRESS_INTERVAL if tty else PLAIN_PROGRESS_INTERVAL
    last_time, last_accepted = rec.start, 0
    try:
        while True:
            await asyncio.sleep(interval)
            now = time.perf_counter()
            rate = (rec.result.accepted - last_accepted) / (now - last_time)
            last_time, last_accepted = now, rec.result.accepted
            line = progress_line(rec, now, rate)
            if tty:
                stream.write("\r" + line + "\x1b[K")
            else:
                stream.write(line + "\n")
            stream.flush()
    finally:
        if tty:
            stream.write("\n")
            stream.flush()


# -- entry points ---------------------------------------------------------------------------------


async def run_load(options: LoadOptions, stop: asyncio.Event | None = None,
                   progress_stream: TextIO | None = None) -> LoadResult:
    """Run one load test and return its figures. `stop` ends sending early (no receipt wait)."""
    options.check()
    stop = stop or asyncio.Event()
    text = segment_text(options.text, options.segments) if options.segments else options.text
    rng = random.Random(options.seed)
    result = LoadResult(options)
    start = time.perf_counter()
    rec = Recorder(result, start, options.receipts)
    reporter = (asyncio.create_task(_progress(rec, progress_stream or sys.stderr))
                if options.progress else None)
    try:
        if options.mode == "smpp":
            await _run_smpp(options, rec, start, stop, text, rng)
        else:
            await _run_http(options, rec, start, stop, text, rng)
    finally:
        if reporter is not None:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
    end = time.perf_counter()
    result.elapsed = rec.last_answer - start
    result.total_elapsed = end - start
    result.stopped = stop.is_set()
    rec.finish(end)
    return result


def format_summary(result: LoadResult) -> str:
    r = result

    def latency(h: LatencyHistogram) -> str:
        s = h.summary_ms()
        return f"p50 {s['p50']:.1f}  p95 {s['p95']:.1f}  p99 {s['p99']:.1f}  max {s['max']:.1f} ms"

    lines = [
        f"mode {r.options.mode}: sent {r.sent}  accepted {r.accepted}  errors {r.errors_total}"
        + ("  (stopped early)" if r.stopped else ""),
    ]
    if r.errors:
        lines.append("errors by code: "
                     + "  ".join(f"{code}={n}" for code, n in sorted(r.errors.items())))
    lines.append(f"elapsed {r.elapsed:.2f} s  throughput {r.throughput:.1f} msg/s accepted"
                 f"  (total with receipt wait {r.total_elapsed:.2f} s)")
    lines.append(f"accept latency  {latency(r.accept_latency)}")
    if r.options.receipts:
        lines.append(f"receipt latency {latency(r.receipt_latency)}")
        statuses = "  ".join(f"{k}={n}" for k, n in sorted(r.receipts_by_status.items()))
        lines.append(f"receipts {r.receipts}/{r.receipts_expected}"
                     + (f"  ({statuses})" if statuses else ""))
    else:
        lines.append("receipts not requested (--no-receipts)")
    return "\n".join(lines)


def plot_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def write_plot(result: LoadResult, path: str) -> None:
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")

    t = [p.t for p in result.timeline]
    fig, (rate_ax, lat_ax) = plt.subplots(2, 1, sharex=True, figsize=(10, 7))
    rate_ax.plot(t, [p.sent for p in result.timeline], label="sent/s")
    rate_ax.plot(t, [p.accepted for p in result.timeline], label="accepted/s")
    rate_ax.plot(t, [p.receipts for p in result.timeline], label="receipts/s")
    rate_ax.plot(t, [p.errors for p in result.timeline], label="errors/s")
    rate_ax.set_ylabel("messages per second")
    rate_ax.legend()
    rate_ax.grid(True)
    lat_ax.plot(t, [p.accept_p50_ms for p in result.timeline], label="accept p50")
    lat_ax.plot(t, [p.accept_p99_ms for p in result.timeline], label="accept p99")
    lat_ax.plot(t, [p.receipt_p50_ms for p in result.timeline], label="receipt p50")
    lat_ax.plot(t, [p.receipt_p99_ms for p in result.timeline], label="receipt p99")
    lat_ax.set_ylabel("latency (ms)")
    lat_ax.set_xlabel("seconds since start")
    lat_ax.legend()
    lat_ax.grid(True)
    fig.suptitle(f"smsagg load ({result.options.mode}): {result.accepted} accepted, "
                 f"{result.throughput:.0f} msg/s")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- command line ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = LoadOptions()
    parser.add_argument("--mode", choices=MODES, default=d.mode,
                        help="http: one message per POST; batch: POST /v1/messages/batch;"
                             " smpp: submit_sm on transceiver binds")
    target = parser.add_argument_group("target")
    target.add_argument("--url", default=d.url, help="smsagg HTTP API base URL")
    target.add_argument("--api-key", default=d.api_key)
    target.add_argument("--smpp-host", default=d.smpp_host)
    target.add_argument("--smpp-port", type=int, default=d.smpp_port)
    target.add_argument("--system-id", default=d.system_id)
    target.add_argument("--password", default=d.password)
    load = parser.add_argument_group("load")
    load.add_argument("--rate", type=float, default=d.rate,
                      help="messages per second (0: as fast as possible)")
    load.add_argument("--count", type=int, default=None,
                      help="messages to send (default 1000 unless --duration)")
    load.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                      help="send for this long (with --count: whichever ends first)")
    load.add_argument("--concurrency", type=int, default=d.concurrency,
                      help="HTTP requests in flight")
    load.add_argument("--batch-size", type=int, default=d.batch_size,
                      help="messages per batch request (--mode batch)")
    load.add_argument("--binds", type=int, default=d.binds, help="SMPP transceiver binds")
    load.add_argument("--window", type=int, default=d.window,
                      help="SMPP requests in flight per bind")
    load.add_argument("--timeout", type=float, default=d.timeout,
                      help="seconds per HTTP request / SMPP response")
    content = parser.add_argument_group("messages")
    content.add_argument("--prefix", default=d.prefix,
                         help="destinations: this prefix plus --digits random digits")
    content.add_argument("--digits", type=int, default=d.digits)
    content.add_argument("--sender", default=d.sender, help="'from' / source_addr")
    content.add_argument("--text", default=d.text)
    content.add_argument("--segments", type=int, default=None,
                         help="repeat --text to exactly this many GSM-7 segments")
    content.add_argument("--seed", type=int, default=None, help="random seed for destinations")
    receipts = parser.add_argument_group("receipts")
    receipts.add_argument("--no-receipts", action="store_true",
                          help="no callback URL / registered_delivery=0")
    receipts.add_argument("--callback-listen", default=None, metavar="HOST:PORT",
                          help="where the callback receiver listens (default 127.0.0.1:0)")
    receipts.add_argument("--callback-url", default=None,
                          help="callback URL put in messages (default: the receiver's own)")
    receipts.add_argument("--receipt-wait", type=float, default=d.receipt_wait,
                          metavar="SECONDS", help="after sending, wait this long for receipts")
    output = parser.add_argument_group("output")
    output.add_argument("--json", default=None, metavar="FILE",
                        help="write the results (with a per-second timeline) as JSON")
    output.add_argument("--plot", default=None, metavar="FILE.png",
                        help="plot rate and latency over time (needs matplotlib)")
    output.add_argument("--ids", default=None, metavar="FILE",
                        help="write every accepted message id to FILE, one per line")
    output.add_argument("--no-progress", action="store_true", help="no live progress on stderr")


def options_from_args(args: argparse.Namespace) -> LoadOptions:
    return LoadOptions(
        mode=args.mode, url=args.url, api_key=args.api_key, smpp_host=args.smpp_host,
        smpp_port=args.smpp_port, system_id=args.system_id, password=args.password,
        binds=args.binds, window=args.window, rate=args.rate, count=args.count,
        duration=args.duration, concurrency=args.concurrency, batch_size=args.batch_size,
        prefix=args.prefix, digits=args.digits, sender=args.sender, text=args.text,
        segments=args.segments, callback_url=args.callback_url,
        callback_listen=args.callback_listen, receipts=not args.no_receipts,
        receipt_wait=args.receipt_wait, timeout=args.timeout, seed=args.seed,
        progress=not args.no_progress, record_ids=args.ids is not None,
    )


async def _main(options: LoadOptions) -> LoadResult:
    from simulator.cli import install_stop_signals

    stop = asyncio.Event()
    install_stop_signals(stop)
    return await run_load(options, stop)


async def _main_code(options: LoadOptions, box: list[LoadResult]) -> int:
    box.append(await _main(options))
    return 0


def run_command(args: argparse.Namespace) -> int:
    """Exit 0 after a completed run, 1 when nothing was accepted, 2 on bad options."""
    from simulator.cli import run_async

    options = options_from_args(args)
    options.check()  # ValueError: the CLI prints it and exits 2
    if args.plot and not plot_available():
        print("smsagg-sim load: --plot needs matplotlib, which is not installed"
              " (pip install 'smsagg[plot]' or pip install matplotlib)", file=sys.stderr)
        return 2
    box: list[LoadResult] = []
    run_async(_main_code(options, box), args.loop)
    result = box[0]
    print(format_summary(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n",
                                   encoding="utf-8")
    if args.plot:
        write_plot(result, args.plot)
    if args.ids is not None:
        Path(args.ids).write_text("".join(f"{i}\n" for i in result.ids), encoding="utf-8")
    return 0 if result.accepted > 0 or result.sent == 0 else 1

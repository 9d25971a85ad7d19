"""What a load run is asked for (`LoadOptions`) and what it found (`LoadResult`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from aggregator.text import is_gsm7
from simulator.stats import LatencyHistogram

MODES = ("http", "batch", "smpp")


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
            split_host_port(self.callback_listen)
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


def http_target(url: str) -> tuple[str, int]:
    """(host, port) of an http:// URL; ValueError for anything the load cannot drive."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"--url must be http://host:port, not {url!r}")
    return parts.hostname, parts.port or 80


def split_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--callback-listen must be host:port, not {text!r}")
    return host or "127.0.0.1", int(port)

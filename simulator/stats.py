"""Bounded-memory latency statistics for the load generator.

`LatencyHistogram` keeps counts in fixed logarithmic buckets (HDR-like): each bucket spans 1 %
of its value, from 1 microsecond to about an hour. Memory is at most a few thousand integers
whatever the number of samples; percentiles are accurate to the bucket width (~1 %), and the
exact minimum and maximum are kept beside the buckets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MIN_VALUE = 1e-6  # seconds: everything below lands in bucket 0
RATIO = 1.01  # relative width of one bucket
_LOG_RATIO = math.log(RATIO)
MAX_BUCKET = int(math.log(3600.0 / MIN_VALUE) / _LOG_RATIO) + 1  # values above are clamped


def bucket_of(value: float) -> int:
    if value <= MIN_VALUE:
        return 0
    return min(MAX_BUCKET, int(math.log(value / MIN_VALUE) / _LOG_RATIO))


def bucket_value(index: int) -> float:
    """A representative value of a bucket (its geometric middle)."""
    return float(MIN_VALUE * RATIO ** (index + 0.5))


@dataclass(slots=True)
class LatencyHistogram:
    """Latencies in seconds. Sparse: only buckets that saw a value are stored."""

    counts: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total: float = 0.0
    min: float = math.inf
    max: float = 0.0

    def record(self, value: float) -> None:
        value = max(0.0, value)
        index = bucket_of(value)
        self.counts[index] = self.counts.get(index, 0) + 1
        self.count += 1
        self.total += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def merge(self, other: LatencyHistogram) -> None:
        for index, n in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + n
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def percentile(self, pct: float) -> float:
        """The value at or below which `pct` percent of the samples fall (0 when empty).

        Monotone in `pct` and never above `max`, so p50 <= p95 <= p99 <= max always holds."""
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(pct / 100.0 * self.count))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                return min(self.max, max(self.min, bucket_value(index)))
        return self.max

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def summary_ms(self) -> dict[str, float | int]:
        """count, p50, p95, p99, max and mean in milliseconds (rounded to microseconds)."""

        def ms(value: float) -> float:
            return round(value * 1000.0, 3)

        return {
            "count": self.count,
            "p50": ms(self.percentile(50)),
            "p95": ms(self.percentile(95)),
            "p99": ms(self.percentile(99)),
            "max": ms(self.max),
            "mean": ms(self.mean),
        }

"""metrics.batched: counts and observations kept on the hot path land in the metric's own
series, in the buckets Histogram.observe picks, before anything reads the registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from aggregator import metrics


def _value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_counter_batch_is_exact_when_read() -> None:
    before = _value("smsagg_receipts_total", provider="batch-test", status="delivered")
    batch = metrics.batched(metrics.receipts, "batch-test", "delivered")
    assert batch is metrics.batched(metrics.receipts, "batch-test", "delivered")
    batch.inc()
    batch.inc(2)
    metrics.receipts.labels("batch-test", "delivered").inc()
    assert _value("smsagg_receipts_total", provider="batch-test", status="delivered") == before + 4


def test_histogram_batch_buckets_as_observe_does() -> None:
    values = [0.0, 0.001, 0.0010001, 0.0025, 0.7, 60.0, 61.0, 1e9]
    registry = CollectorRegistry()
    plain = Histogram("plain_seconds", "x", buckets=metrics.LATENCY_BUCKETS, registry=registry)
    for v in values:
        plain.observe(v)
    name, labels = "smsagg_submit_latency_seconds", {"provider": "batch-test"}
    bounds = [*(str(b) for b in metrics.LATENCY_BUCKETS), "+Inf"]
    series = [("_bucket", {"le": le}) for le in bounds] + [("_count", {}), ("_sum", {})]

    def ours() -> list[float]:
        return [_value(name + suffix, **labels, **extra) for suffix, extra in series]

    before = ours()
    batch = metrics.batched(metrics.submit_latency, "batch-test")
    for v in values:
        batch.observe(v)
    added = [a - b for a, b in zip(ours(), before, strict=True)]
    assert added == [registry.get_sample_value("plain_seconds" + suffix, extra)
                     for suffix, extra in series]

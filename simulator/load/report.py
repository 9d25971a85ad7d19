"""A load run's figures as text and as a plot."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from simulator.load.options import LoadResult
from simulator.stats import LatencyHistogram


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

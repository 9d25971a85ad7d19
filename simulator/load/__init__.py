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

from simulator.load.command import add_arguments, options_from_args, run_command
from simulator.load.content import Destinations, segment_text
from simulator.load.options import MODES, LoadOptions, LoadResult, TimelinePoint, http_target
from simulator.load.recorder import Recorder
from simulator.load.report import format_summary, plot_available, write_plot
from simulator.load.run import run_load

__all__ = [
    "MODES", "Destinations", "LoadOptions", "LoadResult", "Recorder", "TimelinePoint",
    "add_arguments", "format_summary", "http_target", "options_from_args", "plot_available",
    "run_command", "run_load", "segment_text", "write_plot",
]

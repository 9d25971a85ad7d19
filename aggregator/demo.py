"""`smsagg demo`: start the bundled simulator SMSC and the daemon as separate processes on free
ports with a temporary store, send a burst over HTTP (the simulator's load generator,
`simulator.load.run_load`), wait for every receipt (callbacks), report.

The SMSC and the daemon are real subprocesses, as an operator would run them
(`simulator.harness`), so the figures include process boundaries and the daemon has a core to
itself."""

from __future__ import annotations

import tempfile
from pathlib import Path

from simulator.harness import (
    LOOPBACK_CALLBACKS,
    Process,
    daemon_config,
    start_daemon,
    start_smsc,
    wait_ready,
    write_config,
)
from simulator.load import LoadOptions, LoadResult, run_load
from simulator.stats import LatencyHistogram

API_KEY = "demo-key"
DEST_PREFIX = "+38344"  # Kosovo mobile range: valid and mobile for phonenumbers


def demo_config(directory: Path, smsc_port: int) -> Path:
    """DIR/demo.toml: account "demo", a SQLite store in DIR, the SMSC as the one provider."""
    return write_config(directory / "demo.toml", daemon_config(
        smsc_port, {"path": str(directory / "demo.db")}, [{"name": "demo", "api_key": API_KEY}],
        provider={"max_tps": 5000},
        sections={"callbacks": LOOPBACK_CALLBACKS, "log": {"level": "info"}}))


def demo_load(base: str, count: int, rate: float, concurrency: int,
              timeout: float) -> LoadOptions:
    return LoadOptions(mode="http", url=base, api_key=API_KEY, count=count, rate=rate,
                       concurrency=concurrency, prefix=DEST_PREFIX, digits=6, sender="DEMO",
                       text="Your code is 482913", receipt_wait=timeout, seed=7)


def _p50_p99(h: LatencyHistogram) -> str:
    ms = h.summary_ms()
    return f"p50 {ms['p50']:.1f} ms  p99 {ms['p99']:.1f} ms"


def report(result: LoadResult, count: int) -> tuple[str, bool]:
    """The demo's figures, and whether every message was accepted and reached a final state."""
    delivered = result.receipts_by_status.get("delivered", 0)
    missing = result.accepted - result.receipts
    end_to_end = result.receipts / result.total_elapsed if result.total_elapsed > 0 else 0.0
    text = (
        f"accepted {result.accepted}/{count}  delivered {delivered}"
        f"  failed {result.receipts - delivered}  not final {missing}"
        f"  rejected {result.errors_total} {result.errors or ''}\n"
        f"elapsed {result.total_elapsed:.2f} s  (sending {result.elapsed:.2f} s)"
        f"  accept rate {result.throughput:.0f} msg/s  end-to-end {end_to_end:.0f} msg/s\n"
        f"accept latency  {_p50_p99(result.accept_latency)}\n"
        f"receipt latency {_p50_p99(result.receipt_latency)}  (request to callback)"
    )
    return text, result.accepted == count and missing == 0


async def run_demo(count: int, rate: float, concurrency: int, timeout: float) -> int:
    procs: list[Process] = []
    with tempfile.TemporaryDirectory(prefix="smsagg-demo-") as tmp:
        try:
            smsc, smsc_port = await start_smsc("--stats-interval", "0")
            procs.append(smsc)
            smsc.follow_all()
            daemon, started = await start_daemon(demo_config(Path(tmp), smsc_port))
            procs.append(daemon)
            daemon.follow(daemon.proc.stdout)
            base = f"http://{started['http']}"
            await wait_ready(base)
            print(f"smsagg demo: SMSC on 127.0.0.1:{smsc_port}, daemon on {started['http']}; "
                  f"sending {count} messages (concurrency {concurrency}"
                  f"{f', {rate:g} msg/s' if rate else ', as fast as accepted'})...", flush=True)
            result = await run_load(demo_load(base, count, rate, concurrency, timeout))
        finally:
            for proc in reversed(procs):  # the daemon first: it unbinds from the SMSC
                await proc.stop()
    text, ok = report(result, count)
    print(text, flush=True)
    print("demo: OK, every message reached a final state" if ok
          else "demo: FAILED, some messages did not reach a final state", flush=True)
    return 0 if ok else 1

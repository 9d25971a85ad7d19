"""`smsagg-sim bench`: documented end-to-end scenarios on one machine, one table of figures.

Each scenario gets a fresh temporary directory and its own processes, started as an operator
would run them:

- the simulator SMSC: ``python -m simulator smsc --port 0 --stats-interval 0.25 --stats-file
  DIR/smsc.json`` (its "listening on HOST:PORT" line gives the port; its stats lines on stderr
  give the ``submits=`` counter over time);
- smsagg: ``python -m aggregator run --config DIR/smsagg.toml`` with a generated config: SQLite
  store in DIR (durable: ``synchronous=FULL`` always), HTTP on 127.0.0.1:0, log level info (the
  JSON "started" line gives the HTTP address and the SMPP port; stdout is drained), one
  provider with 2 binds, ``window`` (default 10) per bind, ``max_tps`` 100000;

then the load generator runs in this process (`simulator.load.run_load`), asking for a callback
per message except in scenario d:

| scenario | load |
|---|---|
| a | single-message HTTP, ``POST /v1/messages``, 50 requests in flight |
| b | batch HTTP, ``POST /v1/messages/batch``, 100 messages per request, 4 requests in flight |
| c | SMPP ingress: 1 transceiver bind, window 50, ``registered_delivery`` 1 |
| d | single-message HTTP offered at 2,000 msg/s, 50 requests in flight, no callbacks (the
  latency target: smsagg still processes every receipt the SMSC sends) |
| e | as d, with a callback for every message |
| f | single-message HTTP offered at 1,000 msg/s, no callbacks (the CPU-per-message target) |

Figures per scenario:

- accepted msg/s: accepted messages / sending time (start to the last accept answer);
- relayed msg/s: the SMSC's ``submit_sm`` count during that same window / its length (the
  counter is sampled every 0.25 s from the SMSC's stats lines and interpolated at the window's
  ends), so a backlog the daemon works off after the load does not count;
- accept latency p50/p99 (request to 202 / ``submit_sm_resp``), receipt latency p50/p99
  (request to callback / ``deliver_sm`` receipt), errors (non-accepted requests), receipts
  received / expected; in scenario d, which asks for no callbacks, the messages smsagg has
  made final (``smsagg_messages_final_total`` on its /metrics) / accepted instead;
- smsagg's resident memory: the daemon and its child processes together (``VmRSS`` from
  ``/proc``, sampled every second during the load), at a quarter of the window, at its end and
  the highest; with ``--duration 600`` on scenario d or e this is the ten-minute memory check;
- smsagg's CPU per relayed message: utime + stime (``/proc/PID/stat``) of the daemon and each
  child process (SQLite writer, HTTP ingress workers) from the load's start to CPU_TAIL seconds
  after its end (receipts and backlog included), divided by the SMSC's ``submit_sm`` count over
  that same span; per process and in total.

Processes are stopped with SIGTERM, then killed after a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import dataclasses
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from aggregator.eventloop import run_loop
from simulator.harness import (
    LOOPBACK_CALLBACKS,
    Process,
    daemon_config,
    start_daemon,
    start_smsc,
    toml_text,
    wait_ready,
)
from simulator.load import LoadOptions, LoadResult, run_load
from simulator.pgserver import PgServer, create_database, start_server
from simulator.proctree import cpu_delta, per_message_us, tree_cpu, tree_rss_mb

API_KEY = "bench-key"
SMPP_SYSTEM_ID = "bench"
SMPP_PASSWORD = "bench-pw"  # SMPP passwords are at most 8 characters
STATS_INTERVAL = 0.25  # seconds between the SMSC's stats lines
DRAIN_SECONDS = 5.0  # smsagg --drain-seconds
PROVIDER_BINDS = 2
PROVIDER_MAX_TPS = 100_000
HTTP_CONCURRENCY = 50
BATCH_SIZE = 100
BATCH_CONCURRENCY = 4
SMPP_BINDS = 1
SMPP_WINDOW = 50
TARGET_RATE = 2000.0  # the offered msg/s of scenarios d and e
TARGET_P99_MS = 20.0  # the accept latency it must stay under at p99
MEMORY_INTERVAL = 1.0  # seconds between RSS samples
PACED_RATE = 1000.0  # the offered msg/s of scenario f, where CPU per message is judged
TARGET_CPU_US = 450.0  # CPU-µs per relayed message smsagg must stay under at PACED_RATE
CPU_TAIL = 3.0  # seconds after the load (and its receipts) still charged to it

_SUBMITS_RE = re.compile(r"\bsubmits=(\d+)\b")


@dataclass(slots=True, frozen=True)
class Scenario:
    key: str
    title: str
    mode: str  # LoadOptions.mode
    rate: float = 0.0  # offered msg/s; 0: as fast as the in-flight limit allows
    callbacks: bool = True  # a callback_url in every message (receipts seen by the load)

    @property
    def smpp_ingress(self) -> bool:
        return self.mode == "smpp"


SCENARIOS: dict[str, Scenario] = {
    "a": Scenario("a", "single-message HTTP", "http"),
    "b": Scenario("b", f"batch HTTP ({BATCH_SIZE}/request)", "batch"),
    "c": Scenario("c", f"SMPP ingress ({SMPP_BINDS} bind, window {SMPP_WINDOW})", "smpp"),
    "d": Scenario("d", f"single-message HTTP at {TARGET_RATE:,.0f} msg/s offered", "http",
                  rate=TARGET_RATE, callbacks=False),
    "e": Scenario("e", f"single-message HTTP at {TARGET_RATE:,.0f} msg/s offered, callbacks",
                  "http", rate=TARGET_RATE),
    "f": Scenario("f", f"single-message HTTP at {PACED_RATE:,.0f} msg/s offered", "http",
                  rate=PACED_RATE, callbacks=False),
}


@dataclass(slots=True)
class BenchOptions:
    scenarios: tuple[str, ...] = ("a", "b", "c", "d", "e", "f")
    duration: float | None = 10.0  # seconds of sending; None with count
    count: int | None = None  # messages per scenario instead of a duration
    window: int = 10  # per provider bind
    # smsagg's [http] workers (HTTP ingress processes): 1, as in the side-by-side script; on two
    # cores one worker beside the daemon accepts and relays more than the daemon alone.
    workers: int = 1
    receipt_wait: float = 60.0  # after sending, seconds to wait for every receipt
    seed: int | None = 1
    # Store setups, each scenario run on each: (backend, instances). PostgreSQL: a throw-away
    # server started for the bench, or the server `dsn` names (a database made per scenario).
    setups: tuple[tuple[str, int], ...] = (("sqlite", 1),)
    dsn: str | None = None

    def check(self) -> None:
        if not self.scenarios:
            raise ValueError(f"--scenarios: name at least one of {', '.join(SCENARIOS)}")
        unknown = [s for s in self.scenarios if s not in SCENARIOS]
        if unknown:
            raise ValueError(f"--scenarios: unknown {', '.join(unknown)}"
                             f" (known: {', '.join(SCENARIOS)})")
        if (self.duration is None) == (self.count is None):
            raise ValueError("give one of --duration and --count")
        if self.duration is not None and self.duration <= 0:
            raise ValueError("--duration must be > 0")
        if self.count is not None and self.count < 1:
            raise ValueError("--count must be >= 1")
        if not 1 <= self.window <= 1000:
            raise ValueError("--window must be between 1 and 1000")
        if not 0 <= self.workers <= 64:
            raise ValueError("--workers must be between 0 and 64")
        if self.receipt_wait < 0:
            raise ValueError("--receipt-wait must be >= 0")
        if not self.setups:
            raise ValueError("--store/--instances: no setup left (SQLite runs one instance)")
        for backend, n in self.setups:
            if backend not in ("sqlite", "postgres"):
                raise ValueError(f"--store: sqlite or postgres, got {backend!r}")
            if not 1 <= n <= 8:
                raise ValueError("--instances must be between 1 and 8")


@dataclass(slots=True)
class ScenarioResult:
    scenario: Scenario
    load: LoadResult
    window_s: float  # sending window: load start to the last accept answer
    relayed: float  # SMSC submits during the window (interpolated)
    relayed_total: int  # SMSC submits over the whole scenario (final summary)
    smsc: dict[str, Any] = field(default_factory=dict)  # the SMSC's final summary
    memory: list[tuple[float, float]] = field(default_factory=list)  # (s into the window, MB)
    final: int | None = None  # without callbacks: messages smsagg made final (its /metrics)
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds per process role
    cpu_messages: float = 0.0  # SMSC submits over the span the CPU was measured

    def cpu_us(self) -> dict[str, float]:
        """CPU-µs per relayed message for each process role and in ``total``."""
        return per_message_us(self.cpu_s, self.cpu_messages)

    def receipts_text(self) -> str:
        if self.final is not None:
            return f"{self.final}/{self.load.accepted} final in smsagg"
        return f"{self.load.receipts}/{self.load.receipts_expected}"

    def rss_mb(self) -> dict[str, float] | None:
        """smsagg's resident MB at a quarter of the window, at its end, and the highest."""
        if not self.memory:
            return None
        quarter = next((mb for t, mb in self.memory if t >= self.window_s / 4),
                       self.memory[-1][1])
        return {"quarter": quarter, "end": self.memory[-1][1],
                "max": max(mb for _, mb in self.memory)}

    @property
    def accepted_rate(self) -> float:
        return self.load.throughput

    @property
    def relayed_rate(self) -> float:
        return self.relayed / self.window_s if self.window_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        load = self.load.to_dict()
        load.pop("timeline", None)
        return {
            "scenario": self.scenario.key,
            "title": self.scenario.title,
            "accepted": self.load.accepted,
            "accepted_msg_s": round(self.accepted_rate, 1),
            "relayed_during_load": round(self.relayed),
            "relayed_msg_s": round(self.relayed_rate, 1),
            "relayed_total": self.relayed_total,
            "window_s": round(self.window_s, 3),
            "accept_latency_ms": self.load.accept_latency.summary_ms(),
            "receipt_latency_ms": self.load.receipt_latency.summary_ms(),
            "errors": self.load.errors_total,
            "receipts": self.load.receipts,
            "receipts_expected": self.load.receipts_expected,
            "offered_msg_s": self.scenario.rate or None,
            "final_in_smsagg": self.final,
            "smsagg_rss_mb": self.rss_mb(),
            "memory_samples": [[round(t, 1), round(mb, 1)] for t, mb in self.memory],
            "cpu_seconds": {k: round(v, 3) for k, v in self.cpu_s.items()},
            "cpu_messages": round(self.cpu_messages),
            "cpu_us_per_msg": {k: round(v, 1) for k, v in self.cpu_us().items()},
            "load": load,
            "smsc": {k: v for k, v in self.smsc.items() if k != "bind_stats"},
        }


# -- the SMSC submit counter --------------------------------------------------------------------


def parse_submits(line: str) -> int | None:
    """The cumulative ``submits=N`` of an SMSC stats line, else None."""
    match = _SUBMITS_RE.search(line)
    return int(match.group(1)) if match else None


def submits_at(samples: Sequence[tuple[float, int]], t: float) -> float:
    """The submit counter at time `t`, linearly interpolated between (time, submits) samples
    sorted by time; clamped to the first / last sample outside their range."""
    if not samples:
        return 0.0
    times = [s[0] for s in samples]
    i = bisect.bisect_right(times, t)
    if i == 0:
        return float(samples[0][1])
    if i == len(samples):
        return float(samples[-1][1])
    (t0, n0), (t1, n1) = samples[i - 1], samples[i]
    if t1 <= t0:
        return float(n1)
    return n0 + (n1 - n0) * (t - t0) / (t1 - t0)


def submits_by(samples: Sequence[tuple[float, int]], t: float) -> int:
    """The submit counter of the last sample at or before time `t` (0 before the first)."""
    i = bisect.bisect_right([s[0] for s in samples], t)
    return samples[i - 1][1] if i else 0


# -- smsagg's figures ----------------------------------------------------------------------------

_FINAL_RE = re.compile(r"^smsagg_messages_final_total\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)


def final_messages(exposition: str) -> int:
    """Messages smsagg has made final, summed over statuses, from its /metrics text."""
    return int(sum(float(v) for v in _FINAL_RE.findall(exposition)))


async def wait_final(http_base: str, expected: int, timeout: float) -> int:
    """Poll smsagg's /metrics until `expected` messages are final or `timeout` passes; return
    how many were."""
    deadline = time.monotonic() + timeout
    final = 0
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{http_base}/metrics") as resp:
                    final = final_messages(await resp.text())
            if final >= expected or time.monotonic() >= deadline:
                return final
            await asyncio.sleep(0.1)


async def wait_final_all(http_bases: Sequence[str], expected: int, timeout: float) -> int:
    """wait_final over several instances: messages final on any of them, summed."""
    if len(http_bases) == 1:
        return await wait_final(http_bases[0], expected, timeout)
    deadline = time.monotonic() + timeout
    finals = [0] * len(http_bases)
    async with aiohttp.ClientSession() as session:
        while True:
            for i, base in enumerate(http_bases):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{base}/metrics") as resp:
                        finals[i] = final_messages(await resp.text())
            if sum(finals) >= expected or time.monotonic() >= deadline:
                return sum(finals)
            await asyncio.sleep(0.1)


# -- smsagg's memory -------------------------------------------------------------------------------


async def sample_memory(pid: int, start: float, samples: list[tuple[float, float]]) -> None:
    """Append (seconds since `start`, MB) for `pid`'s tree every MEMORY_INTERVAL until cancelled."""
    while True:
        mb = await asyncio.to_thread(tree_rss_mb, pid)
        if mb is None:
            return
        samples.append((time.perf_counter() - start, mb))
        await asyncio.sleep(MEMORY_INTERVAL)


def config_text(store: Path, smsc_port: int, window: int, smpp_ingress: bool,
                workers: int = 0, dsn: str | None = None, instance: str = "a") -> str:
    """The smsagg configuration of one scenario (`dsn`: on PostgreSQL, as `instance`)."""
    account: dict[str, Any] = {"name": "bench", "api_key": API_KEY}
    sections: dict[str, dict[str, Any]] = {"callbacks": LOOPBACK_CALLBACKS,
                                           "log": {"level": "info"}}
    if smpp_ingress:
        account.update(system_id=SMPP_SYSTEM_ID, password=SMPP_PASSWORD)
        sections["smpp"] = {"listen": "127.0.0.1:0", "window": SMPP_WINDOW}
    if dsn:
        sections["instance"] = {"name": instance}
    return toml_text(daemon_config(
        smsc_port, {"backend": "postgres", "dsn": dsn} if dsn else {"path": str(store)},
        [account], http={"workers": workers},
        provider={"binds": PROVIDER_BINDS, "window": window, "max_tps": PROVIDER_MAX_TPS},
        sections=sections))


def load_options(scenario: Scenario, options: BenchOptions, http_base: str,
                 smpp_port: int | None) -> LoadOptions:
    common: dict[str, Any] = {
        "count": options.count, "duration": options.duration, "receipts": scenario.callbacks,
        "receipt_wait": options.receipt_wait, "seed": options.seed, "progress": False,
        "rate": scenario.rate,
    }
    if scenario.mode == "http":
        return LoadOptions(mode="http", url=http_base, api_key=API_KEY,
                           concurrency=HTTP_CONCURRENCY, **common)
    if scenario.mode == "batch":
        return LoadOptions(mode="batch", url=http_base, api_key=API_KEY,
                           batch_size=BATCH_SIZE, concurrency=BATCH_CONCURRENCY, **common)
    assert smpp_port is not None
    return LoadOptions(mode="smpp", smpp_host="127.0.0.1", smpp_port=smpp_port,
                       system_id=SMPP_SYSTEM_ID, password=SMPP_PASSWORD, binds=SMPP_BINDS,
                       window=SMPP_WINDOW, **common)


async def run_scenario(scenario: Scenario, options: BenchOptions, instances: int = 1,
                       dsn: str | None = None) -> ScenarioResult:
    """One scenario on SQLite, or on PostgreSQL (`dsn`, an empty database) with `instances`
    smsagg instances; the load is split evenly between them."""
    with tempfile.TemporaryDirectory(prefix=f"smsagg-bench-{scenario.key}-") as tmp:
        tmp_dir = Path(tmp)
        stats_file = tmp_dir / "smsc.json"
        samples: list[tuple[float, int]] = []
        procs: list[Process] = []
        try:
            smsc, smsc_port = await start_smsc(
                "--stats-interval", str(STATS_INTERVAL), "--stats-file", str(stats_file))
            procs.append(smsc)
            samples.append((time.perf_counter(), 0))

            def on_stats(text: str) -> None:
                n = parse_submits(text)
                if n is not None:
                    samples.append((time.perf_counter(), n))

            smsc.follow(smsc.proc.stderr, on_stats)
            smsc.follow(smsc.proc.stdout)

            daemons: list[Process] = []
            loads: list[LoadOptions] = []
            for i in range(instances):
                config = tmp_dir / ("smsagg.toml" if i == 0 else f"smsagg-{i}.toml")
                config.write_text(config_text(tmp_dir / "smsagg.db", smsc_port, options.window,
                                              scenario.smpp_ingress, options.workers, dsn,
                                              chr(ord("a") + i)), encoding="utf-8")
                daemon, started = await start_daemon(config, "--drain-seconds",
                                                     str(DRAIN_SECONDS))
                procs.append(daemon)
                daemons.append(daemon)
                daemon.follow(daemon.proc.stdout)
                http_base = f"http://{started['http']}"
                smpp_port = started.get("smpp")
                if scenario.smpp_ingress and not isinstance(smpp_port, int):
                    raise RuntimeError(f"smsagg started without an SMPP listener: {started}")
                await wait_ready(http_base)
                loads.append(split_load(
                    load_options(scenario, options, http_base,
                                 smpp_port if isinstance(smpp_port, int) else None),
                    i, instances))
            pids = [d.proc.pid for d in daemons]
            t_start = time.perf_counter()
            memory: list[tuple[float, float]] = []  # the first instance's
            cpu_before = tree_cpu(pids)
            sampler = asyncio.create_task(sample_memory(pids[0], t_start, memory))
            try:
                result = merge_loads(await asyncio.gather(*(run_load(o) for o in loads)))
            finally:
                sampler.cancel()
            window_end = t_start + result.elapsed
            memory = [(t, mb) for t, mb in memory if t <= result.elapsed] or memory[:1]
            final = (None if scenario.callbacks else
                     await wait_final_all([o.url for o in loads], result.accepted,
                                          options.receipt_wait))
            await asyncio.sleep(CPU_TAIL)  # work the load left behind is charged to it
            cpu_s = cpu_delta(cpu_before, tree_cpu(pids))
            cpu_end = time.perf_counter()
            # One more stats sample after each end, so it is interpolated, not clamped.
            deadline = time.perf_counter() + 5 * STATS_INTERVAL + 2
            while samples[-1][0] <= cpu_end and time.perf_counter() < deadline:
                await asyncio.sleep(STATS_INTERVAL / 5)
            snapshot = list(samples)
            relayed = submits_at(snapshot, window_end) - submits_at(snapshot, t_start)
            # Counts read as a step (the last sample before each end), not interpolated: the
            # span starts before the first message and ends seconds after the last one.
            cpu_messages = submits_by(snapshot, cpu_end) - submits_by(snapshot, t_start)
        finally:
            for proc in reversed(procs):  # the daemon first: it unbinds from the SMSC
                await proc.stop()
        summary: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            summary = json.loads(stats_file.read_text(encoding="utf-8"))
        return ScenarioResult(
            scenario=scenario, load=result, window_s=result.elapsed, relayed=relayed,
            relayed_total=int(summary.get("submits", snapshot[-1][1] if snapshot else 0)),
            smsc=summary, memory=memory, final=final, cpu_s=cpu_s, cpu_messages=cpu_messages,
        )


def split_load(options: LoadOptions, index: int, parts: int) -> LoadOptions:
    """Instance `index`'s part of a load shared evenly between `parts` instances."""
    if parts == 1:
        return options
    count = options.count
    if count is not None:
        count = count // parts + (1 if index < count % parts else 0)
    return dataclasses.replace(
        options, count=count, rate=options.rate / parts,
        concurrency=max(1, options.concurrency // parts),
        seed=None if options.seed is None else options.seed + index)


def merge_loads(results: Sequence[LoadResult]) -> LoadResult:
    """The figures of loads run side by side (one per instance) as one."""
    if len(results) == 1:
        return results[0]
    merged = LoadResult(options=results[0].options)
    for r in results:
        merged.sent += r.sent
        merged.accepted += r.accepted
        for key, n in r.errors.items():
            merged.errors[key] = merged.errors.get(key, 0) + n
        merged.elapsed = max(merged.elapsed, r.elapsed)
        merged.total_elapsed = max(merged.total_elapsed, r.total_elapsed)
        merged.accept_latency.merge(r.accept_latency)
        merged.receipt_latency.merge(r.receipt_latency)
        merged.receipts += r.receipts
        merged.receipts_expected += r.receipts_expected
        for key, n in r.receipts_by_status.items():
            merged.receipts_by_status[key] = merged.receipts_by_status.get(key, 0) + n
        merged.untracked += r.untracked
        merged.stopped = merged.stopped or r.stopped
    return merged


def setup_label(backend: str, instances: int) -> str:
    name = {"sqlite": "SQLite", "postgres": "PostgreSQL"}[backend]
    return name if instances == 1 else f"{name}, {instances} instances"


async def run_bench(options: BenchOptions,
                    progress: Callable[[str], None] | None = None) -> list[ScenarioResult]:
    """Run the chosen scenarios one after the other, on each store setup; `progress(text)` is
    told about each."""
    options.check()
    results = []
    server: PgServer | None = None
    try:
        for backend, instances in options.setups:
            if backend == "postgres" and options.dsn is None and server is None:
                if progress is not None:
                    progress("bench: starting a throw-away PostgreSQL server...")
                server = await asyncio.to_thread(start_server)
            for key in options.scenarios:
                scenario = SCENARIOS[key]
                if options.setups != BenchOptions().setups:
                    scenario = dataclasses.replace(
                        scenario, title=f"{scenario.title} [{setup_label(backend, instances)}]")
                dsn = None
                if backend == "postgres":
                    admin = options.dsn or (server.admin_dsn if server else "")
                    dsn = await create_database(admin)
                results.append(await _run_one(scenario, options, instances, dsn, progress))
    finally:
        if server is not None:
            await asyncio.to_thread(server.discard)
    return results


async def _run_one(scenario: Scenario, options: BenchOptions, instances: int, dsn: str | None,
                   progress: Callable[[str], None] | None) -> ScenarioResult:
    key = scenario.key
    if progress is not None:
        progress(f"bench: scenario {key} ({scenario.title})...")
    result = await run_scenario(scenario, options, instances, dsn)
    if progress is not None:
        progress(f"bench: scenario {key}: accepted {result.accepted_rate:.0f} msg/s,"
                 f" relayed {result.relayed_rate:.0f} msg/s, errors {result.load.errors_total},"
                 f" receipts {result.receipts_text()}")
    return result


# -- report -------------------------------------------------------------------------------------


def _ms(summary: dict[str, float | int], key: str, count: int) -> str:
    return f"{summary[key]:.1f}" if count else "-"


def markdown_table(results: Sequence[ScenarioResult]) -> str:
    lines = [
        "| scenario | accepted | accepted msg/s | relayed msg/s | accept p50 ms | accept p99 ms"
        " | receipt p50 ms | receipt p99 ms | errors | receipts | smsagg RSS MB ¼ / end"
        " | CPU-µs/msg (per process) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        accept = r.load.accept_latency.summary_ms()
        receipt = r.load.receipt_latency.summary_ms()
        n_acc, n_rec = r.load.accepted, r.load.receipts
        lines.append(
            f"| {r.scenario.key}: {r.scenario.title} | {r.load.accepted}"
            f" | {r.accepted_rate:.0f} | {r.relayed_rate:.0f}"
            f" | {_ms(accept, 'p50', n_acc)} | {_ms(accept, 'p99', n_acc)}"
            f" | {_ms(receipt, 'p50', n_rec)} | {_ms(receipt, 'p99', n_rec)}"
            f" | {r.load.errors_total} | {r.receipts_text()} | {_rss(r)} | {cpu_text(r)} |"
        )
    return "\n".join(lines)


def _rss(result: ScenarioResult) -> str:
    rss = result.rss_mb()
    return f"{rss['quarter']:.1f} / {rss['end']:.1f}" if rss else "-"


def cpu_text(result: ScenarioResult) -> str:
    """``total (role figure, ...)``, e.g. ``612 (daemon 380, worker 120, writer 112)``."""
    us = result.cpu_us()
    if not us:
        return "-"
    parts = ", ".join(f"{role} {v:.0f}" for role, v in us.items() if role != "total")
    return f"{us['total']:.0f} ({parts})"


def target_lines(results: Sequence[ScenarioResult]) -> list[str]:
    """A verdict on the accept-latency target for each fixed-rate scenario: met when p99 is under
    TARGET_P99_MS, nothing was refused and every accepted message's receipt was processed."""
    lines = []
    for r in results:
        if not r.scenario.rate or not r.load.accepted:
            continue
        p99 = r.load.accept_latency.summary_ms()["p99"]
        all_receipts = (r.final == r.load.accepted if r.final is not None
                        else r.load.receipts == r.load.receipts_expected)
        met = p99 < TARGET_P99_MS and not r.load.errors_total and all_receipts
        rss = r.rss_mb()
        memory = (f"; smsagg RSS {rss['quarter']:.1f} MB at a quarter of the run,"
                  f" {rss['end']:.1f} MB at its end, {rss['max']:.1f} MB at most") if rss else ""
        if r.scenario.rate == PACED_RATE:
            us = r.cpu_us().get("total")
            cpu_met = us is not None and us <= TARGET_CPU_US and all_receipts
            verdict = (f"CPU {us:.0f} µs per relayed message (target at most"
                       f" {TARGET_CPU_US:g}: {'met' if cpu_met else 'missed'})"
                       if us is not None else "CPU per message: no message relayed")
        else:
            verdict = (f"accept p99 {p99:.1f} ms (target under {TARGET_P99_MS:g} ms:"
                       f" {'met' if met else 'missed'})")
        lines.append(
            f"scenario {r.scenario.key}: {r.scenario.rate:,.0f} msg/s offered,"
            f" {r.accepted_rate:,.0f} accepted, {r.load.errors_total} errors, receipts"
            f" {r.receipts_text()}; {verdict}{memory}")
    return lines


def header_line(options: BenchOptions, load_average: float) -> str:
    amount = (f"{options.count} messages" if options.count is not None
              else f"{options.duration:g} s")
    return (f"smsagg-sim bench: {amount} per scenario; provider {PROVIDER_BINDS} binds x window"
            f" {options.window}; [http] workers {options.workers}; {os.cpu_count()} CPUs,"
            f" 1-min load average {load_average:.2f} at start")


def report(options: BenchOptions, results: Sequence[ScenarioResult],
           load_average: float) -> str:
    targets = target_lines(results)
    tail = "\n" + "\n".join(targets) + "\n" if targets else ""
    return header_line(options, load_average) + "\n\n" + markdown_table(results) + "\n" + tail


# -- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = BenchOptions()
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help=f"seconds of sending per scenario (default {d.duration:g})")
    amount.add_argument("--count", type=int, default=None,
                        help="messages per scenario instead of --duration")
    parser.add_argument("--scenarios", default=",".join(d.scenarios),
                        help="comma-separated: a single-message HTTP, b batch HTTP,"
                             f" c SMPP ingress, d single-message HTTP at {TARGET_RATE:,.0f}"
                             " msg/s offered without callbacks, e the same with callbacks"
                             f" (the CPU-per-message scenario: f, the same at {PACED_RATE:,.0f}"
                             " msg/s; default a,b,c,d,e,f)")
    parser.add_argument("--window", type=int, default=d.window,
                        help=f"window per provider bind (default {d.window})")
    parser.add_argument("--workers", type=int, default=d.workers,
                        help=f"smsagg's [http] workers, HTTP ingress processes (default"
                             f" {d.workers})")
    parser.add_argument("--receipt-wait", type=float, default=d.receipt_wait,
                        metavar="SECONDS",
                        help=f"after sending, wait this long for receipts (default"
                             f" {d.receipt_wait:g})")
    parser.add_argument("--store", default="sqlite", metavar="BACKENDS",
                        help="comma-separated store backends to run every scenario on, side by"
                             " side: sqlite, postgres (a throw-away PostgreSQL server is"
                             " started, unless --dsn; default sqlite)")
    parser.add_argument("--instances", default="1", metavar="COUNTS",
                        help="comma-separated smsagg instance counts on PostgreSQL, e.g. 1,2"
                             " (SQLite always runs one; default 1)")
    parser.add_argument("--dsn", default=None,
                        help="with --store postgres: this server instead of a throw-away one"
                             " (a database is created on it per scenario)")
    parser.add_argument("--markdown", default=None, metavar="FILE",
                        help="also write the Markdown table here")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="write every figure (and the SMSC's summary) as JSON")


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    keys = tuple(k.strip() for k in args.scenarios.split(",") if k.strip())
    duration = args.duration
    if duration is None and args.count is None:
        duration = BenchOptions().duration
    return BenchOptions(scenarios=keys, duration=duration, count=args.count,
                        window=args.window, workers=args.workers,
                        receipt_wait=args.receipt_wait, dsn=getattr(args, "dsn", None),
                        setups=setups_from(getattr(args, "store", "sqlite"),
                                           getattr(args, "instances", "1")))


def setups_from(stores: str, instances: str) -> tuple[tuple[str, int], ...]:
    """(backend, instances) for --store and --instances: SQLite once, PostgreSQL per count."""
    try:
        counts = [int(n) for n in instances.split(",") if n.strip()]
    except ValueError:
        raise ValueError(f"--instances: comma-separated numbers, got {instances!r}") from None
    setups: list[tuple[str, int]] = []
    for backend in (b.strip() for b in stores.split(",") if b.strip()):
        for n in ([1] if backend == "sqlite" else counts):
            if (backend, n) not in setups:
                setups.append((backend, n))
    return tuple(setups)


async def _bench_code(options: BenchOptions, box: list[list[ScenarioResult]]) -> int:
    box.append(await run_bench(options, lambda text: print(text, file=sys.stderr, flush=True)))
    return 0


def run_command(args: argparse.Namespace) -> int:
    """Exit 0 when every scenario ran, 1 when one could not run, 2 on bad options."""
    options = options_from_args(args)
    options.check()  # ValueError: the CLI prints it and exits 2
    load_average = os.getloadavg()[0]
    box: list[list[ScenarioResult]] = []
    try:
        run_loop(_bench_code(options, box), args.loop)
    except RuntimeError as exc:
        print(f"smsagg-sim bench: {exc}", file=sys.stderr)
        return 1
    results = box[0]
    text = report(options, results, load_average)
    print(text, end="", flush=True)
    if args.markdown:
        Path(args.markdown).write_text(text, encoding="utf-8")
    if args.json:
        data = {"options": {"scenarios": list(options.scenarios), "duration": options.duration,
                            "count": options.count, "window": options.window,
                            "provider_binds": PROVIDER_BINDS,
                            "setups": [list(setup) for setup in options.setups]},
                "load_average_1m": load_average, "targets": target_lines(results),
                "scenarios": [r.to_dict() for r in results]}
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return 0

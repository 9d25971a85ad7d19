"""What a relayed message costs the PostgreSQL server: its CPU and the statements (round trips)
smsagg sends, per message, next to `smsagg-sim bench`'s own figures.

    PYTHONPATH=$PWD python -m tests.bench_pg [--scenarios a,f] [--instances 1,2]
                                             [--duration 10] [--statements N]

It starts a throw-away PostgreSQL server with pg_stat_statements (top-level statements only, so
a statement is a round trip; BEGIN and COMMIT count), then for each scenario and instance count
runs `python -m simulator.cli bench --store postgres --dsn ...` against it and prints: relayed
and accepted msg/s, accept p50/p99, smsagg's CPU-µs per relayed message (from the bench), the
server's (utime + stime of the postmaster and every backend, exited ones included through the
postmaster's cutime/cstime), and statements per relayed message. smsagg reaches the server
through its unix socket (--tcp: TCP loopback). With --statements N, the N statements of each
run that took the most execution time follow, with their calls and execution µs per relayed
message (wall time: on a busy machine it includes waiting for a CPU). The machine is shared:
throughput moves with the neighbours' load, CPU and statements per message much less."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from simulator.pgserver import PgServer, start_server

SETTINGS = "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=top"
TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text[text.rindex(")") + 2:].split()  # [0] state, [1] ppid, [11..14] times


def server_cpu(postmaster: int) -> float:
    """CPU seconds of the server: the postmaster, its reaped children, its live ones."""
    total = sum(int(x) for x in _stat(postmaster)[11:15])
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat(int(entry))
        except OSError:  # exited meanwhile
            continue
        if int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / TICK


@dataclass(slots=True)
class Run:
    scenario: str
    instances: int
    result: dict[str, Any]
    server_cpu_s: float
    statements: list[tuple[int, float, str]]  # (calls, execution ms, query), longest first

    def row(self) -> str:
        r = self.result
        n = max(1, r["relayed_total"])
        calls = sum(c for c, _, _ in self.statements)
        cpu = r["cpu_us_per_msg"]
        smsagg = " + ".join(f"{k} {v:.0f}" for k, v in cpu.items() if k != "total")
        return (f"| {self.scenario} | {self.instances} | {r['accepted_msg_s']:.0f} "
                f"| {r['relayed_msg_s']:.0f} | {r['accept_latency_ms']['p50']:.1f} / "
                f"{r['accept_latency_ms']['p99']:.1f} | {cpu['total']:.0f} ({smsagg}) "
                f"| {self.server_cpu_s * 1e6 / n:.0f} | {calls / n:.2f} |")


async def _admin(dsn: str, sql: str) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def run_one(server: PgServer, scenario: str, instances: int, duration: float,
            dsn: str) -> Run:
    """One bench run; smsagg reaches the server through `dsn`."""
    postmaster = int((Path(server.root) / "data" / "postmaster.pid").read_text().split()[0])
    asyncio.run(_admin(server.admin_dsn, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
    asyncio.run(_admin(server.admin_dsn, "SELECT pg_stat_statements_reset()"))
    with tempfile.TemporaryDirectory(prefix="smsagg-bench-pg-") as tmp:
        out = Path(tmp) / "bench.json"
        before = server_cpu(postmaster)
        subprocess.run([sys.executable, "-m", "simulator.cli", "bench", "--scenarios", scenario,
                        "--duration", str(duration), "--store", "postgres", "--instances",
                        str(instances), "--dsn", dsn, "--json", str(out)],
                       check=True, stdout=subprocess.DEVNULL)
        used = server_cpu(postmaster) - before
        result = json.loads(out.read_text())["scenarios"][0]
    rows = asyncio.run(_admin(
        server.admin_dsn, "SELECT s.calls, s.total_exec_time, s.query FROM pg_stat_statements s "
        "JOIN pg_database d ON d.oid = s.dbid "
        "WHERE d.datname NOT IN ('postgres', 'template0', 'template1') "
        "ORDER BY s.total_exec_time DESC"))
    return Run(scenario, instances, result, used, [(r[0], r[1], r[2]) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="a,f")
    parser.add_argument("--instances", default="1,2")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--statements", type=int, default=0)
    parser.add_argument("--tcp", action="store_true",
                        help="smsagg connects over TCP loopback, not the unix socket")
    args = parser.parse_args()
    server = start_server(SETTINGS)
    runs: list[Run] = []
    try:
        for instances in (int(n) for n in args.instances.split(",")):
            for scenario in args.scenarios.split(","):
                print(f"bench_pg: scenario {scenario}, {instances} instance(s), load average "
                      f"{os.getloadavg()[0]:.2f}...", file=sys.stderr)
                runs.append(run_one(server, scenario, instances, args.duration,
                                    server.admin_dsn if args.tcp else server.socket_dsn))
    finally:
        server.discard()
    print("| scenario | instances | accepted msg/s | relayed msg/s | accept p50 / p99 ms "
          "| smsagg CPU-µs/msg | PostgreSQL CPU-µs/msg | statements/msg |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for run in runs:
        print(run.row())
    for run in runs if args.statements else []:
        n = max(1, run.result["relayed_total"])
        print(f"\nscenario {run.scenario}, {run.instances} instance(s), per relayed message: "
              "calls, execution µs, statement")
        for calls, ms, query in run.statements[:args.statements]:
            print(f"{calls / n:8.3f} {ms * 1000 / n:7.1f}  {' '.join(query.split())[:100]}")


if __name__ == "__main__":
    main()

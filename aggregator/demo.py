"""`smsagg demo`: start the bundled simulator SMSC and the daemon as separate processes on free
ports with a temporary store, send a burst over HTTP, wait for every receipt (callbacks), report.

The SMSC and the daemon are real subprocesses, as an operator would run them, so the figures
include process boundaries and the daemon has a core to itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

API_KEY = "demo-key"
DEST_PREFIX = "+38344"  # Kosovo mobile range: valid and mobile for phonenumbers


@dataclass(slots=True)
class DemoResult:
    sent_at: dict[str, float] = field(default_factory=dict)  # id -> 202 time
    accept_latency: list[float] = field(default_factory=list)
    receipt_latency: list[float] = field(default_factory=list)
    final: dict[str, str] = field(default_factory=dict)  # id -> status
    errors: dict[str, int] = field(default_factory=dict)
    all_final: asyncio.Event = field(default_factory=asyncio.Event)


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


async def _start_process(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def _read_until(stream: asyncio.StreamReader, marker: str, timeout: float) -> str:
    async def scan() -> str:
        while True:
            line = await stream.readline()
            if not line:
                raise RuntimeError(f"process exited before printing {marker!r}")
            text = line.decode(errors="replace")
            if marker in text:
                return text

    return await asyncio.wait_for(scan(), timeout)


async def _drain(stream: asyncio.StreamReader | None) -> None:
    if stream is None:
        return
    while await stream.readline():
        pass


def _config_text(store: Path, smsc_port: int) -> str:
    return f"""
[http]
listen = "127.0.0.1:0"
[store]
path = "{store}"
[callbacks]
allowed_networks = ["127.0.0.0/8"]  # the local callback receiver
[log]
level = "info"
[[accounts]]
name = "demo"
api_key = "{API_KEY}"
[[providers]]
name = "sim"
host = "127.0.0.1"
port = {smsc_port}
system_id = "smsagg"
password = "pw"
binds = 2
window = 10
max_tps = 5000
[[routes]]
prefixes = ["*"]
providers = ["sim"]
"""


async def _callback_server(result: DemoResult, expected: list[int]) -> tuple[web.AppRunner, int]:
    async def receive(request: web.Request) -> web.Response:
        body = await request.json()
        msg_id = body["id"]
        if msg_id not in result.final:
            result.final[msg_id] = body["status"]
            sent = result.sent_at.get(msg_id)
            if sent is not None:
                result.receipt_latency.append(time.perf_counter() - sent)
        if expected[0] and len(result.final) >= expected[0]:
            result.all_final.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/cb", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


async def _send_burst(
    base: str, cb_url: str, count: int, rate: float, concurrency: int, result: DemoResult
) -> None:
    rng = random.Random(7)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    started = time.perf_counter()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, headers=headers) as session:

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                if rate > 0:
                    due = started + i / rate
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                body = {
                    "to": f"{DEST_PREFIX}{rng.randrange(100000, 999999)}",
                    "from": "DEMO",
                    "text": f"Your code is {rng.randrange(100000, 999999)}",
                    "callback_url": cb_url,
                    "reference": str(i),
                }
                t0 = time.perf_counter()
                try:
                    async with session.post(f"{base}/v1/messages", json=body) as resp:
                        data: dict[str, Any] = await resp.json()
                        if resp.status == 202:
                            result.accept_latency.append(time.perf_counter() - t0)
                            result.sent_at[data["id"]] = time.perf_counter()
                        else:
                            code = data.get("error", {}).get("code", str(resp.status))
                            result.errors[code] = result.errors.get(code, 0) + 1
                except aiohttp.ClientError as exc:
                    key = type(exc).__name__
                    result.errors[key] = result.errors.get(key, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def wait_ready(base: str, timeout: float) -> None:
    """Poll /readyz until the daemon has a bind up (also used by `smsagg-sim bench`)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{base}/readyz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"smsagg not ready within {timeout:g} s (no provider bind up)")


async def _stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(proc.wait(), 20)
    except TimeoutError:
        proc.kill()
        return await proc.wait()


async def run_demo(count: int, rate: float, concurrency: int, timeout: float) -> int:
    result = DemoResult()
    expected = [0]
    with tempfile.TemporaryDirectory(prefix="smsagg-demo-") as tmp:
        smsc = await _start_process("-m", "simulator", "smsc", "--port", "0",
                                    "--stats-interval", "0")
        daemon: asyncio.subprocess.Process | None = None
        drains: list[asyncio.Task[None]] = []
        cb_runner: web.AppRunner | None = None
        try:
            assert smsc.stderr is not None
            line = await _read_until(smsc.stderr, "listening on", 15)
            smsc_port = int(line.rsplit(":", 1)[1])
            drains.append(asyncio.create_task(_drain(smsc.stderr)))
            config = Path(tmp) / "demo.toml"
            config.write_text(_config_text(Path(tmp) / "demo.db", smsc_port))
            daemon = await _start_process("-m", "aggregator", "run", "--config", str(config))
            assert daemon.stdout is not None
            started = json.loads(await _read_until(daemon.stdout, '"started"', 30))
            base = f"http://{started['http']}"
            drains.append(asyncio.create_task(_drain(daemon.stdout)))
            drains.append(asyncio.create_task(_drain(daemon.stderr)))
            await wait_ready(base, 30)
            cb_runner, cb_port = await _callback_server(result, expected)
            print(f"smsagg demo: SMSC on 127.0.0.1:{smsc_port}, daemon on {started['http']}; "
                  f"sending {count} messages (concurrency {concurrency}"
                  f"{f', {rate:g} msg/s' if rate else ', as fast as accepted'})...", flush=True)
            t0 = time.perf_counter()
            await _send_burst(base, f"http://127.0.0.1:{cb_port}/cb", count, rate,
                              concurrency, result)
            send_elapsed = time.perf_counter() - t0
            expected[0] = len(result.sent_at)
            if len(result.final) >= expected[0]:
                result.all_final.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(result.all_final.wait(), timeout)
            elapsed = time.perf_counter() - t0
        finally:
            if cb_runner is not None:
                await cb_runner.cleanup()
            if daemon is not None:
                await _stop(daemon)
            await _stop(smsc)
            for task in drains:
                task.cancel()
    accepted = len(result.sent_at)
    statuses: dict[str, int] = {}
    for status in result.final.values():
        statuses[status] = statuses.get(status, 0) + 1
    delivered = statuses.get("delivered", 0)
    failed = len(result.final) - delivered
    missing = accepted - len(result.final)
    ms = 1000.0
    print(
        f"accepted {accepted}/{count}  delivered {delivered}  failed {failed}  "
        f"not final {missing}  rejected {sum(result.errors.values())} {result.errors or ''}\n"
        f"elapsed {elapsed:.2f} s  (sending {send_elapsed:.2f} s)  "
        f"accept rate {accepted / send_elapsed:.0f} msg/s  "
        f"end-to-end {len(result.final) / elapsed:.0f} msg/s\n"
        f"accept latency  p50 {percentile(result.accept_latency, 50) * ms:.1f} ms  "
        f"p99 {percentile(result.accept_latency, 99) * ms:.1f} ms\n"
        f"receipt latency p50 {percentile(result.receipt_latency, 50) * ms:.1f} ms  "
        f"p99 {percentile(result.receipt_latency, 99) * ms:.1f} ms  (202 to callback)",
        flush=True,
    )
    ok = accepted == count and missing == 0
    print("demo: OK, every message reached a final state" if ok
          else "demo: FAILED, some messages did not reach a final state", flush=True)
    return 0 if ok else 1

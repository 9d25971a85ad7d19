"""Shared pieces for end-to-end tests: configs, a running daemon + simulator (in-process, or the
daemon as a subprocess for crash tests), waiting helpers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from aggregator.app import App
from aggregator.config import Config, parse_config
from simulator.smsc import Smsc, SmscProfile

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 20.0
Start = Callable[..., Awaitable[Smsc]]  # the start_smsc fixture (conftest.py)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

API_KEY = "shop-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def make_config(
    store: Path,
    smsc_port: int,
    *,
    binds: int = 2,
    window: int = 10,
    max_tps: float = 2000,
    extra_provider: dict[str, Any] | None = None,
    prefixes: tuple[str, ...] = ("*",),
    messages: dict[str, Any] | None = None,
    http: dict[str, Any] | None = None,
    store_opts: dict[str, Any] | None = None,
    smpp: dict[str, Any] | None = None,
    shop: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    bank: dict[str, Any] | None = None,
    callbacks: dict[str, Any] | None = None,
) -> Config:
    provider: dict[str, Any] = {
        "name": "sim", "host": "127.0.0.1", "port": smsc_port, "system_id": "smsagg",
        "password": "pw", "binds": binds, "window": window, "max_tps": max_tps,
        "reconnect_min": 0.05, "reconnect_max": 0.5,
    }
    provider.update(extra_provider or {})
    data: dict[str, Any] = {
        "http": {"listen": "127.0.0.1:0", **(http or {})},
        "store": {"path": str(store), **(store_opts or {})},
        "messages": {"retry_min": 0.05, "retry_max": 0.5, **(messages or {})},
        # The tests' receivers listen on loopback, which callbacks may not reach by default.
        "callbacks": {"retry_min": 0.05, "retry_max": 0.2, "allowed_networks": ["127.0.0.0/8"],
                      **(callbacks or {})},
        "accounts": [
            {"name": "shop", "api_key": API_KEY, **(shop or {})},
            {"name": "bank", "api_key": "bank-key", **(bank or {})},
        ],
        "providers": [provider],
        "routes": [{"prefixes": list(prefixes), "providers": ["sim"]}],
    }
    if smpp is not None:
        data["smpp"] = {"listen": "127.0.0.1:0", **smpp}
    if metrics is not None:
        data["metrics"] = metrics
    return parse_config(data, "<test>")


async def wait_for(condition: Callable[[], bool], timeout: float = DEADLINE,
                   what: str = "condition") -> None:
    """Poll a cheap in-memory condition with a deadline (for state we cannot await)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class CallbackSink:
    """An HTTP server that records delivery callbacks."""

    received: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_count(self, n: int, timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < n:
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{len(self.received)} of {n} callbacks arrived")
            with suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)


@asynccontextmanager
async def callback_sink() -> AsyncIterator[CallbackSink]:
    sink = CallbackSink()

    async def receive(request: web.Request) -> web.Response:
        sink.received.append(await request.json())
        sink.changed.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/cb", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    sink.url = f"http://127.0.0.1:{port}/cb"
    try:
        yield sink
    finally:
        await runner.cleanup()


@dataclass
class Running:
    app: App
    smsc: Smsc
    http: aiohttp.ClientSession
    base: str

    async def post(self, body: Any, *, headers: dict[str, str] | None = None,
                   raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
        hdrs = {**AUTH, **(headers or {})}
        kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
        async with self.http.post(f"{self.base}/v1/messages", headers=hdrs, **kwargs) as r:
            return r.status, await r.json()

    async def get(self, message_id: str, key: str = API_KEY) -> tuple[int, dict[str, Any]]:
        async with self.http.get(f"{self.base}/v1/messages/{message_id}",
                                 headers={"Authorization": f"Bearer {key}"}) as r:
            return r.status, await r.json()

    async def wait_status(self, message_id: str, statuses: set[str],
                          timeout: float = DEADLINE) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            _, body = await self.get(message_id)
            if body.get("status") in statuses:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"{message_id} stayed {body.get('status')}")
            await asyncio.sleep(0.02)


@asynccontextmanager
async def running(
    tmp_path: Path,
    profile: SmscProfile | None = None,
    **config_opts: Any,
) -> AsyncIterator[Running]:
    smsc = Smsc(profile or SmscProfile())
    await smsc.start()
    app = App(make_config(tmp_path / "smsagg.db", smsc.port, **config_opts))
    await app.start()
    http = aiohttp.ClientSession()
    try:
        await wait_for(lambda: all(p.binds_up == p.config.binds for p in app.pools.values()),
                       what="binds up")
        run = Running(app, smsc, http, f"http://127.0.0.1:{app.http_port}")
        yield run
        smsc = run.smsc  # a test may have replaced it
    finally:
        await http.close()
        await app.stop(drain_seconds=2.0)
        await smsc.stop()


# -- the daemon as a subprocess (`python -m aggregator run`), for tests that kill it ---------------


def metric_samples(text: str) -> Samples:
    """A /metrics text as {(name, sorted labels): value}."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric_value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample with exactly these labels; None when there is none."""
    return samples.get((name, tuple(sorted(labels.items()))))


def free_port() -> int:
    """A port the OS hands out as ephemeral now, for a server that keeps it across restarts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_daemon_config(
    path: Path,
    store: Path,
    smsc_port: int,
    *,
    http_port: int = 0,
    binds: int = 2,
    window: int = 10,
    max_tps: float = 150,
    provider: dict[str, float] | None = None,
    http_workers: int = 0,
) -> None:
    """A TOML config for `daemon()`: account "shop" (API_KEY), one provider "sim" on every route;
    `provider` adds keys to it (response_timeout, breaker_cooldown, ...)."""
    extra = "".join(f"{key} = {value!r}\n" for key, value in (provider or {}).items())
    path.write_text(f"""
[http]
listen = "127.0.0.1:{http_port}"
workers = {http_workers}
[store]
path = "{store}"
[messages]
retry_min = 0.05
retry_max = 0.5
[callbacks]
allowed_networks = ["127.0.0.0/8"]
[[accounts]]
name = "shop"
api_key = "{API_KEY}"
[[providers]]
name = "sim"
host = "127.0.0.1"
port = {smsc_port}
system_id = "smsagg"
password = "pw"
binds = {binds}
window = {window}
max_tps = {max_tps}
reconnect_min = 0.05
reconnect_max = 0.5
{extra}
[[routes]]
prefixes = ["*"]
providers = ["sim"]
""")


@asynccontextmanager
async def daemon(
    config: Path, log: Path | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """Run the daemon on `config` until it has started; yields the process and its HTTP base URL.
    Its output goes to `log` (appended) when given. Killed on exit if still running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aggregator", "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=config.parent,
    )
    assert proc.stdout is not None
    sink = log.open("ab") if log is not None else None
    try:
        base = ""
        while not base:
            line = await asyncio.wait_for(proc.stdout.readline(), DEADLINE)
            assert line, "daemon exited before it started"
            if sink is not None:
                sink.write(line)
            if b'"started"' in line:
                base = "http://" + json.loads(line)["http"]

        async def drain() -> None:
            assert proc.stdout is not None
            while line := await proc.stdout.readline():
                if sink is not None:
                    sink.write(line)

        drainer = asyncio.create_task(drain())
        try:
            yield proc, base
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            with suppress(TimeoutError):  # the rest of its output, if the pipe closes soon
                await asyncio.wait_for(drainer, 1.0)
            drainer.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if sink is not None:
            sink.close()

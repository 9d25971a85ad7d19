"""Shared pieces for end-to-end tests: configs, a running daemon + simulator (in-process, or the
daemon as a subprocess for crash tests), waiting helpers."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from aggregator import metrics
from aggregator.app import App
from aggregator.config import Config, parse_config
from simulator.harness import (
    LOOPBACK_CALLBACKS,
    QUICK_RECONNECT,
    QUICK_RETRIES,
    daemon_config,
    start_daemon,
    write_config,
)
from simulator.smsc import Smsc, SmscProfile

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 20.0
Start = Callable[..., Awaitable[Smsc]]  # the start_smsc fixture (conftest.py)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

API_KEY = "shop-key"
SHOP: dict[str, Any] = {"name": "shop", "api_key": API_KEY}
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
    sections: dict[str, dict[str, Any]] = {
        "messages": {**QUICK_RETRIES, **(messages or {})},
        "callbacks": {**QUICK_RETRIES, "retry_max": 0.2, **LOOPBACK_CALLBACKS, **(callbacks or {})},
    }
    if smpp is not None:
        sections["smpp"] = {"listen": "127.0.0.1:0", **smpp}
    if metrics is not None:
        sections["metrics"] = metrics
    data = daemon_config(
        smsc_port, {"path": str(store), **(store_opts or {})},
        [{**SHOP, **(shop or {})}, {"name": "bank", "api_key": "bank-key", **(bank or {})}],
        provider={"binds": binds, "window": window, "max_tps": max_tps, **QUICK_RECONNECT,
                  **(extra_provider or {})},
        prefixes=prefixes, http=http, sections=sections)
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

    async with serve_app([web.post("/cb", receive)]) as base:
        sink.url = f"{base}/cb"
        yield sink


@asynccontextmanager
async def serve_app(routes: Iterable[web.AbstractRouteDef]) -> AsyncIterator[str]:
    """An aiohttp server with `routes` on 127.0.0.1 (a free port) for the block; yields its
    base URL (http://127.0.0.1:PORT)."""
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def post_messages(http: aiohttp.ClientSession, base: str, count: int, *, first: int,
                        tag: str) -> list[str]:
    """POST count messages from ACME to +38344<first + i>, text <tag><i>, one after the other,
    each answered 202; their ids."""
    ids: list[str] = []
    for i in range(count):
        async with http.post(f"{base}/v1/messages", headers=AUTH, json={
                "to": f"+38344{first + i}", "from": "ACME", "text": f"{tag}{i}"}) as r:
            assert r.status == 202, await r.text()
            ids.append((await r.json())["id"])
    return ids


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

    async def post_many(self, count: int, *, first: int, tag: str) -> list[str]:
        """See post_messages."""
        return await post_messages(self.http, self.base, count, first=first, tag=tag)

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


def registry_value(name: str, **labels: str) -> float:
    """A sample of this process's metrics registry (0 while the labelled child does not exist)."""
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


class ManualClock:
    """A clock for `clock=` parameters that stands still until the test moves `now`."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def free_port() -> int:
    """A port the OS hands out as ephemeral now, for a server that keeps it across restarts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def shop_config(tmp_path: Path, smsc_port: int, *, provider: dict[str, Any] | None = None,
                http: dict[str, Any] | None = None,
                sections: dict[str, dict[str, Any]] | None = None) -> Path:
    """DIR/smsagg.toml for `daemon()`, as built by simulator.harness.daemon_config: store
    DIR/smsagg.db, account "shop" (API_KEY), provider "sim" at `smsc_port` with `provider`'s
    keys; `http` and `sections` as there."""
    return write_config(tmp_path / "smsagg.toml", daemon_config(
        smsc_port, {"path": str(tmp_path / "smsagg.db")}, [SHOP], provider=provider, http=http,
        sections=sections))


def write_daemon_config(
    path: Path,
    store: Path,
    smsc_port: int,
    *,
    http_port: int = 0,
    binds: int = 2,
    window: int = 10,
    max_tps: float = 150,
    provider: dict[str, Any] | None = None,
    http_workers: int = 0,
) -> Path:
    """A TOML config for `daemon()`: account "shop" (API_KEY), one provider "sim" on every route;
    `provider` adds keys to it (response_timeout, breaker_cooldown, ...)."""
    return write_config(path, daemon_config(
        smsc_port, {"path": str(store)}, [SHOP],
        provider={"binds": binds, "window": window, "max_tps": max_tps, **QUICK_RECONNECT,
                  **(provider or {})},
        http={"listen": f"127.0.0.1:{http_port}", "workers": http_workers},
        sections={"messages": QUICK_RETRIES, "callbacks": LOOPBACK_CALLBACKS}))


@asynccontextmanager
async def daemon(
    config: Path, log: Path | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """Run the daemon on `config` until it has started; yields the process and its HTTP base URL.
    Its output goes to `log` (appended) when given. Killed on exit if still running."""
    sink = log.open("ab") if log is not None else None

    def write(line: str) -> None:
        if sink is not None:
            sink.write(line.encode() + b"\n")
            sink.flush()

    try:
        proc, started = await start_daemon(
            config, merge_stderr=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=config.parent, on_line=write)
        proc.follow(proc.proc.stdout)
        try:
            yield proc.proc, "http://" + started["http"]
        finally:
            await proc.stop(kill=True, output_wait=1.0)  # the rest of its output, if soon
    finally:
        if sink is not None:
            sink.close()


async def delivered(http: aiohttp.ClientSession, base: str, ids: list[str]) -> bool:
    """Whether every message in `ids` has status delivered."""
    for mid in ids:
        async with http.get(f"{base}/v1/messages/{mid}") as r:
            if (await r.json())["status"] != "delivered":
                return False
    return True


async def wait_async(check: Any, timeout: float = DEADLINE) -> None:
    """Poll an async condition until it holds, failing at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.1)

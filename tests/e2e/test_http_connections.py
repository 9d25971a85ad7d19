"""The HTTP API's connections are bounded in time and number (issue 17, item 7): slowloris
headers, idle kept-alive connections and never-ending bodies are closed at their timeouts; at
max_connections a new connection replaces one that waits for headers or idles, or is refused
with 503 when all are inside requests. After each probe a normal client still gets 202 and
/readyz 200."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import aiohttp

from simulator.harness import wait_ready
from simulator.smsc import Smsc, SmscProfile
from tests.helpers import (
    API_KEY,
    AUTH,
    DEADLINE,
    ROOT,
    Running,
    daemon,
    metric_samples,
    metric_value,
    running,
    shop_config,
    wait_for,
)

OK = {"to": "+38344123456", "from": "ACME", "text": "hello"}
TIMEOUTS = {"header_timeout": 0.5, "body_timeout": 1.0, "keepalive_timeout": 0.7}
SLACK = 1.5  # seconds a close may come after its deadline on a loaded machine


async def normal_client_still_served(base: str) -> None:
    """A new client (no pooled connection) gets 202 and /readyz 200."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, headers=AUTH) as http:
        async with http.post(f"{base}/v1/messages", json=OK) as resp:
            assert resp.status == 202, await resp.text()
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 200


async def closed_count(base: str, reason: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as resp:
        samples = metric_samples(await resp.text())
    return metric_value(samples, "smsagg_http_connections_closed_total", reason=reason) or 0.0


async def open_raw(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       dribble: bytes | None, started: float) -> float:
    """Send `dribble` every 0.1 s (if given) and read until the server closes; the seconds
    from `started` to the close."""
    deadline = started + 30
    while time.monotonic() < deadline:
        try:
            if dribble is not None:
                writer.write(dribble)
                await writer.drain()
            with suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(65536), 0.1) == b"":
                    break
        except (ConnectionError, OSError):
            break
    writer.close()
    return time.monotonic() - started


@asynccontextmanager
async def api(tmp_path: Path, **http: float) -> AsyncIterator[Running]:
    async with running(tmp_path, http={**TIMEOUTS, **http}) as r:
        yield r


async def test_slowloris_headers_are_closed_at_the_header_timeout(tmp_path: Path) -> None:
    async with api(tmp_path) as r:
        reader, writer = await open_raw(r.base)
        started = time.monotonic()
        writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n")
        took = await until_closed(reader, writer, b"X-Slow: 1\r\n", started)
        assert 0.4 < took < 0.5 + SLACK, took
        assert await closed_count(r.base, "header_timeout") == 1
        await normal_client_still_served(r.base)


async def test_a_silent_new_connection_is_closed_at_the_header_timeout(tmp_path: Path) -> None:
    async with api(tmp_path) as r:
        reader, writer = await open_raw(r.base)
        took = await until_closed(reader, writer, None, time.monotonic())
        assert 0.4 < took < 0.5 + SLACK, took
        await normal_client_still_served(r.base)


async def test_an_idle_kept_alive_connection_is_closed_at_the_keepalive_timeout(
        tmp_path: Path) -> None:
    async with api(tmp_path) as r:
        reader, writer = await open_raw(r.base)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
        assert head.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        # The answer's body comes first; then nothing until the close.
        took = await until_closed(reader, writer, None, started)
        assert 0.6 < took < 0.7 + SLACK, took
        assert await closed_count(r.base, "idle_timeout") == 1
        await normal_client_still_served(r.base)


async def test_a_never_ending_chunked_body_is_closed_at_the_body_timeout(tmp_path: Path) -> None:
    async with api(tmp_path) as r:
        for auth in (f"Authorization: Bearer {API_KEY}\r\n".encode(), b""):
            reader, writer = await open_raw(r.base)
            writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n" + auth +
                         b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            started = time.monotonic()
            took = await until_closed(reader, writer, b"1\r\n \r\n", started)
            assert 0.9 < took < 1.0 + SLACK, (auth, took)
        assert await closed_count(r.base, "body_timeout") == 2
        await normal_client_still_served(r.base)


async def test_at_the_cap_a_new_connection_replaces_a_waiting_one(tmp_path: Path) -> None:
    async with api(tmp_path, max_connections=20, header_timeout=30) as r:
        loris = [await open_raw(r.base) for _ in range(20)]
        for _, writer in loris:
            writer.write(b"GET /healthz HTTP/1.1\r\n")
        await wait_for(lambda: r.app.http_guard is not None and r.app.http_guard.open == 20,
                       what="20 connections open")
        await normal_client_still_served(r.base)  # its first connection evicted one
        assert await closed_count(r.base, "evicted") >= 1
        async with r.http.get(f"{r.base}/metrics") as resp:
            samples = metric_samples(await resp.text())
        assert metric_value(samples, "smsagg_buffer_bound", buffer="http_connections") == 20
        assert r.app.http_guard is not None and r.app.http_guard.open <= 20
        for _, writer in loris:
            writer.close()


async def test_at_the_cap_with_every_connection_in_a_request_new_ones_get_503(
        tmp_path: Path) -> None:
    async with api(tmp_path, max_connections=10, body_timeout=2.0) as r:
        busy = [await open_raw(r.base) for _ in range(10)]
        for _, writer in busy:  # a body announced and never sent: each is inside a request
            writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                         + API_KEY.encode() + b"\r\nContent-Length: 1000\r\n\r\n{")
        guard = r.app.http_guard
        assert guard is not None
        await wait_for(lambda: guard.open == 10, what="10 connections open")
        await asyncio.sleep(0.2)  # let their headers be parsed (nothing to poll from outside)
        reader, writer = await open_raw(r.base)
        answer = await asyncio.wait_for(reader.read(), DEADLINE)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer[:100]
        assert b"too_many_connections" in answer
        # At their body timeout they go, and the API serves again.
        await wait_for(lambda: guard.open < 10, timeout=2.0 + SLACK + 1, what="busy ones closed")
        await normal_client_still_served(r.base)
        assert await closed_count(r.base, "refused") >= 1
        for _, w in busy:
            w.close()


async def test_limits_apply_in_ingress_worker_processes_and_are_logged(tmp_path: Path) -> None:
    smsc = Smsc(SmscProfile())
    await smsc.start()
    config = shop_config(tmp_path, smsc.port, provider={"binds": 1, "max_tps": 100}, http={
        "workers": 1, "header_timeout": 0.5, "body_timeout": 1.0, "max_connections": 5})
    log = tmp_path / "daemon.log"
    try:
        async with daemon(config, log) as (_proc, base):
            await wait_ready(base)
            reader, writer = await open_raw(base)
            writer.write(b"GET /healthz HTTP/1.1\r\n")
            took = await until_closed(reader, writer, b"X-Slow: 1\r\n", time.monotonic())
            assert took < 0.5 + SLACK, took
            reader, writer = await open_raw(base)
            writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                         + API_KEY.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
            took = await until_closed(reader, writer, b"1\r\n \r\n", time.monotonic())
            assert took < 1.0 + SLACK, took
            loris = [await open_raw(base) for _ in range(8)]
            for _, w in loris:
                w.write(b"GET /healthz HTTP/1.1\r\n")
                await w.drain()
            await normal_client_still_served(base)
            for _, w in loris:
                w.close()
            for reason in ("header_timeout", "evicted"):  # the worker reports them
                deadline = time.monotonic() + DEADLINE
                while await closed_count(base, reason) < 1:
                    assert time.monotonic() < deadline, reason
                    await asyncio.sleep(0.1)
        text = log.read_text()
        assert "http_connection_cap" in text and "http_connections_timed_out" in text
        assert "body_timeout" in text
        assert "Traceback" not in text  # a closed body is no handler error
    finally:
        await smsc.stop()


def fd_bounded_in_child(soft: int, hard: int) -> tuple[int, int]:
    """fd_bounded(1000) in a fresh process with these RLIMIT_NOFILE limits: (cap, soft after)."""
    code = (
        "import resource\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))\n"
        "from aggregator.ingress.connections import fd_bounded\n"
        "cap = fd_bounded(1000)\n"
        "print(cap, resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    cap, after = out.stdout.split()[-2:]
    return int(cap), int(after)


def test_the_cap_fits_in_the_file_descriptor_limit() -> None:
    assert fd_bounded_in_child(300, 4096) == (1000, 1256)  # soft limit raised to fit
    assert fd_bounded_in_child(300, 300) == (44, 300)  # cannot: a lower cap (and a warning)

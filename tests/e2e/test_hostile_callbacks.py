"""Callbacks against hostile URLs and receivers (issue 17): no SSRF (literal addresses refused
at submit, names after resolution, no redirects), a bounded read of the answer, masked URLs
in logs, and fair sharing so that a dead receiver slows only its own callbacks."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import sqlite3
import time
import tomllib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from aggregator.config import CallbacksConfig, ConfigError, parse_config
from aggregator.notify.callback_guard import (
    CallbackPolicy,
    ForbiddenAddress,
    GuardedResolver,
    mask_url,
)
from aggregator.notify.callbacks import CallbackSender
from aggregator.store.base import CallbackJob
from aggregator.store.writes import callback_destination
from simulator.harness import daemon_config as harness_config
from simulator.harness import wait_ready, write_config
from simulator.smsc import Smsc, SmscProfile
from tests.callback_helpers import stuck_receiver
from tests.helpers import (
    AUTH,
    DEADLINE,
    SHOP,
    Running,
    callback_sink,
    daemon,
    metric_samples,
    metric_value,
    running,
    serve_app,
    wait_for,
)

OK = {"to": "+38344123456", "from": "ACME", "text": "hello"}
DEFAULT_POLICY = {"allowed_networks": []}  # as in the default configuration


# --------------------------------------------------------------------------- pure policy


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.9.9.9", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "0.0.0.0", "224.0.0.1", "240.0.0.1", "255.255.255.255", "192.0.2.1",
    "::1", "::", "fe80::1", "fc00::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
    "64:ff9b::7f00:1", "2002:7f00:1::1", "2001:db8::1",
])
def test_default_policy_forbids_non_global_addresses(address: str) -> None:
    assert CallbackPolicy().forbidden(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700::1111",
                                     "::ffff:8.8.8.8"])
def test_default_policy_allows_global_addresses(address: str) -> None:
    assert not CallbackPolicy().forbidden(ipaddress.ip_address(address))


def test_allowed_networks_open_their_ranges_only() -> None:
    policy = CallbackPolicy(["127.0.0.0/8", "fd00::/8"])
    for address in ("127.0.0.1", "::ffff:127.0.0.1", "fd12::1"):
        assert not policy.forbidden(ipaddress.ip_address(address)), address
    for address in ("10.0.0.1", "::1", "169.254.169.254"):
        assert policy.forbidden(ipaddress.ip_address(address)), address


def test_literal_forms_are_recognised() -> None:
    policy = CallbackPolicy()
    for url in ("http://127.0.0.1/cb", "http://[::1]:8080/", "https://2130706433/",
                "http://0x7f.1/", "http://127.1/", "http://u:p@10.0.0.1/"):
        assert policy.literal_forbidden(url), url
    for url in ("http://localhost/cb", "https://hooks.example.com/x", "http://8.8.8.8/"):
        assert not policy.literal_forbidden(url), url


def test_allowed_networks_are_validated() -> None:
    data: dict[str, Any] = {
        "callbacks": {"allowed_networks": ["127.0.0.0/8", "10.0.0.1/8", "nonsense", 7]},
        "accounts": [{"name": "a", "api_key": "k"}],
        "providers": [{"name": "p", "host": "h", "port": 1, "system_id": "s",
                       "password": "p", "binds": 1, "window": 1, "max_tps": 1}],
        "routes": [{"prefixes": ["*"], "providers": ["p"]}],
    }
    with pytest.raises(ConfigError) as err:
        parse_config(data, "x.toml")
    text = "\n".join(err.value.problems)
    assert "callbacks.allowed_networks[1]: must be a CIDR range" in text
    assert "callbacks.allowed_networks[2]: must be a CIDR range" in text
    assert "callbacks.allowed_networks[3]: must be a string" in text
    data["callbacks"]["allowed_networks"] = ["127.0.0.0/8", "::1"]
    assert parse_config(data, "x.toml").callbacks.allowed_networks == ("127.0.0.0/8",
                                                                       "::1/128")


def test_mask_url_hides_credentials_and_query() -> None:
    assert mask_url("https://bob:pw@hooks.example.com:8443/sms?token=abc#f") == (
        "https://***@hooks.example.com:8443/sms?***#***")
    assert mask_url("http://[::1]/cb") == "http://[::1]/cb"


# --------------------------------------------------------------------------- at submit


FORBIDDEN_URLS = [
    "http://127.0.0.1:9/cb", "http://10.0.0.7/cb", "http://192.168.0.1/", "http://172.20.1.1/",
    "http://169.254.169.254/latest/meta-data/", "http://[::1]:8080/cb", "http://[fe80::1]/",
    "http://[::ffff:127.0.0.1]/", "http://[fd00::5]/", "http://0.0.0.0:8080/",
    "http://2130706433/", "http://user:pw@127.0.0.1/?token=x",
]


async def test_literal_forbidden_addresses_are_refused_at_submit(tmp_path: Path) -> None:
    async with running(tmp_path, callbacks=DEFAULT_POLICY) as r:
        for url in FORBIDDEN_URLS:
            status, body = await r.post({**OK, "callback_url": url})
            assert status == 422, (url, body)
            assert body["error"]["code"] == "callback_url_forbidden", url
            assert "pw" not in body["error"]["message"]
        items = [{**OK, "callback_url": "http://10.0.0.7/cb"},
                 {**OK, "callback_url": "https://hooks.example.invalid/cb"}]
        async with r.http.post(f"{r.base}/v1/messages/batch", json={"messages": items},
                               headers=AUTH) as resp:
            results = (await resp.json())["results"]
        assert [x["status"] for x in results] == [422, 202]
        assert results[0]["error"]["code"] == "callback_url_forbidden"
        # A name is accepted here and checked when the callback is sent.
        status, _ = await r.post({**OK, "callback_url": "http://localhost:9/cb"})
        assert status == 202
        await assert_still_serving(r)


async def assert_still_serving(r: Running) -> None:
    status, _ = await r.post(OK)
    assert status == 202
    async with r.http.get(f"{r.base}/readyz") as resp:
        assert resp.status == 200


# --------------------------------------------------------------------------- at send time


def callback_rows(db: Path) -> list[tuple[str, int, int, str | None]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT url, attempts, given_up, last_error FROM callbacks").fetchall()


async def test_a_name_resolving_to_loopback_is_refused_at_send_time(tmp_path: Path) -> None:
    async with callback_sink() as sink, running(tmp_path, callbacks=DEFAULT_POLICY) as r:
        port = sink.url.rsplit(":", 1)[1].split("/")[0]
        url = f"http://localhost:{port}/cb?token=hidden"
        before = await forbidden_count(r)
        status, body = await r.post({**OK, "callback_url": url})
        assert status == 202
        await r.wait_status(body["id"], {"delivered"})
        await wait_for(lambda: any(row[2] for row in callback_rows(tmp_path / "smsagg.db")),
                       what="the callback given up")
        [(_, attempts, given_up, error)] = callback_rows(tmp_path / "smsagg.db")
        assert (attempts, given_up, error) == (1, 1, "forbidden address")  # final at once
        assert await forbidden_count(r) == before + 1
        assert sink.received == []
        await assert_still_serving(r)


async def forbidden_count(r: Running) -> float:
    async with r.http.get(f"{r.base}/metrics") as resp:
        samples = metric_samples(await resp.text())
    return metric_value(samples, "smsagg_callbacks_total", result="forbidden") or 0.0


async def test_allowed_networks_open_a_loopback_name(tmp_path: Path) -> None:
    opened = {"allowed_networks": ["127.0.0.0/8", "::1/128"]}
    async with callback_sink() as sink, running(tmp_path, callbacks=opened) as r:
        port = sink.url.rsplit(":", 1)[1].split("/")[0]
        status, body = await r.post({**OK, "callback_url": f"http://localhost:{port}/cb"})
        assert status == 202
        await sink.wait_count(1)
        assert sink.received[0]["id"] == body["id"]


async def test_a_redirect_is_a_failed_attempt_and_not_followed(tmp_path: Path) -> None:
    hits: list[str] = []
    routes = web.RouteTableDef()

    @routes.post("/hook")
    async def hook(request: web.Request) -> web.Response:
        hits.append("hook")
        raise web.HTTPTemporaryRedirect("/internal")

    @routes.post("/internal")
    async def internal(request: web.Request) -> web.Response:
        hits.append("internal")
        return web.Response(status=204)

    async with serve_app(routes) as base, running(tmp_path) as r:
        status, _body = await r.post({**OK, "callback_url": f"{base}/hook"})
        assert status == 202
        await wait_for(lambda: hits.count("hook") >= 2, what="a retried redirect")
        rows = callback_rows(tmp_path / "smsagg.db")
        assert rows and rows[0][3] == "HTTP 307"
    assert "internal" not in hits


# --------------------------------------------------------------------------- the daemon process


def daemon_config(path: Path, store: Path, smsc_port: int, callbacks: str) -> None:
    """A config for `daemon()`; `callbacks` is the body of its [callbacks] section (TOML)."""
    write_config(path, harness_config(
        smsc_port, {"path": str(store)}, [SHOP], provider={"binds": 1, "max_tps": 100},
        sections={"callbacks": tomllib.loads(callbacks)}))


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB, from /proc."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


@dataclass
class HugeAnswer:
    """Answers every request `status` with a 200 MB body, written as fast as the peer takes
    it."""

    status: int = 200
    size: int = 200 * 1024 * 1024
    requests: int = 0
    sent: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""


@asynccontextmanager
async def huge_answer(status: int = 200) -> AsyncIterator[HugeAnswer]:
    huge = HugeAnswer(status)
    chunk = b"x" * 65536

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
            huge.requests += 1
            writer.write(b"HTTP/1.1 %d X\r\nContent-Type: text/plain\r\n"
                         b"Content-Length: %d\r\n\r\n" % (huge.status, huge.size))
            while huge.sent < huge.size:
                writer.write(chunk)
                await writer.drain()
                huge.sent += len(chunk)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            huge.done.set()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    huge.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/cb"
    try:
        yield huge
    finally:
        server.close()


async def test_a_huge_callback_answer_is_not_read(tmp_path: Path) -> None:
    smsc = Smsc(SmscProfile())
    await smsc.start()
    config = tmp_path / "smsagg.toml"
    daemon_config(config, tmp_path / "smsagg.db", smsc.port,
                  'allowed_networks = ["127.0.0.0/8"]')
    try:
        async with huge_answer() as huge, daemon(config) as (proc, base), \
                aiohttp.ClientSession(headers=AUTH) as http:
            await wait_ready(base)
            rss_before, _ = rss_kb(proc.pid)
            async with http.post(f"{base}/v1/messages",
                                 json={**OK, "callback_url": huge.url}) as resp:
                assert resp.status == 202
            await asyncio.wait_for(huge.done.wait(), DEADLINE)
            deadline = time.monotonic() + DEADLINE
            while True:  # recorded just after the close that ended the receiver
                samples = await scrape(http, base)
                ok = metric_value(samples, "smsagg_callbacks_total", result="ok")
                truncated = metric_value(samples, "smsagg_callback_answers_truncated_total")
                if ((ok and truncated and not callback_rows(tmp_path / "smsagg.db"))
                        or time.monotonic() > deadline):
                    break
                await asyncio.sleep(0.05)
            rss_after, peak = rss_kb(proc.pid)
            print(f"200 MB answer: daemon RSS {rss_before} KiB -> {rss_after} KiB "
                  f"(peak {peak} KiB), {huge.sent / 2**20:.1f} MiB written before the close")
            assert huge.requests == 1 and ok == 1 and truncated == 1
            assert huge.sent < 32 * 2**20  # closed, not read to the end
            assert peak - rss_before < 30 * 1024, (rss_before, peak)
            assert callback_rows(tmp_path / "smsagg.db") == []  # recorded as delivered
            async with http.post(f"{base}/v1/messages", json=OK) as resp:
                assert resp.status == 202
            async with http.get(f"{base}/readyz") as resp:
                assert resp.status == 200
    finally:
        await smsc.stop()


async def test_a_huge_failure_answer_is_recorded_with_its_status(tmp_path: Path) -> None:
    smsc = Smsc(SmscProfile())
    await smsc.start()
    config = tmp_path / "smsagg.toml"
    daemon_config(config, tmp_path / "smsagg.db", smsc.port,
                  'allowed_networks = ["127.0.0.0/8"]\nretry_min = 60\nretry_max = 60')
    try:
        async with huge_answer(503) as huge, daemon(config) as (proc, base), \
                aiohttp.ClientSession(headers=AUTH) as http:
            await wait_ready(base)
            rss_before, _ = rss_kb(proc.pid)
            async with http.post(f"{base}/v1/messages",
                                 json={**OK, "callback_url": huge.url}) as resp:
                assert resp.status == 202
            await asyncio.wait_for(huge.done.wait(), DEADLINE)
            await wait_for(lambda: bool(callback_rows(tmp_path / "smsagg.db")[0][1]),
                           what="the attempt recorded")
            [(_, attempts, given_up, error)] = callback_rows(tmp_path / "smsagg.db")
            assert (attempts, given_up, error) == (1, 0, "HTTP 503")  # retried later
            _, peak = rss_kb(proc.pid)
            assert peak - rss_before < 30 * 1024, (rss_before, peak)
            assert huge.sent < 32 * 2**20
    finally:
        await smsc.stop()


async def scrape(http: aiohttp.ClientSession, base: str) -> dict[Any, float]:
    async with http.get(f"{base}/metrics") as resp:
        return metric_samples(await resp.text())


async def test_failed_callback_urls_are_masked_in_logs_and_metrics(tmp_path: Path) -> None:
    routes = web.RouteTableDef()
    hits: list[int] = []

    @routes.post("/cb")
    async def failing(request: web.Request) -> web.Response:
        hits.append(1)
        return web.Response(status=500, text="no")

    smsc = Smsc(SmscProfile())
    await smsc.start()
    config = tmp_path / "smsagg.toml"
    daemon_config(config, tmp_path / "smsagg.db", smsc.port,
                  'allowed_networks = ["127.0.0.0/8"]\nmax_attempts = 2\n'
                  'retry_min = 0.05\nretry_max = 0.1')
    log = tmp_path / "daemon.log"
    try:
        async with serve_app(routes) as base_cb, daemon(config, log) as (_proc, base), \
                aiohttp.ClientSession(headers=AUTH) as http:
            await wait_ready(base)
            host = base_cb.removeprefix("http://")
            secret_urls = [f"http://alice:Pa55word@{host}/cb?token=T0KEN1",
                           "http://bob:Hunter22@localhost:1/cb?sig=S1GNATURE",  # refused
                           "http://carol:Xyzzy99@127.0.0.1:1/cb?k=K3YVALUE"]  # refused conn
            for url in secret_urls:
                async with http.post(f"{base}/v1/messages",
                                     json={**OK, "callback_url": url}) as resp:
                    assert resp.status == 202
            await wait_for(lambda: len(callback_rows(tmp_path / "smsagg.db")) == 3
                           and all(row[2] for row in callback_rows(tmp_path / "smsagg.db")),
                           what="every callback given up")
            metrics_text = await (await http.get(f"{base}/metrics")).text()
        text = log.read_text()
        assert "callback_gave_up" in text and "callback_retry" in text
        assert f"http://***@{host}/cb?***" in text
        for secret in ("Pa55word", "T0KEN1", "Hunter22", "S1GNATURE", "Xyzzy99", "K3YVALUE",
                       "alice", "token="):
            assert secret not in text, secret
            assert secret not in metrics_text, secret
        errors = [row[3] or "" for row in callback_rows(tmp_path / "smsagg.db")]
        assert not any(s in e for e in errors for s in ("Pa55word", "T0KEN1", "K3YVALUE"))
    finally:
        await smsc.stop()


# --------------------------------------------------------------------------- fairness


async def flood(r: Running, url: str, n: int, key: str = "shop-key") -> None:
    gate = asyncio.Semaphore(20)

    async def one(i: int) -> None:
        async with gate, r.http.post(f"{r.base}/v1/messages",
                               json={**OK, "to": f"+38344{200000 + i}", "callback_url": url},
                               headers={"Authorization": f"Bearer {key}"}) as resp:
            assert resp.status == 202

    await asyncio.gather(*(one(i) for i in range(n)))


async def callback_time(r: Running, key: str) -> float:
    """Seconds from a 202 to its callback at a live receiver."""
    async with callback_sink() as sink:
        started = time.monotonic()
        async with r.http.post(f"{r.base}/v1/messages", json={**OK, "callback_url": sink.url},
                               headers={"Authorization": f"Bearer {key}"}) as resp:
            assert resp.status == 202
            message_id = (await resp.json())["id"]
        await sink.wait_count(1, timeout=60)
        assert sink.received[0]["id"] == message_id
        return time.monotonic() - started


@pytest.mark.parametrize("victim", ["bank-key", "shop-key"])
async def test_a_dead_receiver_slows_only_its_own_callbacks(tmp_path: Path, victim: str) -> None:
    """200 callbacks of account shop to a receiver that never answers, holding every slot;
    then one callback of account bank (or of shop itself, to another receiver) arrives
    promptly: a request of the dead receiver, above its share, gives its slot up."""
    async with stuck_receiver() as hole, running(tmp_path) as r:
        per_host = r.app.config.callbacks.per_host_concurrency
        await flood(r, hole.url, 200)
        # All 200 are due (in the outbox) before the victim's message is even sent.
        await wait_for(lambda: len(callback_rows(tmp_path / "smsagg.db")) >= 200,
                       what="200 callbacks due")
        await wait_for(lambda: hole.connections >= per_host, what="callbacks to connect")
        took = await callback_time(r, victim)
        print(f"{victim}'s callback behind 200 black-holed ones: {took:.2f} s")
        assert took < 3.0, took
        # The dead receiver had every slot until then; now it keeps its share.
        assert r.app.callbacks.in_flight_to(callback_destination(hole.url)) >= per_host
        await assert_still_serving(r)
        await asyncio.wait_for(r.app.callbacks.stop(), 5)


class FixedAnswers(AbstractResolver):
    """DNS that answers every name with the given addresses (a rebinding attacker's zone)."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        return [{"hostname": host, "host": a, "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": 0} for a in self.addresses]

    async def close(self) -> None:
        pass


async def test_every_resolved_address_must_be_allowed() -> None:
    policy = CallbackPolicy()
    ok = await GuardedResolver(policy, FixedAnswers("8.8.8.8", "1.1.1.1")).resolve("a.example")
    assert [r["host"] for r in ok] == ["8.8.8.8", "1.1.1.1"]
    for answers in (("8.8.8.8", "10.0.0.1"), ("169.254.169.254",), ("::ffff:127.0.0.1",)):
        with pytest.raises(ForbiddenAddress):
            await GuardedResolver(policy, FixedAnswers(*answers)).resolve("evil.example")


class ScriptedOutbox:
    """The store's callback outbox with chosen accounts: a job is due until it is dropped
    or retried."""

    def __init__(self) -> None:
        self.jobs: dict[int, CallbackJob] = {}

    def add(self, url: str, account: str) -> int:
        job_id = len(self.jobs) + 1
        payload = json.dumps({"id": f"m{job_id}"})
        self.jobs[job_id] = CallbackJob(job_id, f"m{job_id}", url, payload, 0, account)
        return job_id

    async def due_callbacks(self, now: float, limit: int,
                            per_destination: int | None = None) -> list[CallbackJob]:
        return list(self.jobs.values())[:limit]

    async def callbacks_done(self, job_ids: Sequence[int]) -> None:
        for job_id in job_ids:
            self.jobs.pop(job_id, None)

    async def callback_retry(self, job_id: int, next_attempt_at: float, error: str) -> None:
        self.jobs.pop(job_id, None)  # not due again within the test

    async def callback_give_up(self, job_id: int, error: str) -> None:
        self.jobs.pop(job_id, None)


async def test_an_account_above_its_share_yields_to_another_account() -> None:
    """Account a's callbacks go to 8 dead receivers, 4 each: no destination is above its
    share, account a is (32 > 16); account b's callback takes a slot within about a second."""
    async with contextlib.AsyncExitStack() as stack:
        holes = [await stack.enter_async_context(stuck_receiver()) for _ in range(8)]
        sink = await stack.enter_async_context(callback_sink())
        outbox = ScriptedOutbox()
        for hole in holes:
            for _ in range(4):
                outbox.add(hole.url, "a")
        config = CallbacksConfig(allowed_networks=("127.0.0.0/8",), timeout=30)
        sender = CallbackSender(outbox, config)  # type: ignore[arg-type]
        sender.start()
        try:
            await wait_for(lambda: sum(h.connections for h in holes) >= 32,
                           what="every slot held")
            started = time.monotonic()
            outbox.add(sink.url, "b")
            sender.wake()
            await sink.wait_count(1, timeout=10)
            took = time.monotonic() - started
        finally:
            await sender.stop()
    print(f"account b's callback behind account a's 32 stuck ones: {took:.2f} s")
    assert took < 3.0, took

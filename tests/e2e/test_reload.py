"""SIGHUP reloads accounts, providers and routes without touching binds that did not change; a
broken file changes nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aggregator.config import parse_config
from aggregator.smpp.session import BindMode
from aggregator.smpp.transport import BindError, open_client
from simulator.harness import start_daemon
from simulator.smsc import Smsc, SmscProfile
from tests.helpers import DEADLINE, make_config, metric_samples, metric_value, running, wait_for

ROOT = Path(__file__).resolve().parents[2]
KOSOVO = "+38344123456"
GERMANY = "+4915112345678"


def provider(name: str, port: int, **extra: Any) -> str:
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in extra.items())
    return f"""
[[providers]]
name = "{name}"
host = "127.0.0.1"
port = {port}
system_id = "smsagg"
password = "pw"
binds = 2
window = 10
max_tps = 500
reconnect_min = 0.05
reconnect_max = 0.5
{lines}"""


def account(name: str, key: str, system_id: str | None = None) -> str:
    smpp = f'system_id = "{system_id}"\npassword = "pw-{system_id}"\n' if system_id else ""
    return f'\n[[accounts]]\nname = "{name}"\napi_key = "{key}"\n{smpp}'


def route(prefix: str, *providers: str) -> str:
    names = ", ".join(f'"{p}"' for p in providers)
    return f'\n[[routes]]\nprefixes = ["{prefix}"]\nproviders = [{names}]\n'


def head(store: Path, max_body: int = 65536) -> str:
    return f"""
[http]
listen = "127.0.0.1:0"
max_body_bytes = {max_body}
[store]
path = "{store}"
[messages]
retry_min = 0.05
retry_max = 0.5
[smpp]
listen = "127.0.0.1:0"
"""


class Daemon:
    """`python -m aggregator run` with its JSON log lines kept for the test to look at."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process
        self.records: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.base = ""
        self.smpp_port = 0

    def read(self, line: str) -> None:
        with suppress(ValueError):
            self.records.append(json.loads(line))
            self.changed.set()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == name]

    async def wait_event(self, name: str, count: int = 1) -> dict[str, Any]:
        deadline = time.monotonic() + DEADLINE
        while len(self.events(name)) < count:
            self.changed.clear()
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {name!r} in the daemon's log"
            with suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)
        return self.events(name)[count - 1]


@asynccontextmanager
async def daemon(config: Path) -> AsyncIterator[Daemon]:
    d = Daemon()
    proc, started = await start_daemon(config, merge_stderr=True, cwd=config.parent,
                                       env={**os.environ, "PYTHONPATH": str(ROOT)},
                                       on_line=d.read)
    proc.follow(proc.proc.stdout)
    d.proc = proc.proc
    d.base = "http://" + started["http"]
    d.smpp_port = int(started["smpp"])
    try:
        yield d
    finally:
        await proc.stop(kill=True, output_wait=2.0)


async def poll(check: Callable[[], Any], what: str) -> Any:
    """Call an async check until it returns something truthy, within the deadline."""
    deadline = time.monotonic() + DEADLINE
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def send(http: aiohttp.ClientSession, base: str, key: str, to: str) -> dict[str, Any]:
    """Post one message and wait until it is delivered; returns its final view."""
    headers = {"Authorization": f"Bearer {key}"}
    async with http.post(f"{base}/v1/messages", headers=headers,
                         json={"to": to, "from": "ACME", "text": "hi"}) as resp:
        assert resp.status == 202, await resp.text()
        mid = (await resp.json())["id"]

    async def delivered() -> dict[str, Any] | None:
        async with http.get(f"{base}/v1/messages/{mid}", headers=headers) as r:
            view: dict[str, Any] = await r.json()
        return view if view["status"] == "delivered" else None

    result: dict[str, Any] = await poll(delivered, f"{mid} delivered")
    return result


async def status_for_key(http: aiohttp.ClientSession, base: str, key: str) -> int:
    async with http.get(f"{base}/v1/messages/{'0' * 32}",
                        headers={"Authorization": f"Bearer {key}"}) as resp:
        return resp.status


async def reloads(http: aiohttp.ClientSession, base: str, result: str) -> float:
    async with http.get(f"{base}/metrics") as resp:
        samples = metric_samples(await resp.text())
    return metric_value(samples, "smsagg_config_reloads_total", result=result) or 0.0


async def test_sighup_reloads_accounts_routes_and_providers(tmp_path: Path) -> None:
    sim = Smsc(SmscProfile())
    sim2 = Smsc(SmscProfile())
    await sim.start()
    await sim2.start()
    config = tmp_path / "smsagg.toml"
    store = tmp_path / "smsagg.db"
    config.write_text(
        head(store) + account("shop", "shop-key") + account("bank", "bank-key", "bank")
        + provider("sim", sim.port) + route("+383", "sim") + route("+49", "sim"))
    try:
        async with daemon(config) as d, aiohttp.ClientSession() as http:
            await sim.wait_until(lambda: sum(s.bound for s in sim.bind_stats.values()) == 2,
                                 DEADLINE)
            assert (await send(http, d.base, "bank-key", GERMANY))["provider"] == "sim"
            bank_session = await open_client("127.0.0.1", d.smpp_port, mode=BindMode.TRANSCEIVER,
                                             system_id="bank", password="pw-bank")
            binds_before = sim.binds_total
            assert binds_before == 2

            # Add "newco", remove "bank", send +49 to a new provider; a change to a setting
            # that needs a restart is reported, not applied.
            config.write_text(
                head(store, max_body=1000) + account("shop", "shop-key")
                + account("newco", "newco-key") + provider("sim", sim.port)
                + provider("sim2", sim2.port) + route("+383", "sim") + route("+49", "sim2"))
            d.proc.send_signal(signal.SIGHUP)

            async def newco_works() -> bool:
                return await status_for_key(http, d.base, "newco-key") == 404

            await poll(newco_works, "the new account's key to work")
            reloaded = await d.wait_event("config_reloaded")
            assert reloaded["providers_added"] == ["sim2"]
            assert reloaded["providers_kept"] == ["sim"]
            assert reloaded["providers_changed"] == [] and reloaded["providers_removed"] == []
            ignored = await d.wait_event("config_reload_ignored")
            assert ignored["keys"] == ["http.max_body_bytes"]
            assert await status_for_key(http, d.base, "bank-key") == 401
            # The removed account's SMPP session is unbound: its credentials are gone.
            await asyncio.wait_for(asyncio.shield(bank_session.closed), DEADLINE)
            with pytest.raises(BindError):
                await open_client("127.0.0.1", d.smpp_port, mode=BindMode.TRANSCEIVER,
                                  system_id="bank", password="pw-bank")

            germany = await send(http, d.base, "newco-key", GERMANY)
            assert germany["provider"] == "sim2"
            assert any(s.destination == GERMANY.lstrip("+") for s in sim2.received)
            kosovo = await send(http, d.base, "shop-key", KOSOVO)
            assert kosovo["provider"] == "sim"
            # The unchanged provider kept its binds: none was made again, both still bound.
            assert sim.binds_total == binds_before
            assert sum(s.bound for s in sim.bind_stats.values()) == 2
            assert await reloads(http, d.base, "ok") == 1

            # A broken file: logged, counted, and the running configuration stays.
            config.write_text(head(store) + account("shop", "shop-key")
                              + provider("sim", sim.port) + route("+383", "nope"))
            d.proc.send_signal(signal.SIGHUP)
            failed = await d.wait_event("config_reload_failed")
            assert any("nope" in p for p in failed["problems"])
            assert await reloads(http, d.base, "error") == 1
            assert await status_for_key(http, d.base, "newco-key") == 404
            assert (await send(http, d.base, "newco-key", GERMANY))["provider"] == "sim2"
            config.write_text("this is [not toml")
            d.proc.send_signal(signal.SIGHUP)
            await d.wait_event("config_reload_failed", 2)
            assert await status_for_key(http, d.base, "newco-key") == 404
            assert sim.binds_total == binds_before

            d.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(d.proc.wait(), DEADLINE) == 0
    finally:
        await sim.stop()
        await sim2.stop()


async def test_a_changed_provider_is_rebound_and_a_removed_one_drained(tmp_path: Path) -> None:
    """In process: a provider whose settings changed gets new binds after the old ones drain;
    one that is no longer configured unbinds; an unchanged one is left alone."""
    async with running(tmp_path, SmscProfile(latency=0.05)) as r:
        other = Smsc(SmscProfile())
        await other.start()
        try:
            base = make_config(tmp_path / "smsagg.db", r.smsc.port)

            def with_providers(*providers: dict[str, Any]) -> Any:
                data: dict[str, Any] = {
                    "store": {"path": str(tmp_path / "smsagg.db")},
                    "accounts": [{"name": "shop", "api_key": "shop-key"}],
                    "providers": list(providers),
                    "routes": [{"prefixes": ["*"], "providers": [p["name"] for p in providers]}],
                }
                return dataclasses.replace(parse_config(data, "<reload>"), http=base.http)

            sim = {"name": "sim", "host": "127.0.0.1", "port": r.smsc.port,
                   "system_id": "smsagg", "password": "pw", "binds": 2, "window": 10,
                   "max_tps": 2000, "reconnect_min": 0.05, "reconnect_max": 0.5}
            extra = {**sim, "name": "extra", "port": other.port, "binds": 1}
            assert await r.app.reload(with_providers(sim, extra))
            await wait_for(lambda: other.binds_total == 1, what="extra bound")
            assert r.smsc.binds_total == 2  # unchanged: same pool, same binds
            old_pool = r.app.pools["sim"]

            # Messages in flight while "sim" changes (window 10 -> 5) are not lost.
            ids = await r.post_many(30, first=600000, tag="c")
            assert await r.app.reload(with_providers({**sim, "window": 5}))
            await wait_for(lambda: r.app.pools.get("sim") not in (None, old_pool),
                           what="new sim pool")
            await wait_for(lambda: r.app.pools["sim"].binds_up == 2, what="new sim binds")
            assert r.smsc.binds_total == 4
            assert r.app.pools["sim"].config.window == 5 and not old_pool.binds_up
            assert "extra" not in r.app.pools
            await wait_for(lambda: not any(s.bound for s in other.bind_stats.values()),
                           what="extra unbound")
            for mid in ids:
                await r.wait_status(mid, {"delivered"})
            assert r.app.config.provider("sim").window == 5
            assert [p.name for p in r.app.config.providers] == ["sim"]
        finally:
            await other.stop()

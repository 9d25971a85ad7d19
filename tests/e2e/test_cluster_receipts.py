"""Two smsagg instances on one PostgreSQL database, one bind each to an SMSC that sends every
receipt on any bind of the system_id (`receipts_any_bind`): receipts for one instance's submits
reach the other, and every one is matched there."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import aiohttp

from aggregator.app import App
from aggregator.config import with_overrides
from simulator.cli import add_smsc_args, smsc_profile
from simulator.smsc import Smsc, SmscProfile
from tests.helpers import AUTH, DEADLINE, make_config, registry_value, wait_for

COUNT = 100


def unmatched() -> float:
    return registry_value("smsagg_receipts_unmatched_total", provider="sim")


async def test_receipts_on_any_bind_are_all_matched(tmp_path: Path, pg_dsn: str) -> None:
    smsc = Smsc(SmscProfile(receipts_any_bind=True))
    await smsc.start()
    apps: list[App] = []
    before = unmatched()
    try:
        for name in ("a", "b"):
            # binds = 2 for the cluster: one each ([[providers]] limits are shared out).
            config = make_config(tmp_path / f"{name}.db", smsc.port, binds=2,
                                 store_opts={"backend": "postgres", "dsn": pg_dsn})
            app = App(with_overrides(config, instance={"name": name}))
            await app.start()
            apps.append(app)
        await wait_for(lambda: all(p.binds_up == 1 for a in apps for p in a.pools.values()),
                       what="binds up")
        async with aiohttp.ClientSession(headers=AUTH) as http:

            async def post(i: int) -> str:
                app = apps[i % 2]
                async with http.post(f"http://127.0.0.1:{app.http_port}/v1/messages",
                                     json={"to": f"+38344{500000 + i}", "from": "ACME",
                                           "text": f"r{i}"}) as r:
                    assert r.status == 202
                    message_id: str = (await r.json())["id"]
                    return message_id

            ids = await asyncio.gather(*(post(i) for i in range(COUNT)))
            counts = await until_final(apps[0], COUNT)
    finally:
        for app in apps:
            await app.stop(drain_seconds=1.0)
        await smsc.stop()

    assert counts == {"delivered": COUNT}, counts
    assert len(set(ids)) == COUNT
    assert smsc.receipts_elsewhere >= COUNT // 4  # about half crossed to the other instance
    assert unmatched() == before


async def until_final(app: App, count: int) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        counts = await app.store.count_by_status()
        if counts.get("delivered", 0) == count or loop.time() > deadline:
            return counts
        await asyncio.sleep(0.05)


def test_smsc_option_receipts_any_bind_sets_the_profile() -> None:
    parser = argparse.ArgumentParser()
    add_smsc_args(parser)

    assert smsc_profile(parser.parse_args(["--receipts-any-bind"])).receipts_any_bind
    assert not smsc_profile(parser.parse_args([])).receipts_any_bind

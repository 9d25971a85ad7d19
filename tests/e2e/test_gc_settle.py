"""Once started, the daemon freezes its start-up objects out of garbage collection
(aggregator/gctune.py): the gauge shows what was frozen, the log says so once, and the
daemon still relays a message with its receipt."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from simulator.smsc import Smsc, SmscProfile
from tests.helpers import (
    AUTH,
    daemon,
    delivered,
    metric_samples,
    metric_value,
    wait_async,
    write_daemon_config,
)


async def test_daemon_settles_its_heap_after_start(tmp_path: Path) -> None:
    smsc = Smsc(SmscProfile(latency=0.001))
    await smsc.start()
    config = tmp_path / "smsagg.toml"
    log = tmp_path / "daemon.log"
    write_daemon_config(config, tmp_path / "smsagg.db", smsc.port)
    try:
        async with daemon(config, log) as (_, base), \
                aiohttp.ClientSession(headers=AUTH) as http:
            async with http.get(f"{base}/metrics") as r:
                frozen = metric_value(metric_samples(await r.text()),
                                      "smsagg_gc_frozen_objects")
            async with http.post(f"{base}/v1/messages",
                                 json={"to": "+38344123456", "from": "ACME",
                                       "text": "hi"}) as r:
                assert r.status == 202
                message_id = (await r.json())["id"]
            await wait_async(lambda: delivered(http, base, [message_id]))
    finally:
        await smsc.stop()
    assert frozen is not None and frozen > 10_000  # modules and tables, at the least
    settled = [json.loads(line) for line in log.read_text().splitlines()
               if '"gc_settled"' in line]
    assert len(settled) == 1, settled

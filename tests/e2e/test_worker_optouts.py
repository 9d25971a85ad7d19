"""An ingress worker reads the accept-time opt-out from the store itself (on SQLite its own
WAL connection, store/factory.py's worker_store): an opt-out stored a moment ago refuses the
next message at once."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from simulator.smsc import Smsc, SmscProfile
from tests.helpers import AUTH, daemon, write_daemon_config

NUMBER = "+38344810999"


async def test_a_worker_refuses_at_once_what_the_daemon_stored_as_opted_out(
        tmp_path: Path) -> None:
    smsc = Smsc(SmscProfile())
    await smsc.start()
    config = tmp_path / "smsagg.toml"
    write_daemon_config(config, tmp_path / "smsagg.db", smsc.port, max_tps=1000, http_workers=1)
    try:
        async with daemon(config) as (_, base), aiohttp.ClientSession(headers=AUTH) as http:
            async with http.post(f"{base}/v1/messages", json={
                    "to": NUMBER, "from": "ACME", "text": "before"}) as r:
                assert r.status == 202, await r.text()
            async with http.post(f"{base}/v1/optouts", json={"number": NUMBER,
                                                              "scope": "all"}) as r:
                assert r.status == 201, await r.text()
            async with http.post(f"{base}/v1/messages", json={
                    "to": NUMBER, "from": "ACME", "text": "after"}) as r:
                assert r.status == 403, await r.text()
                assert (await r.json())["error"]["code"] == "opted_out"
    finally:
        await smsc.stop()

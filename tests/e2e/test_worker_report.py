"""An ingress worker sends its metrics text with every REPORT_EVERY-th status call (ingress/rpc.py)
and before a scrape it serves: a scrape through the worker shows its accepts at once, not a
report later; status calls without a text keep the daemon's last copy."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from aggregator.ingress.rpc import REPORT_EVERY, STATUS_EVERY
from simulator.smsc import Smsc, SmscProfile
from tests.helpers import AUTH, daemon, metric_samples, metric_value, write_daemon_config


async def test_a_scrape_through_the_worker_shows_its_accepts_at_once(tmp_path: Path) -> None:
    assert REPORT_EVERY * STATUS_EVERY <= 2.0  # how stale another process's view may be
    smsc = Smsc(SmscProfile())
    await smsc.start()
    try:
        config = tmp_path / "smsagg.toml"
        write_daemon_config(config, tmp_path / "smsagg.db", smsc.port, max_tps=1000,
                            http_workers=1)
        async with daemon(config, tmp_path / "daemon.log") as (_, base), \
                aiohttp.ClientSession(headers=AUTH) as http:
            for round_ in range(1, 4):
                for i in range(5):
                    async with http.post(f"{base}/v1/messages", json={
                            "to": f"+38344{850000 + 10 * round_ + i}", "from": "ACME",
                            "text": "r"}) as r:
                        assert r.status == 202, await r.text()
                # No waiting: the worker serving this scrape reports first.
                async with http.get(f"{base}/metrics") as r:
                    value = metric_value(metric_samples(await r.text()),
                                         "smsagg_worker_direct_accepts_total",
                                         backend="sqlite")
                assert value == 5 * round_
    finally:
        await smsc.stop()

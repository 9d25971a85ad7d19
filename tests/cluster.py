"""The configuration of one instance of a test cluster: smsagg on a shared PostgreSQL store,
one provider (the simulator SMSC), short retries and reconnects; and the messages' final
states once the cluster has settled."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import aiohttp

from tests.helpers import AUTH

GRACE = 3.0  # seconds for the receipts of the last submits


def cluster_config(path: Path, dsn: str, instance: str, smsc_port: int, *, lease: float,
                   binds: int, window: int = 10, max_tps: float = 100,
                   smpp_port: int | None = None) -> Path:
    """Write DIR/smsagg.toml for `instance` (DIR is made); with `smpp_port`, an [smpp] server
    there and SMPP credentials (shop/secret) for the account."""
    path.mkdir()
    smpp = f'[smpp]\nlisten = "127.0.0.1:{smpp_port}"\n' if smpp_port is not None else ""
    credentials = 'system_id = "shop"\npassword = "secret"\n' if smpp_port is not None else ""
    config = path / "smsagg.toml"
    config.write_text(f"""
[http]
listen = "127.0.0.1:0"
{smpp}[store]
backend = "postgres"
dsn = "{dsn}"
lease_seconds = {lease}
[instance]
name = "{instance}"
[messages]
retry_min = 0.05
retry_max = 0.5
[[accounts]]
name = "shop"
api_key = "{AUTH['Authorization'].split()[1]}"
{credentials}[[providers]]
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
[[routes]]
prefixes = ["*"]
providers = ["sim"]
""")
    return config


async def final_states(http: aiohttp.ClientSession, base: str, ids: set[str], *,
                       deadline: float) -> Counter[str]:
    """Every message's status once all are delivered, or none has waited to be sent for
    GRACE seconds (receipts for the submitted ones had time to come), or at the deadline."""
    end = time.monotonic() + deadline
    states: dict[str, str] = dict.fromkeys(ids, "accepted")
    settled_at: float | None = None
    while True:
        for mid in [m for m, state in states.items() if state != "delivered"]:
            async with http.get(f"{base}/v1/messages/{mid}") as r:
                states[mid] = (await r.json())["status"]
        now = time.monotonic()
        if all(state == "delivered" for state in states.values()) or now > end:
            return Counter(states.values())
        if any(state in ("accepted", "queued", "scheduled") for state in states.values()):
            settled_at = None
        elif settled_at is None:
            settled_at = now
        elif now - settled_at > GRACE:
            return Counter(states.values())
        await asyncio.sleep(0.2)

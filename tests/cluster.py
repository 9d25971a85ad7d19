"""The configuration of one instance of a test cluster: smsagg on a shared PostgreSQL store,
one provider (the simulator SMSC), short retries and reconnects; and the messages' final
states once the cluster has settled."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from simulator.harness import QUICK_RECONNECT, QUICK_RETRIES, daemon_config, write_config
from tests.helpers import SHOP

GRACE = 3.0  # seconds for the receipts of the last submits


def cluster_config(path: Path, dsn: str, instance: str, smsc_port: int, *, lease: float,
                   binds: int, window: int = 10, max_tps: float = 100,
                   smpp_port: int | None = None) -> Path:
    """Write DIR/smsagg.toml for `instance` (DIR is made); with `smpp_port`, an [smpp] server
    there and SMPP credentials (shop/secret) for the account."""
    path.mkdir()
    account = dict(SHOP)
    sections: dict[str, dict[str, Any]] = {"instance": {"name": instance},
                                           "messages": QUICK_RETRIES}
    if smpp_port is not None:
        sections["smpp"] = {"listen": f"127.0.0.1:{smpp_port}"}
        account.update(system_id="shop", password="secret")
    return write_config(path / "smsagg.toml", daemon_config(
        smsc_port, {"backend": "postgres", "dsn": dsn, "lease_seconds": lease}, [account],
        provider={"binds": binds, "window": window, "max_tps": max_tps, **QUICK_RECONNECT},
        sections=sections))


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

"""deploy/smsagg-cluster.toml (docker compose and Kubernetes) really runs two instances on one
PostgreSQL database: the DSN from SMSAGG_DSN, a message accepted by either instance delivered,
its receipt matched whichever instance's bind it arrives on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import Start, daemon

CLUSTER_TOML = Path(__file__).resolve().parents[2] / "deploy" / "smsagg-cluster.toml"
MESSAGES = 20
DEADLINE = 30.0


def _local(text: str, port_a: int, port_b: int, name: str) -> str:
    """The shipped file with loopback addresses; [instance] name given, as both instances
    share this machine's host name (their default name)."""
    for old, new in (('listen = "0.0.0.0:8080"', 'listen = "127.0.0.1:0"'),
                     ('host = "smsc"', 'host = "127.0.0.1"'),
                     ("port = 2776", f"port = {port_a}"), ("port = 2777", f"port = {port_b}")):
        assert old in text, old
        text = text.replace(old, new)
    return text + f'\n[instance]\nname = "{name}"\n'


async def test_two_instances_from_the_shipped_cluster_config(
        tmp_path: Path, start_smsc: Start, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    operator_a = await start_smsc(receipts_any_bind=True)
    operator_b = await start_smsc(receipts_any_bind=True)
    monkeypatch.setenv("SMSAGG_DSN", pg_dsn)  # [store] dsn_env; the daemons inherit it
    text = CLUSTER_TOML.read_text(encoding="utf-8")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "smsagg.toml").write_text(
            _local(text, operator_a.port, operator_b.port, name), encoding="utf-8")
    async with daemon(tmp_path / "a" / "smsagg.toml") as (_, a), \
            daemon(tmp_path / "b" / "smsagg.toml") as (_, b), \
            aiohttp.ClientSession(headers={"Authorization": "Bearer demo-key"}) as http:
        ids = []
        for i in range(MESSAGES):
            async with http.post(f"{(a, b)[i % 2]}/v1/messages", json={
                    "to": "+38344123456", "from": "TEST", "text": f"hello {i}"}) as r:
                assert r.status == 202, await r.text()
                ids.append((await r.json())["id"])
        statuses: dict[str, str] = {}
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            statuses.clear()
            for message_id in ids:  # every message readable on either instance
                async with http.get(f"{(b, a)[len(statuses) % 2]}/v1/messages/{message_id}") as r:
                    statuses[message_id] = (await r.json())["status"]
            if set(statuses.values()) == {"delivered"}:
                break
            await asyncio.sleep(0.2)
    assert set(statuses.values()) == {"delivered"}, statuses
    # Some receipts reached the instance that did not submit the message.
    assert operator_a.receipts_elsewhere + operator_b.receipts_elsewhere > 0

"""message_id_format = "decimal": ids that fit in 64 bits for gateways with a numeric
msg-id-type, in submit_sm_resp, in that client's receipts and in the HTTP API; hex stays the
default."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aggregator.config import ConfigError
from aggregator.model import DecimalIds
from simulator.smsc import Smsc, SmscProfile
from tests.helpers import (
    AUTH,
    daemon,
    make_config,
    post_messages,
    running,
    write_daemon_config,
)
from tests.smpp_helpers import smpplib_client

SHOP = {"system_id": "shop", "password": "secret", "message_id_format": "decimal"}
BANK = {"system_id": "bank", "password": "secret"}
MOBILE = "38344123456"


def _node(message_id: str) -> int:
    return (int(message_id) >> 15) & 0x7F


def test_decimal_ids_are_unique_positive_and_fit_in_63_bits() -> None:
    now = [1_800_000_000.0]
    ids = DecimalIds(node=5, clock=lambda: now[0])
    made = [ids.next() for _ in range(40_000)]  # more than one millisecond's sequence
    now[0] -= 3600  # the clock is set back: still increasing
    made += [ids.next() for _ in range(10)]
    numbers = [int(x) for x in made]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert all(0 < n < 2**63 and str(n) == x for n, x in zip(numbers, made, strict=True))
    assert {_node(x) for x in made} == {5}
    other = DecimalIds(node=6, clock=lambda: now[0])
    assert not {other.next() for _ in range(1000)} & set(made)
    with pytest.raises(ValueError):
        DecimalIds(node=128)


def test_config_refuses_an_unknown_id_format(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        make_config(tmp_path / "db", 1, shop={"message_id_format": "octal"})
    assert exc.value.problems == [
        "<test>: accounts[0].message_id_format: must be one of 'hex', 'decimal', got 'octal'"]


def _smpplib_run(port: int, system_id: str, n: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Submit n messages asking for receipts; the submit_sm_resp ids and, per receipt, its
    receipted_message_id and text."""
    import smpplib.consts

    client = smpplib_client(port)
    sent: list[str] = []
    receipts: list[tuple[str, str]] = []
    client.set_message_sent_handler(lambda pdu: sent.append(pdu.message_id.decode()))

    def on_deliver(pdu: Any) -> None:
        receipts.append((pdu.receipted_message_id.decode(), pdu.short_message.decode()))

    client.set_message_received_handler(on_deliver)
    client.connect()
    try:
        client.bind_transceiver(system_id=system_id, password="secret")
        for i in range(n):
            client.send_message(
                source_addr_ton=smpplib.consts.SMPP_TON_ALNUM, source_addr="ACME",
                dest_addr_ton=smpplib.consts.SMPP_TON_INTL, destination_addr=MOBILE,
                short_message=f"hello {i}".encode(), registered_delivery=True)
        while len(sent) < n or len(receipts) < n:
            client.read_once()
        client.unbind()
    finally:
        client.disconnect()
    return sent, receipts


async def test_decimal_ids_over_smpp_with_smpplib(tmp_path: Path) -> None:
    async with running(tmp_path, SmscProfile(), smpp={}, shop=SHOP, bank=BANK) as run:
        assert run.app.smpp is not None
        port = run.app.smpp.port
        sent, receipts = await asyncio.to_thread(_smpplib_run, port, "shop", 5)
        assert len(set(sent)) == 5
        for message_id in sent:
            assert re.fullmatch(r"[1-9][0-9]{0,18}", message_id) and int(message_id) < 2**63
            assert _node(message_id) == 0  # made by the daemon
        assert {r for r, _ in receipts} == set(sent)
        for receipted, text in receipts:
            assert text.startswith(f"id:{receipted} ") and "stat:DELIVRD" in text
        for message_id in sent:  # the HTTP API finds them by that id
            status, view = await run.get(message_id)
            assert status == 200 and view["id"] == message_id
            assert view["status"] == "delivered"
        # Another account keeps the default: 32 hex characters.
        hex_sent, hex_receipts = await asyncio.to_thread(_smpplib_run, port, "bank", 1)
        assert re.fullmatch(r"[0-9a-f]{32}", hex_sent[0])
        assert hex_receipts[0][0] == hex_sent[0]


async def test_decimal_ids_over_http_from_ingress_workers(tmp_path: Path) -> None:
    smsc = Smsc(SmscProfile())
    await smsc.start()
    config = tmp_path / "smsagg.toml"
    write_daemon_config(config, tmp_path / "smsagg.db", smsc.port, http_workers=2)
    text = config.read_text()
    config.write_text(text.replace('api_key = "shop-key"\n',
                                   'api_key = "shop-key"\nmessage_id_format = "decimal"\n'))
    try:
        async with daemon(config) as (_proc, base), aiohttp.ClientSession(headers=AUTH) as http:
            ids = await post_messages(http, base, 40, first=820000, tag="d")
            assert len(set(ids)) == 40
            assert all(re.fullmatch(r"[1-9][0-9]{0,18}", x) for x in ids)
            assert {_node(x) for x in ids} <= {1, 2}  # a worker's number in each
            async with http.get(f"{base}/v1/messages/{ids[0]}") as r:
                assert r.status == 200 and (await r.json())["id"] == ids[0]
    finally:
        await smsc.stop()

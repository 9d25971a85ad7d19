"""Destinations without a country code: an account's default_country reads them as national
numbers (HTTP "to" digits, SMPP TON 0/2); without one they are refused with a clear error."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from aggregator.config import ConfigError
from aggregator.numbers import NumberError, parse_destination
from tests.helpers import make_config, running
from tests.smpp_helpers import smpplib_client

SHOP = {"system_id": "shop", "password": "secret", "default_country": "XK"}
BANK = {"system_id": "bank", "password": "secret"}
NATIONAL = "044123456"  # Kosovo mobile, national form (trunk prefix 0)
E164 = "+38344123456"


def test_config_takes_an_iso_country_code(tmp_path: Path) -> None:
    config = make_config(tmp_path / "db", 1, shop={"default_country": "xk"})
    assert config.accounts[0].default_country == "XK"
    assert config.accounts[1].default_country is None


@pytest.mark.parametrize("value", ["QQ", "Kosovo", "", 383])
def test_config_refuses_an_unknown_country_code(tmp_path: Path, value: Any) -> None:
    with pytest.raises(ConfigError) as exc:
        make_config(tmp_path / "db", 1, shop={"default_country": value})
    [problem] = exc.value.problems
    assert problem.startswith("<test>: accounts[0].default_country: must be an ISO 3166 alpha-2")


def test_national_number_with_a_default_country() -> None:
    assert parse_destination(NATIONAL, "XK").e164 == E164
    assert parse_destination("044 123-456", "XK").e164 == E164
    assert parse_destination(E164, "KZ").e164 == E164  # international stays international
    assert parse_destination("0038344123456", "KZ").e164 == E164
    with pytest.raises(NumberError, match="default_country"):
        parse_destination(NATIONAL)
    with pytest.raises(NumberError, match="too short for XK"):
        parse_destination("0441", "XK")


async def test_http_national_number(tmp_path: Path) -> None:
    async with running(tmp_path, shop=SHOP) as run:
        status, body = await run.post({"to": NATIONAL, "from": "Shop", "text": "hi"})
        assert status == 202, body
        _, view = await run.get(body["id"])
        assert view["to"] == E164
        # bank has no default_country: refused, saying why.
        async with run.http.post(f"{run.base}/v1/messages",
                                 headers={"Authorization": "Bearer bank-key"},
                                 json={"to": NATIONAL, "from": "Bank", "text": "hi"}) as r:
            assert r.status == 422
            error = (await r.json())["error"]
        assert error["code"] == "invalid_number"
        assert "default_country" in error["message"]


def _smpplib_submits(port: int, system_id: str,
                     submits: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """(status, message_id) of each submit_sm (dest TON, destination_addr), in order."""
    import smpplib.consts

    client = smpplib_client(port)
    answers: list[tuple[int, str]] = []
    client.set_message_sent_handler(
        lambda pdu: answers.append((int(pdu.status), (pdu.message_id or b"").decode())))
    client.set_error_pdu_handler(lambda pdu: None)  # the status is read from the answer
    client.connect()
    try:
        client.bind_transceiver(system_id=system_id, password="secret")
        for ton, dest in submits:
            client.send_message(
                source_addr_ton=smpplib.consts.SMPP_TON_ALNUM, source_addr="ACME",
                dest_addr_ton=ton, dest_addr_npi=smpplib.consts.SMPP_NPI_ISDN,
                destination_addr=dest, short_message=b"hello", registered_delivery=False)
        while len(answers) < len(submits):
            client.read_once()
        client.unbind()
    finally:
        client.disconnect()
    return answers


async def test_smpp_national_numbers_with_smpplib(tmp_path: Path) -> None:
    async with running(tmp_path, smpp={}, shop=SHOP, bank=BANK) as run:
        assert run.app.smpp is not None
        port = run.app.smpp.port
        shop = await asyncio.to_thread(_smpplib_submits, port, "shop", [
            (0, NATIONAL),  # TON unknown: national, default_country XK
            (2, NATIONAL),  # TON national
            (1, E164[1:]),  # TON international with digits: international
            (0, E164),  # a '+' is international whatever the TON
        ])
        assert [status for status, _ in shop] == [0, 0, 0, 0]
        for _, message_id in shop:
            _, view = await run.get(message_id)
            assert view["to"] == E164
        bank = await asyncio.to_thread(_smpplib_submits, port, "bank", [
            (0, NATIONAL), (2, NATIONAL), (1, E164[1:])])
        assert [status for status, _ in bank] == [0x0B, 0x0B, 0]  # ESME_RINVDSTADR

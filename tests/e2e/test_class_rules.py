"""Issue 19 item 1: content bans hold for every class, and a message's class is decided by the
account's configuration when the request leaves it out (HTTP default_class, SMPP service_type /
smpp_class), so marketing cannot skip the rules by omission."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from aggregator.config import ConfigError
from aggregator.policy.profiles import bundled_profiles
from aggregator.policy.rules import Allow, PolicyInput, Reject, evaluate
from tests.helpers import DEADLINE, make_config, running
from tests.smpp_helpers import smpplib_client

XK = "+38344123456"
PROFILES = bundled_profiles()
NOON = datetime(2026, 1, 14, 11, 0, tzinfo=UTC)  # inside both marketing windows


def item(region: str, text: str, message_class: str) -> PolicyInput:
    return PolicyInput(region=region, number_type="mobile", message_class=message_class,
                       sender="Shop", sender_kind="alphanumeric", text=text, account="acme",
                       registered_senders={"KZ": ["Shop"]}, opted_out=False)


@pytest.mark.parametrize(("region", "text", "rule"), [
    ("XK", "Your casino payout is confirmed", "forbidden_category:gambling"),
    ("XK", "Order 1234: your Viagra ships today", "forbidden_category:pharmaceutical"),
    ("KZ", "Ваш выигрыш в казино зачислен", "forbidden_category:gambling"),
    ("KZ", "Голосуйте за нас завтра", "forbidden_category:political"),
])
@pytest.mark.parametrize("message_class", ["transactional", "marketing"])
def test_forbidden_categories_hold_for_every_class(region: str, text: str, rule: str,
                                                   message_class: str) -> None:
    verdict = evaluate(PROFILES[region], item(region, text, message_class), NOON)
    assert isinstance(verdict, Reject), verdict
    assert (verdict.status, verdict.code, verdict.rule) == (422, "content_rejected", rule)


def test_style_rules_stay_marketing_only() -> None:
    text = "YOUR CODE IS READY NOW!!!! see bit.ly/x"
    assert evaluate(PROFILES["XK"], item("XK", text, "transactional"), NOON) == Allow()
    assert isinstance(evaluate(PROFILES["XK"], item("XK", text, "marketing"), NOON), Reject)


def test_config_checks_the_class_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        make_config(tmp_path / "x.db", 1, shop={
            "default_class": "promo", "smpp_class": "bulk",
            "service_types": {"TOOLONG": "marketing", "MKT": "ads"}})
    text = str(err.value)
    for key in ("default_class", "smpp_class", "TOOLONG", "MKT"):
        assert key in text, key
    config = make_config(tmp_path / "x.db", 1, shop={"default_class": "marketing",
                                                   "service_types": {"MKT": "marketing"}})
    shop = config.accounts[0]
    assert (shop.default_class, shop.smpp_class, dict(shop.service_types)) == (
        "marketing", None, {"MKT": "marketing"})
    assert config.accounts[1].default_class == "transactional"


async def test_http_without_class_takes_the_accounts_default_class(tmp_path: Path) -> None:
    async with running(tmp_path, shop={"default_class": "marketing"}) as r:
        assert r.app.acceptor.policy is not None
        r.app.acceptor.policy.clock = lambda: NOON.timestamp()
        await r.app.store.add_optout("shop", XK, "test", NOON.timestamp())
        body = {"to": XK, "from": "ACME", "text": "Our new offer"}
        status, data = await r.post(body)
        assert (status, data["error"]["code"]) == (403, "opted_out")  # marketing by default
        status, data = await r.post({**body, "class": "transactional"})  # said explicitly
        assert status == 202
        assert (await r.get(data["id"]))[1]["class"] == "transactional"
        status, data = await r.post({**body, "to": "+38344123457"})
        assert status == 202
        assert (await r.get(data["id"]))[1]["class"] == "marketing"


async def test_smpp_class_from_service_type(tmp_path: Path) -> None:
    """An independent SMPP client (smpplib): service_type MKT is marketing, so the opt-out holds;
    without it the account's default (transactional) applies; banned content fails either way."""
    pytest.importorskip("smpplib")
    import smpplib.consts
    import smpplib.exceptions

    shop = {"system_id": "shop", "password": "secret", "service_types": {"MKT": "marketing"}}
    async with running(tmp_path, smpp={}, shop=shop) as r:
        assert r.app.smpp is not None
        await r.app.store.add_optout("shop", XK, "test", NOON.timestamp())
        assert r.app.acceptor.policy is not None
        r.app.acceptor.policy.clock = lambda: NOON.timestamp()
        port = r.app.smpp.port

        def client_run() -> list[int]:
            client = smpplib_client(port)
            client.connect()
            client.bind_transceiver(system_id="shop", password="secret")
            statuses: list[int] = []
            for service_type, text in (("MKT", "Our new offer"), ("", "Our new offer"),
                                       ("", "Your casino payout")):
                pdu = client.send_message(
                    service_type=service_type,
                    source_addr_ton=smpplib.consts.SMPP_TON_ALNUM, source_addr="ACME",
                    dest_addr_ton=smpplib.consts.SMPP_TON_INTL, destination_addr=XK[1:],
                    short_message=text.encode(), data_coding=0)
                try:
                    resp = client.read_pdu()
                    statuses.append(resp.status)
                except smpplib.exceptions.PDUError as exc:
                    statuses.append(exc.args[1])
                del pdu
            client.unbind()
            client.disconnect()
            return statuses

        statuses = await asyncio.wait_for(asyncio.to_thread(client_run), DEADLINE * 2)
    # ESME_RSUBMITFAIL (0x45) for opted_out and content_rejected; 0 accepted.
    assert statuses == [0x45, 0, 0x45]



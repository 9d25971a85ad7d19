"""Per-type opt-outs (issue 19 item 6; the Kosovo guide: "Maintain separate opt-out lists for
various message types"), end to end over HTTP, SMPP (smpplib as an independent client) and the
simulator's handsets: an opt-out of scope "marketing" stops marketing and lets transactional
through; one of scope "all" stops both, at accept and at send time; a handset's STOP records
"all" and its confirmation still arrives; removal records keep the scope; the API validates it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from simulator.handsets import Handset, HandsetBook
from simulator.smsc import SmscProfile
from tests.helpers import DEADLINE, Running, metric_samples, metric_value, running, wait_for
from tests.smpp_helpers import smpplib_client

XK = "+38344123456"
XK2 = "+38344123457"
SHOP_KEY = {"Authorization": "Bearer shop-key"}
SMPP_SUBMITFAIL = 0x45


async def optout(r: Running, number: str, scope: str | None = None,
                 body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """POST /v1/optouts: {"number"}, with "scope" when given, or `body` as it is."""
    if body is None:
        body = {"number": number} if scope is None else {"number": number, "scope": scope}
    async with r.http.post(f"{r.base}/v1/optouts", json=body, headers=SHOP_KEY) as resp:
        return resp.status, await resp.json()


async def send(r: Running, number: str, message_class: str) -> tuple[int, dict[str, Any]]:
    return await r.post({"to": number, "from": "ACME", "text": "Your order shipped",
                         "class": message_class})


async def refusals(r: Running, **labels: str) -> float:
    """smsagg_optout_refusals_total (the registry is the test process's: compare deltas)."""
    async with r.http.get(f"{r.base}/metrics") as resp:
        return metric_value(metric_samples(await resp.text()), "smsagg_optout_refusals_total",
                            **labels) or 0.0


def submits_to(r: Running, number: str) -> int:
    return sum(1 for s in r.smsc.received if s.destination == number.lstrip("+"))


async def test_marketing_scope_blocks_marketing_but_lets_transactional_through(
        tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        before = await refusals(r, scope="marketing", message_class="marketing", stage="accept")
        status, data = await optout(r, XK, "marketing")
        assert (status, data) == (201, {"number": XK, "created": True, "scope": "marketing"})
        status, data = await send(r, XK, "marketing")
        assert (status, data["error"]["code"]) == (403, "opted_out")
        assert "marketing messages" in data["error"]["message"]
        status, data = await send(r, XK, "transactional")
        assert status == 202, data
        await r.wait_status(data["id"], {"delivered"})  # and at send time too
        assert await refusals(r, scope="marketing", message_class="marketing",
                              stage="accept") == before + 1


async def test_all_scope_blocks_every_class_at_accept(tmp_path: Path) -> None:
    """The account does not set block_transactional_to_opted_out: "all" stops transactional
    anyway. "all" is the API's default."""
    async with running(tmp_path) as r:
        before = await refusals(r, scope="all", message_class="transactional", stage="accept")
        status, data = await optout(r, XK)
        assert (status, data) == (201, {"number": XK, "created": True, "scope": "all"})
        for message_class in ("marketing", "transactional"):
            status, data = await send(r, XK, message_class)
            assert (status, data["error"]["code"]) == (403, "opted_out"), message_class
            assert "opted out of all messages" in data["error"]["message"]
        status, _ = await send(r, XK2, "transactional")  # another number: untouched
        assert status == 202
        assert await refusals(r, scope="all", message_class="transactional",
                              stage="accept") == before + 1


async def test_widening_to_all_stops_transactional_accepted_before_it_at_send_time(
        tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        before = await refusals(r, scope="all", message_class="transactional", stage="send")
        assert (await optout(r, XK, "marketing"))[0] == 201
        assert (await optout(r, XK2, "marketing"))[0] == 201
        r.app.dispatcher.max_in_flight = 0  # nothing is taken until the opt-out is widened
        first = await send(r, XK, "transactional")
        control = await send(r, XK2, "transactional")
        assert first[0] == control[0] == 202
        status, data = await optout(r, XK, "all")
        assert (status, data) == (201, {"number": XK, "created": True, "scope": "all"})
        r.app.dispatcher.max_in_flight = 100
        view = await r.wait_status(first[1]["id"], {"rejected", "submitted", "delivered"})
        assert view["status"] == "rejected"
        assert view["error"].startswith("opted_out: the recipient opted out of all messages")
        await r.wait_status(control[1]["id"], {"delivered"})  # marketing-only: it goes
        assert submits_to(r, XK) == 0
        assert await refusals(r, scope="all", message_class="transactional",
                              stage="send") == before + 1


async def test_smpp_transactional_passes_a_marketing_optout_not_an_all_one(
        tmp_path: Path) -> None:
    """SMPP submits are transactional: an independent client (smpplib) gets ESME_ROK past a
    marketing-only opt-out and ESME_RSUBMITFAIL for an opt-out of everything."""
    pytest.importorskip("smpplib")
    import smpplib.consts
    import smpplib.exceptions

    shop = {"system_id": "shop", "password": "secret"}
    async with running(tmp_path, smpp={}, shop=shop) as r:
        assert r.app.smpp is not None
        port = r.app.smpp.port
        assert (await optout(r, XK, "marketing"))[0] == 201
        assert (await optout(r, XK2, "all"))[0] == 201

        def submit_each() -> list[int]:
            client = smpplib_client(port)
            client.connect()
            try:
                client.bind_transceiver(system_id="shop", password="secret")
                statuses: list[int] = []
                for number in (XK, XK2):
                    try:
                        client.send_message(
                            source_addr_ton=smpplib.consts.SMPP_TON_ALNUM, source_addr="ACME",
                            dest_addr_ton=smpplib.consts.SMPP_TON_INTL,
                            destination_addr=number[1:], short_message=b"your code 1234")
                        statuses.append(int(client.read_pdu().status))
                    except smpplib.exceptions.PDUError as exc:  # a refusal: status in args
                        statuses.append(int(exc.args[1]))
                return statuses
            finally:
                client.disconnect()

        assert await asyncio.to_thread(submit_each) == [0, SMPP_SUBMITFAIL]


async def test_stop_from_a_handset_opts_out_of_everything_and_is_still_confirmed(
        tmp_path: Path) -> None:
    """A handset's STOP records scope "all", widening a marketing-only opt-out; transactional
    is refused from then on, but the confirmation (an answer to the STOP) still goes out."""
    book = HandsetBook({XK: Handset(reply="STOP")})
    async with running(tmp_path, SmscProfile(handsets=book)) as r:
        assert (await optout(r, XK, "marketing"))[0] == 201
        status, data = await send(r, XK, "transactional")  # marketing-only: it goes
        assert status == 202
        await r.wait_status(data["id"], {"delivered"})
        await r.smsc.wait_until(lambda: r.smsc.mo_acked_total >= 1, DEADLINE)
        async with r.http.get(f"{r.base}/v1/optouts", params={"number": XK},
                              headers=SHOP_KEY) as resp:
            entries = (await resp.json())["optouts"]
        assert [(e["number"], e["source"], e["scope"]) for e in entries] == [
            (XK, "mo:sim", "all")]
        status, data = await send(r, XK, "transactional")
        assert (status, data["error"]["code"]) == (403, "opted_out")

        def confirmed() -> bool:
            return any(s.destination == XK[1:] and s.short_message.startswith(b"Jeni cregj")
                       for s in r.smsc.received)

        await wait_for(confirmed, what="the opt-out confirmation reaching the SMSC")


async def test_removal_records_carry_the_scope(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        assert (await optout(r, XK))[0] == 201
        assert (await optout(r, XK2, "marketing"))[0] == 201
        for number in (XK, XK2):
            async with r.http.delete(f"{r.base}/v1/optouts/{number}", params={"by": "ops"},
                                     headers=SHOP_KEY) as resp:
                assert resp.status == 204
        async with r.http.get(f"{r.base}/v1/optouts/removals", headers=SHOP_KEY) as resp:
            removals = (await resp.json())["removals"]
        assert [(x["number"], x["removed_by"], x["scope"]) for x in removals] == [
            (XK, "api:ops", "all"), (XK2, "api:ops", "marketing")]


async def test_api_validates_the_scope_and_never_narrows(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        for bad in ("transactional", "ALL", "", 5, None, ["all"]):
            status, data = await optout(r, XK, body={"number": XK, "scope": bad})
            assert (status, data["error"]["code"]) == (400, "bad_request"), bad
            assert "field 'scope' must be \"all\"" in data["error"]["message"]
        async with r.http.get(f"{r.base}/v1/optouts", headers=SHOP_KEY) as resp:
            assert (await resp.json())["optouts"] == []  # nothing recorded
        assert (await optout(r, XK, "all"))[0] == 201
        # Asking for less is not a removal: the answer names the scope still in force.
        status, data = await optout(r, XK, "marketing")
        assert (status, data) == (200, {"number": XK, "created": False, "scope": "all"})
        status, data = await send(r, XK, "transactional")
        assert status == 403


async def test_the_auto_reply_reference_is_reserved(tmp_path: Path) -> None:
    """Clients cannot mark a message as the daemon's own reply to slip past an opt-out."""
    async with running(tmp_path) as r:
        status, data = await r.post({"to": XK, "from": "ACME", "text": "hi",
                                     "reference": "smsagg:auto_reply"})
        assert (status, data["error"]["code"]) == (400, "bad_request")
        assert "reserved" in data["error"]["message"]

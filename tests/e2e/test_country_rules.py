"""Country rules end to end: each rule's error code at accept time, quiet hours holding marketing
durably, and an opt-out that arrives from a handset as an MO reply."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp import web

from aggregator.app import App
from aggregator.policy.profiles import bundled_profiles
from aggregator.store.base import StoreError
from simulator.handsets import Handset, HandsetBook
from simulator.smsc import SmscProfile
from tests.helpers import Running, make_config, running, serve_app, wait_for

XK = "+38344123456"
KZ = "+77011234567"
SHOP = {"registered_senders": {"KZ": ["ACME"]}}
# 12:00 UTC: inside Kosovo's 09:00-20:00 and Kazakhstan's 09:00-21:00 marketing windows.
NOON = datetime(2026, 11, 23, 12, 0, tzinfo=UTC).timestamp()
# 02:00 UTC tomorrow is 03:00 or 04:00 in Kosovo: outside the window, which opens at 09:00 local.
# Tomorrow, so that the dispatcher (on the real clock) must wait for it.
_TOMORROW = (datetime.now(UTC) + timedelta(days=1)).date()
while _TOMORROW in bundled_profiles()["XK"].calendar.holidays:  # not a day marketing waits out
    _TOMORROW += timedelta(days=1)
NIGHT = datetime.combine(_TOMORROW, time(2, 0), UTC).timestamp()
OPENS = datetime.combine(_TOMORROW, time(9, 0), ZoneInfo("Europe/Belgrade")).timestamp()


def fix_clock(r: Running, ts: float) -> None:
    assert r.app.acceptor.policy is not None
    # The rules' clocks only (at accept and again at sending), so that quiet hours at the
    # real time of the run do not hold the messages.
    r.app.acceptor.policy.clock = lambda: ts
    r.app.send_check.clock = lambda: ts


@pytest.fixture
async def r(tmp_path: Path) -> AsyncIterator[Running]:
    async with running(tmp_path, shop=SHOP) as run:
        fix_clock(run, NOON)
        yield run


async def post(r: Running, **body: Any) -> tuple[int, dict[str, Any]]:
    return await r.post({"to": XK, "from": "ACME", "text": "Our new offer", **body})


async def test_kazakhstan_requires_a_registered_sender(r: Running) -> None:
    status, data = await post(r, to=KZ, **{"from": "OTHER"})
    assert (status, data["error"]["code"]) == (422, "sender_not_registered")
    status, _ = await post(r, to=KZ)
    assert status == 202


async def test_kosovo_allows_unregistered_alphanumeric_but_not_short_codes(r: Running) -> None:
    status, _ = await post(r, **{"from": "ANYBRAND"})
    assert status == 202
    status, data = await post(r, **{"from": "12345"})
    assert (status, data["error"]["code"]) == (422, "sender_type_unsupported")


@pytest.mark.parametrize(
    ("text", "rule"),
    [("Best casino bonus today", "gambling"), ("BUY NOW THE BEST OFFER EVER", "all_caps"),
     ("Great offer!!!!!!", "punctuation"), ("Offer at https://bit.ly/x1", "url_shortener")],
)
async def test_marketing_content_rules(r: Running, text: str, rule: str) -> None:
    status, data = await post(r, text=text, **{"class": "marketing"})
    assert (status, data["error"]["code"]) == (422, "content_rejected")
    assert rule in data["error"]["message"]
    status, _ = await post(r, text=text)  # transactional: only banned categories filtered
    assert status == (422 if rule == "gambling" else 202)


async def test_marketing_frequency_cap(r: Running) -> None:
    status, _ = await post(r, **{"class": "marketing"})
    assert status == 202
    status, data = await post(r, **{"class": "marketing"})  # within 24 h
    assert (status, data["error"]["code"]) == (429, "frequency_capped")


async def test_quiet_hours_schedule_marketing_durably_and_not_transactional(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, shop=SHOP) as r:
        fix_clock(r, NIGHT)
        status, held = await post(r, **{"class": "marketing"})
        assert status == 202 and held["status"] == "scheduled"
        status, now = await post(r, to="+38344123457")
        assert status == 202 and now["status"] == "accepted"
        await r.wait_status(now["id"], {"delivered"})
        _, view = await r.get(held["id"])
        assert view["status"] == "scheduled"
        stored = await r.app.store.get_message("shop", held["id"])
        assert stored is not None
        assert stored.next_attempt_at == OPENS
        config = r.app.config
    # A restart keeps the schedule.
    app = App(config)
    await app.start()
    try:
        again = await app.store.get_message("shop", held["id"])
        assert again is not None and again.status.value == "scheduled"
        assert again.next_attempt_at == OPENS
    finally:
        await app.stop(1.0)


async def test_optout_list_api(r: Running) -> None:
    hdr = {"Authorization": "Bearer shop-key"}
    async with r.http.post(f"{r.base}/v1/optouts", json={"number": XK, "scope": "marketing"},
                           headers=hdr) as resp:
        assert resp.status == 201
    async with r.http.get(f"{r.base}/v1/optouts", headers=hdr) as resp:
        entries = (await resp.json())["optouts"]
    assert [(e["number"], e["source"]) for e in entries] == [(XK, "api")]
    assert entries[0]["created_at"].endswith("Z")
    status, data = await post(r, **{"class": "marketing"})
    assert (status, data["error"]["code"]) == (403, "opted_out")
    status, _ = await post(r)  # transactional still passes
    assert status == 202
    async with r.http.get(f"{r.base}/v1/optouts",  # another account sees its own list
                          headers={"Authorization": "Bearer bank-key"}) as resp:
        assert (await resp.json())["optouts"] == []
    async with r.http.delete(f"{r.base}/v1/optouts/{XK}", headers=hdr) as resp:
        assert resp.status == 204
    async with r.http.delete(f"{r.base}/v1/optouts/{XK}", headers=hdr) as resp:
        assert resp.status == 404


async def test_store_failures_on_every_read_and_write_endpoint_are_503(
        r: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    async def fail(*_args: Any) -> Any:
        raise StoreError("database is locked")

    for method in ("list_optouts", "add_optout", "remove_optout", "remove_optout_logged",
                   "get_message"):
        monkeypatch.setattr(r.app.store, method, fail)
    hdr = {"Authorization": "Bearer shop-key"}
    for method, path, body in (("GET", "/v1/optouts", None),
                               ("POST", "/v1/optouts", {"number": XK}),
                               ("DELETE", f"/v1/optouts/{XK}", None),
                               ("GET", "/v1/messages/0123", None)):
        async with r.http.request(method, f"{r.base}{path}", json=body, headers=hdr) as resp:
            data = await resp.json()
            assert (resp.status, data["error"]["code"]) == (503, "store_unavailable"), path
            assert resp.headers["Retry-After"] == "1"


async def test_handset_replying_ndalo_opts_out_end_to_end(tmp_path: Path) -> None:
    book = HandsetBook({XK: Handset(reply="NDALO")})
    async with running(tmp_path, SmscProfile(handsets=book), shop=SHOP) as r:
        fix_clock(r, NOON)
        status, first = await post(r, **{"class": "marketing"})
        assert status == 202
        await r.wait_status(first["id"], {"delivered"})
        # The reply comes back as an MO; the opt-out is recorded before it is acknowledged.
        await r.smsc.wait_until(lambda: r.smsc.mo_acked_total >= 1, 20)
        entries = await r.app.store.list_optouts("shop", XK, 10)
        assert [(n, src) for n, _, src, *_ in entries] == [(XK, "mo:sim")]
        fix_clock(r, NOON + 2 * 86400)  # past the 24 h frequency limit
        status, data = await post(r, **{"class": "marketing"})
        assert (status, data["error"]["code"]) == (403, "opted_out")
        # The profile's confirmation went back to the handset from the sender it wrote to.
        def confirmed() -> bool:
            for sub in r.smsc.received:
                body = sub.short_message[6:] if sub.esm_class & 0x40 else sub.short_message
                text = body.decode("utf-16-be" if sub.data_coding == 8 else "latin-1")
                # Sent in GSM-7, transliterated to fit one SMS (test_optout_completeness.py).
                if text.startswith("Jeni cregjistruar") and sub.destination == XK.lstrip("+"):
                    return True
            return False

        await wait_for(confirmed, what="confirmation")
        # The handset answers the confirmation with NDALO again: no second confirmation.
        await r.smsc.wait_until(lambda: r.smsc.mo_acked_total >= 2, 20)
        confirmations = [s for s in r.smsc.received
                         if s.destination == XK.lstrip("+") and s.short_message.startswith(b"Jeni")]
        assert len(confirmations) == 1  # one message, in one part


async def test_other_mo_replies_go_to_the_accounts_mo_url(tmp_path: Path) -> None:
    got: list[dict[str, Any]] = []
    arrived = asyncio.Event()

    async def receive(request: web.Request) -> web.Response:
        got.append(await request.json())
        arrived.set()
        return web.Response(status=204)

    book = HandsetBook({XK: Handset(reply="Yes please, call me")})
    async with serve_app([web.post("/mo", receive)]) as base, \
            running(tmp_path, SmscProfile(handsets=book),
                    shop={**SHOP, "mo_url": f"{base}/mo"}) as r:
        status, _ = await post(r)
        assert status == 202
        await asyncio.wait_for(arrived.wait(), 20)
    assert got[0]["type"] == "mo" and got[0]["from"] == XK and got[0]["to"] == "ACME"
    assert got[0]["text"] == "Yes please, call me"


def test_config_rejects_a_bad_registered_senders_table(tmp_path: Path) -> None:
    from aggregator.config import ConfigError

    with pytest.raises(ConfigError) as err:
        make_config(tmp_path / "x.db", 1, shop={"registered_senders": {"kz": "ACME"}})
    assert "registered_senders" in str(err.value)


async def test_help_keyword_gets_the_profiles_help_text(tmp_path: Path) -> None:
    book = HandsetBook({XK: Handset(reply="ndihme")})
    async with running(tmp_path, SmscProfile(handsets=book), shop=SHOP) as r:
        status, _ = await post(r)
        assert status == 202

        def helped() -> bool:
            for sub in r.smsc.received:
                body = sub.short_message[6:] if sub.esm_class & 0x40 else sub.short_message
                text = body.decode("utf-16-be" if sub.data_coding == 8 else "latin-1")
                if text.startswith("Per t'u cregjistruar") and sub.source == "ACME":
                    return True
            return False

        await wait_for(helped, what="help text")
        assert await r.app.store.list_optouts("shop", XK, 10) == []  # help is not an opt-out


async def test_other_mo_goes_to_the_bound_smpp_receiver_without_mo_url(tmp_path: Path) -> None:
    from aiosmpplib import DeliverSmResp

    from aggregator.smpp.session import BindMode, RequestReceived
    from aggregator.smpp.transport import SmppConnection, open_client

    book = HandsetBook({XK: Handset(reply="Call me tomorrow")})
    got: asyncio.Queue[Any] = asyncio.Queue()

    def on_event(conn: SmppConnection, event: object) -> None:
        if isinstance(event, RequestReceived):
            got.put_nowait(event.pdu)
            conn.respond(event.pdu, DeliverSmResp())

    async with running(tmp_path, SmscProfile(handsets=book), smpp={},
                       shop={**SHOP, "system_id": "shop", "password": "secret"}) as r:
        status, _ = await post(r)
        assert status == 202
        await r.smsc.wait_until(lambda: r.smsc.mo_acked_total >= 1, 20)  # stored, then acked
        assert r.app.smpp is not None
        await open_client("127.0.0.1", r.app.smpp.port, mode=BindMode.RECEIVER,
                          system_id="shop", password="secret", on_event=on_event)
        while True:  # the receipt for the message may come first
            pdu = await asyncio.wait_for(got.get(), 20)
            if not pdu.is_receipt():
                break
    assert pdu.short_message == "Call me tomorrow"
    assert pdu.source.number == XK.lstrip("+") and pdu.destination.number == "ACME"

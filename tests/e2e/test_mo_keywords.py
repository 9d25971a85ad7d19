"""Issue 19 items 3 and 4: MO keywords (Kazakh ТОҚТА/ТОКТА/КӨМЕК, first-word matching with
punctuation ignored), unrecognised replies forwarded, and no HELP reply loop: each automatic
answer goes to a number at most once per interval, never to an automated sender."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiosmpplib import NPI, TON, DeliverSm, PhoneNumber

from aggregator import metrics
from aggregator.config import ConfigError, parse_config
from aggregator.mo import AutoReplies, looks_automated
from aggregator.policy.profiles import bundled_profiles
from aggregator.policy.rules import classify_mo
from simulator.handsets import Handset, HandsetBook
from simulator.smsc import SmscProfile
from tests.helpers import Running, make_config, running, serve_app, wait_for

P = bundled_profiles()
XK_NUMBER = "+38344123456"
DE_NUMBER = "+4915123456789"  # no profile for Germany
SHOP = {"registered_senders": {"KZ": ["ACME"]}}


@pytest.mark.parametrize(("region", "text", "kind"), [
    ("KZ", "ТОҚТА", "optout"),
    ("KZ", "тоқта", "optout"),
    ("KZ", "Токта!", "optout"),
    ("KZ", "ТОКТАТУ", "optout"),
    ("KZ", " стоп, пожалуйста ", "optout"),
    ("KZ", "СТОП.", "optout"),
    ("KZ", "КӨМЕК", "help"),
    ("KZ", "комек?", "help"),
    ("KZ", "Көмек керек", "help"),
    ("KZ", "Тоқтамаңыз", "other"),  # a longer word that starts like the keyword
    ("KZ", "Рахмет", "other"),
    ("XK", "Stop please", "optout"),
    ("XK", "Ndalo!", "optout"),
    ("XK", "...NDALO...", "optout"),
    ("XK", "«Prestani»", "optout"),
    ("XK", "Help?", "help"),
    ("XK", "Stopping by later", "other"),
    ("XK", "S T O P", "other"),
    ("XK", "please stop", "other"),  # the keyword must be the first word
    ("XK", "!!!", "other"),
    (None, "Stop.", "optout"),
])
def test_keywords(region: str | None, text: str, kind: str) -> None:
    assert classify_mo(P[region] if region else None, text) == kind


def test_auto_replies_once_per_interval_edge() -> None:
    auto = AutoReplies(86400.0)
    assert auto.allow("shop", XK_NUMBER, "help", 1000.0)
    assert not auto.allow("shop", XK_NUMBER, "help", 1000.0 + 86399.0)  # last second inside
    assert auto.allow("shop", XK_NUMBER, "optout", 1001.0)  # another kind
    assert auto.allow("bank", XK_NUMBER, "help", 1001.0)  # another account
    assert auto.allow("shop", XK_NUMBER, "help", 1000.0 + 86400.0)  # first second outside


def test_auto_replies_table_stays_bounded() -> None:
    auto = AutoReplies(100.0, max_entries=10)
    for i in range(50):
        assert auto.allow("shop", f"+3834412{i:04d}", "help", float(i))
    assert len(auto) <= 10
    assert not auto.allow("shop", "+38344120049", "help", 50.0)  # the newest are kept


def _mo(source: str, text: str, ton: TON = TON.INTERNATIONAL, esm_class: int = 0) -> Any:
    return DeliverSm(short_message=text, source=PhoneNumber(source, ton, NPI.UNKNOWN),
                     destination=PhoneNumber("ACME", TON.ALPHANUMERIC, NPI.UNKNOWN),
                     esm_class=esm_class)


def test_automated_senders() -> None:
    xk = P["XK"]
    assert not looks_automated(_mo("38344123456", "HELP"), "HELP", xk)
    assert looks_automated(_mo("INFO", "HELP", TON.ALPHANUMERIC), "HELP", xk)
    assert looks_automated(_mo("38344123456", "HELP", esm_class=0x08), "HELP", xk)
    assert looks_automated(_mo("38344123456", "x"), "Auto-reply: I am away. HELP", xk)
    echo = xk.optout.help_text
    assert looks_automated(_mo("38344123456", echo), echo, xk)


def test_auto_reply_interval_config(tmp_path: Path) -> None:
    assert make_config(tmp_path / "x.db", 1).policy.auto_reply_interval == 86400.0
    with pytest.raises(ConfigError) as err:
        parse_config({"policy": {"auto_reply_interval": 0}, "store": {"path": "x.db"},
                      "accounts": [], "providers": [], "routes": []}, "<t>")
    assert "policy.auto_reply_interval" in str(err.value)


def texts_to(r: Running, number: str, prefix: str) -> int:
    """Messages (first parts) the SMSC got for ``number`` whose text starts with ``prefix``."""
    n = 0
    for sub in r.smsc.received:
        body = sub.short_message[6:] if sub.esm_class & 0x40 else sub.short_message
        text = body.decode("utf-16-be" if sub.data_coding == 8 else "latin-1", "replace")
        if sub.destination == number.lstrip("+") and text.startswith(prefix):
            n += 1
    return n


def sample(name: str, *labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, dict(zip(
        ("kind", "outcome"), labels, strict=False)))
    return value or 0.0


async def test_help_loop_is_bounded(tmp_path: Path) -> None:
    """A handset that answers every message with HELP gets one help text, not a loop; a day
    later (the clock seam moved) it may get one more."""
    book = HandsetBook({XK_NUMBER: Handset(reply="HELP")})
    async with running(tmp_path, SmscProfile(handsets=book), shop=SHOP) as r:
        clock = [1_900_000_000.0]
        r.app.mo.clock = lambda: clock[0]
        recent = sample("smsagg_mo_auto_replies_total", "help", "recent")
        status, _ = await r.post({"to": XK_NUMBER, "from": "ACME", "text": "Your order shipped"})
        assert status == 202
        # HELP -> help text -> HELP (suppressed: within 24 h) -> nothing more to answer.
        await wait_for(lambda: sample("smsagg_mo_auto_replies_total", "help", "recent")
                       >= recent + 1, what="second HELP suppressed")
        assert texts_to(r, XK_NUMBER, "Per t'u cregjistruar") == 1
        # A day later: the next HELP is answered once more, and the loop stops again.
        clock[0] += 86400.0
        status, _ = await r.post({"to": XK_NUMBER, "from": "ACME", "text": "Your order arrived"})
        assert status == 202
        await wait_for(lambda: sample("smsagg_mo_auto_replies_total", "help", "recent")
                       >= recent + 2, what="fourth HELP suppressed")
        assert texts_to(r, XK_NUMBER, "Per t'u cregjistruar") == 2
        assert len([s for s in r.smsc.received if s.destination == XK_NUMBER[1:]]) <= 2 + 2 * 2


async def test_stop_please_opts_out(tmp_path: Path) -> None:
    book = HandsetBook({XK_NUMBER: Handset(reply="Stop please!")})
    async with running(tmp_path, SmscProfile(handsets=book), shop=SHOP) as r:
        status, _ = await r.post({"to": XK_NUMBER, "from": "ACME", "text": "Your order shipped"})
        assert status == 202
        await r.smsc.wait_until(lambda: r.smsc.mo_acked_total >= 1, 20)
        assert [n for n, *_ in await r.app.store.list_optouts("shop", XK_NUMBER, 10)] == [
            XK_NUMBER]


@pytest.fixture
async def mo_sink() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    got: list[dict[str, Any]] = []

    async def receive(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(status=204)

    async with serve_app([web.post("/mo", receive)]) as base:
        yield f"{base}/mo", got


async def test_help_without_help_text_is_forwarded(
        tmp_path: Path, mo_sink: tuple[str, list[dict[str, Any]]]) -> None:
    """No profile (so no help text) for Germany: the HELP reply is the account's, not dropped."""
    url, got = mo_sink
    book = HandsetBook({DE_NUMBER: Handset(reply="HELP me please")})
    async with running(tmp_path, SmscProfile(handsets=book), shop={**SHOP, "mo_url": url}) as r:
        status, _ = await r.post({"to": DE_NUMBER, "from": "ACME", "text": "Your order shipped"})
        assert status == 202
        await wait_for(lambda: bool(got), what="MO forwarded")
    assert got[0]["text"] == "HELP me please" and got[0]["from"] == DE_NUMBER

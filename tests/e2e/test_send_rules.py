"""Rules checked again when a message is taken for sending (issue 19 item 2): an opt-out that
arrives between accept and send rejects the message (callback and metric); a marketing message
held by an outage into quiet hours, or past a frequency cap that changed, is held until it may
go, not sent. Time is moved, not waited for: one fake clock for accept, rules and dispatch."""

from __future__ import annotations

import asyncio
import dataclasses
import time as systime
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from aggregator.app import App
from aggregator.policy.profiles import Frequency
from simulator.smsc import Smsc, SmscProfile
from tests.helpers import (
    DEADLINE,
    Running,
    callback_sink,
    metric_samples,
    metric_value,
    running,
    wait_for,
)
from tests.smpp_helpers import smpplib_client

XK = "+38344123456"
KOSOVO = ZoneInfo("Europe/Belgrade")
SHOP = {"registered_senders": {"KZ": ["ACME"]}}
WEEK = 7 * 24 * 3600
# A day after tomorrow: fake times must be later than the real ones the messages were
# accepted at (they are due from then), and within their validity.
_DAY = (datetime.now(UTC) + timedelta(days=2)).date()


def local(day_offset: int, hh: int, mm: int, ss: int = 0) -> float:
    """A Kosovo wall time on _DAY + day_offset, as Unix time."""
    return datetime.combine(_DAY + timedelta(days=day_offset), time(hh, mm, ss),
                            KOSOVO).timestamp()


class Clock:
    """One fake clock for the accept path, the rules at accept and at send, and the
    dispatcher; `at` moves it."""

    def __init__(self, app: App, now: float) -> None:
        self.now = now
        fn: Callable[[], float] = lambda: self.now  # noqa: E731
        app.acceptor.clock = fn
        assert app.acceptor.policy is not None
        app.acceptor.policy.clock = fn
        app.send_check.clock = fn
        app.dispatcher.clock = fn
        self._app = app

    def at(self, now: float) -> None:
        self.now = now
        self._app.dispatcher.wake()


async def post(r: Running, **body: Any) -> dict[str, Any]:
    status, data = await r.post({"to": XK, "from": "ACME", "text": "Our new offer",
                                 "class": "marketing", "validity": WEEK, **body})
    assert status == 202, data
    return data


async def metric(r: Running, name: str, **labels: str) -> float | None:
    async with r.http.get(f"{r.base}/metrics") as resp:
        return metric_value(metric_samples(await resp.text()), name, **labels)


async def rule_count(r: Running, action: str, reason: str) -> float:
    """smsagg_send_rules_total for (action, reason): the registry is the process's, so tests
    that ran before in this process count too; compare before and after."""
    return await metric(r, "smsagg_send_rules_total", action=action, reason=reason) or 0.0


def submits_to(r: Running, number: str) -> int:
    return sum(1 for s in r.smsc.received if s.destination == number.lstrip("+"))


async def provider_down(r: Running) -> int:
    port = r.smsc.port
    await r.smsc.stop(timeout=1.0)
    await wait_for(lambda: all(p.binds_up == 0 for p in r.app.pools.values()),
                   what="binds down")
    return port


async def provider_up(r: Running, port: int) -> None:
    r.smsc = Smsc(SmscProfile(), port=port)
    await r.smsc.start()
    await wait_for(lambda: all(p.binds_up == p.config.binds for p in r.app.pools.values()),
                   what="binds up")


async def test_an_optout_between_schedule_and_send_rejects_the_message(tmp_path: Path) -> None:
    async with running(tmp_path, shop=SHOP) as r, callback_sink() as sink:
        # Accepted at night three days ago: scheduled for 09:00 that day, due now. The
        # dispatcher runs on the real clock here (callbacks are due by it) and takes nothing
        # until the opt-out is in.
        rejected = await rule_count(r, "rejected", "opted_out")
        night = local(-3, 3, 0)
        r.app.acceptor.clock = lambda: night
        assert r.app.acceptor.policy is not None
        r.app.acceptor.policy.clock = lambda: night
        r.app.send_check.clock = lambda: local(-3, 9, 0, 1)  # inside the window
        r.app.dispatcher.max_in_flight = 0
        held = await post(r, callback_url=sink.url)
        assert held["status"] == "scheduled"
        async with r.http.post(f"{r.base}/v1/optouts", json={"number": XK},
                               headers={"Authorization": "Bearer shop-key"}) as resp:
            assert resp.status == 201
        r.app.dispatcher.max_in_flight = 100  # taken for sending now
        view = await r.wait_status(held["id"], {"rejected", "submitted", "delivered"})
        assert view["status"] == "rejected"
        assert view["error"].startswith("opted_out: ")
        await sink.wait_count(1)
        assert sink.received[0]["id"] == held["id"]
        assert sink.received[0]["status"] == "rejected"
        assert sink.received[0]["error"].startswith("opted_out: ")
        assert submits_to(r, XK) == 0
        assert await rule_count(r, "rejected", "opted_out") == rejected + 1


async def test_marketing_held_by_an_outage_into_quiet_hours_is_rescheduled(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, shop=SHOP) as r:
        held = await rule_count(r, "held", "quiet_hours")
        clock = Clock(r.app, local(0, 19, 59))  # a minute before Kosovo's window closes
        port = await provider_down(r)
        message = await post(r)
        assert message["status"] == "accepted"
        # The outage lasts past 20:00; the provider comes back in the night. Taken again (at
        # once, or when a provider is back if it was taken before 20:00 and waited for one),
        # the message now breaks quiet hours: held, not sent.
        clock.at(local(0, 20, 0, 5))
        await provider_up(r, port)
        stored = await _wait_stored(r, message["id"], "scheduled")
        assert stored.next_attempt_at == local(1, 9, 0)
        assert stored.error is not None and stored.error.startswith("quiet_hours: ")
        assert await rule_count(r, "held", "quiet_hours") == held + 1
        _, view = await r.get(message["id"])
        assert view["status"] == "scheduled" and submits_to(r, XK) == 0
        # At the window's opening it goes.
        clock.at(local(1, 9, 0, 1))
        await r.wait_status(message["id"], {"delivered"})
        assert submits_to(r, XK) == 1


async def test_a_frequency_cap_reached_between_accept_and_send_holds_the_message(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, shop=SHOP) as r:
        held = await rule_count(r, "held", "frequency_capped")
        first_at = local(0, 13, 0)
        clock = Clock(r.app, first_at)
        first = await post(r)
        await r.wait_status(first["id"], {"delivered"})
        # 25 h later a second one is allowed (24 h apart), but the provider is down.
        clock.at(local(1, 14, 0))
        port = await provider_down(r)
        second = await post(r)
        assert second["status"] == "accepted"
        # Meanwhile the cap becomes 48 h between marketing messages (a rule that changed
        # between accept and send; the profiles are the ones the rules read).
        profile = r.app.profiles["XK"]
        r.app.profiles["XK"] = dataclasses.replace(
            profile, frequency=Frequency(max_per_month=4, min_interval_hours=48))
        clock.at(local(1, 14, 1))
        # The dispatcher may have taken it before the change (then it waits for a provider and
        # is taken again when one is back) or after: either way the send-time check holds it.
        await provider_up(r, port)
        stored = await _wait_stored(r, second["id"], "scheduled")
        assert stored.next_attempt_at == first_at + 48 * 3600
        assert stored.error is not None and stored.error.startswith("frequency_capped: ")
        assert await rule_count(r, "held", "frequency_capped") == held + 1
        _, view = await r.get(second["id"])
        assert view["status"] == "scheduled" and submits_to(r, XK) == 0
        clock.at(first_at + 48 * 3600 + 1)
        await r.wait_status(second["id"], {"delivered"})


async def _wait_stored(r: Running, message_id: str, status: str) -> Any:
    """The stored message once it has `status` (its next_attempt_at, error)."""
    deadline = systime.monotonic() + DEADLINE
    while True:
        stored = await r.app.store.get_message("shop", message_id)
        assert stored is not None
        if stored.status.value == status:
            return stored
        assert systime.monotonic() < deadline, f"still {stored.status.value}"
        await asyncio.sleep(0.02)


async def test_an_optout_rejects_an_smpp_accounts_message_with_a_rejectd_receipt(
    tmp_path: Path,
) -> None:
    """An account that blocks opted-out recipients for every class: its SMPP (transactional)
    message, taken for sending after the recipient opted out, comes back as a receipt."""
    pytest.importorskip("smpplib")
    import smpplib.consts

    account = {**SHOP, "system_id": "shop", "password": "secret",
               "block_transactional_to_opted_out": True}
    async with running(tmp_path, shop=account, smpp={}) as r:
        assert r.app.smpp is not None
        port = r.app.smpp.port
        r.app.dispatcher.max_in_flight = 0  # nothing is taken until the opt-out is in
        client = smpplib_client(port)
        delivered: list[Any] = []
        client.set_message_received_handler(lambda pdu: delivered.append(pdu))

        def submit() -> int:
            client.connect()
            client.bind_transceiver(system_id="shop", password="secret")
            client.send_message(
                source_addr_ton=smpplib.consts.SMPP_TON_ALNUM, source_addr="ACME",
                dest_addr_ton=smpplib.consts.SMPP_TON_INTL, destination_addr=XK[1:],
                short_message=b"your code 1234", registered_delivery=True)
            resp = client.read_pdu()
            assert resp.command == "submit_sm_resp"
            return int(resp.status)

        def receipt() -> bytes:
            while not delivered:
                client.read_once()
            text: bytes = delivered[0].short_message
            return text

        try:
            assert await asyncio.to_thread(submit) == 0
            async with r.http.post(f"{r.base}/v1/optouts", json={"number": XK},
                                   headers={"Authorization": "Bearer shop-key"}) as resp:
                assert resp.status == 201
            r.app.dispatcher.max_in_flight = 100
            text = await asyncio.to_thread(receipt)
        finally:
            client.disconnect()
        assert b"stat:REJECTD" in text
        assert submits_to(r, XK) == 0


async def test_a_later_marketing_message_that_goes_first_holds_an_older_one(
    tmp_path: Path,
) -> None:
    """No rule changes: the first message is held by a 25-hour outage, the second is
    accepted 24 h after it (allowed). When they are taken, the second is the one 24 h clear
    of the other; the first waits 24 h after the second instead of following it at once."""
    async with running(tmp_path, shop=SHOP) as r:
        first_at = local(0, 13, 0)
        clock = Clock(r.app, first_at)
        port = await provider_down(r)
        first = await post(r)
        second_at = local(1, 14, 0)
        clock.at(second_at)
        second = await post(r)
        assert second["status"] == "accepted"
        clock.at(second_at + 60)
        stored = await _wait_stored(r, first["id"], "scheduled")
        assert stored.next_attempt_at == second_at + 24 * 3600
        assert stored.error.startswith("frequency_capped: ")
        await provider_up(r, port)
        await r.wait_status(second["id"], {"delivered"})
        _, view = await r.get(first["id"])
        assert view["status"] == "scheduled" and submits_to(r, XK) == 1
        clock.at(second_at + 24 * 3600 + 1)
        await r.wait_status(first["id"], {"delivered"})

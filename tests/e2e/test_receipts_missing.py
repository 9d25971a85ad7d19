"""Receipts that never come: query_sm to the provider after query_after, back-off for providers
that do not answer it, final status "unknown" after receipt_timeout; and the simulator's side
(query_sm answers, lost receipts)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiosmpplib import NPI, TON, DeliverSmResp, PhoneNumber, SubmitSm

from aggregator.smpp import querysm
from aggregator.smpp.querysm import QuerySm
from aggregator.smpp.session import BindMode, RequestReceived
from aggregator.smpp.transport import SmppConnection, open_client
from simulator.smsc import Smsc, SmscProfile
from tests.helpers import DEADLINE, Running, callback_sink, registry_value, running, wait_for

MOBILE = "+38344123456"


async def post(run: Running, n: int, **extra: Any) -> list[str]:
    ids = []
    for i in range(n):
        status, body = await run.post({"to": f"+3834412{i:04d}", "from": "Shop",
                                       "text": f"hello {i}", **extra})
        assert status == 202, body
        ids.append(body["id"])
    return ids


# -- the simulator --------------------------------------------------------------------------------


async def _sim_client(smsc: Smsc) -> SmppConnection:
    return await open_client("127.0.0.1", smsc.port, mode=BindMode.TRANSCEIVER,
                             system_id="t", password="t")


async def _submit(conn: SmppConnection) -> str:
    pdu = SubmitSm(short_message="hi", source=PhoneNumber("Shop", TON.ALPHANUMERIC, NPI.UNKNOWN),
                   destination=PhoneNumber("38344123456", TON.INTERNATIONAL, NPI.ISDN),
                   registered_delivery=1)
    resp = await asyncio.wait_for(conn.request(pdu), DEADLINE)
    return str(resp.message_id)


async def _query(conn: SmppConnection, message_id: str) -> Any:
    pdu = QuerySm(message_id, int(TON.ALPHANUMERIC), int(NPI.UNKNOWN), "Shop")
    return await asyncio.wait_for(conn.request(pdu), DEADLINE)


async def test_simulator_answers_query_sm_with_the_message_state() -> None:
    smsc = Smsc(SmscProfile(receipt_delay=0.3, lose_receipts=1.0))
    await smsc.start()
    conn = await _sim_client(smsc)
    try:
        message_id = await _submit(conn)
        resp = await _query(conn, message_id)
        assert int(resp.command_status) == 0
        assert (resp.message_id, resp.message_state, resp.final_date) == (
            message_id, querysm.ENROUTE, "")
        await wait_for(lambda: smsc.receipts_lost == 1, what="the receipt lost")
        deadline = asyncio.get_running_loop().time() + DEADLINE
        while resp.message_state == querysm.ENROUTE:
            assert asyncio.get_running_loop().time() < deadline, "never delivered"
            await asyncio.sleep(0.05)
            resp = await _query(conn, message_id)
        assert resp.message_state == querysm.DELIVERED
        assert len(resp.final_date) == 16 and resp.final_date.endswith("+")
        assert smsc.receipts_sent == 0  # lost: never sent
        unknown = await _query(conn, "ffffffff")
        assert int(unknown.command_status) == 0x0C  # ESME_RINVMSGID
        smsc.profile.answer_query_sm = False
        nack = await _query(conn, message_id)
        assert int(nack.smpp_command) == 0x80000000 and int(nack.command_status) == 0x03
        assert smsc.queries_total >= 4
    finally:
        conn.close()
        await smsc.stop()


async def test_simulator_loses_about_its_share_of_receipts() -> None:
    smsc = Smsc(SmscProfile(lose_receipts=0.25, seed=7))
    await smsc.start()
    conn = await _sim_client(smsc)
    try:
        for _ in range(200):
            await _submit(conn)
        # This client does not answer receipts: they wait in the simulator's window and queue.
        await wait_for(lambda: smsc.receipts_sent + smsc.pending_receipts
                       + smsc.receipts_lost == 200, what="every receipt sent or lost")
        assert 30 <= smsc.receipts_lost <= 70
    finally:
        conn.close()
        await smsc.stop()


# -- the daemon ---------------------------------------------------------------------------------


async def test_lost_receipt_is_asked_for_with_query_sm_and_applied(tmp_path: Path) -> None:
    before = registry_value("smsagg_receipt_queries_total", provider="sim", outcome="final")
    async with callback_sink() as sink, running(
            tmp_path, SmscProfile(lose_receipts=1.0), binds=1,
            extra_provider={"query_after": 0.3}) as run:
        [delivered] = await post(run, 1, callback_url=sink.url)
        await wait_for(lambda: run.smsc.accepted_total == 1, what="the first at the SMSC")
        run.smsc.profile.undeliverable_ratio = 1.0
        [failed] = await post(run, 1, callback_url=sink.url)
        await run.wait_status(delivered, {"delivered"})
        body = await run.wait_status(failed, {"undeliverable"})
        assert body["error"] == "UNDELIV err:001"
        await sink.wait_count(2)
        assert {c["id"]: c["status"] for c in sink.received} == {
            delivered: "delivered", failed: "undeliverable"}
        assert run.smsc.receipts_sent == 0 and run.smsc.queries_answered >= 2
        assert registry_value("smsagg_receipt_queries_total", provider="sim",
                              outcome="final") - before == 2


async def test_en_route_answer_is_asked_again_later(tmp_path: Path) -> None:
    # The handset gets it after 1.5 s: the first queries say en route, a later one delivered.
    async with running(tmp_path, SmscProfile(lose_receipts=1.0, receipt_delay=1.5), binds=1,
                       extra_provider={"query_after": 0.2}) as run:
        [message_id] = await post(run, 1)
        await run.wait_status(message_id, {"delivered"})
        assert run.smsc.queries_answered >= 2


async def test_provider_without_query_sm_is_backed_off_then_unknown(tmp_path: Path) -> None:
    backoffs = registry_value("smsagg_receipt_query_backoffs_total", provider="sim")
    timeouts = registry_value("smsagg_receipt_timeouts_total", provider="sim")
    async with callback_sink() as sink, running(
            tmp_path, SmscProfile(lose_receipts=1.0, answer_query_sm=False), binds=1,
            extra_provider={"query_after": 0.1}, messages={"receipt_timeout": 1.5}) as run:
        ids = await post(run, 3, callback_url=sink.url)
        for message_id in ids:
            body = await run.wait_status(message_id, {"unknown"})
            assert body["error"] == "no receipt within 1.5 s"
        await sink.wait_count(3)
        assert {c["status"] for c in sink.received} == {"unknown"}
        # The first pass's queries (sent together) get generic_nack, then the provider is left
        # alone (back-off) until the timeout; without it each part is asked every 0.1 s.
        assert 1 <= run.smsc.queries_total <= 3
    assert registry_value("smsagg_receipt_query_backoffs_total", provider="sim") - backoffs == 1
    assert registry_value("smsagg_receipt_timeouts_total", provider="sim") - timeouts == 3


async def test_receipt_timeout_sends_stat_unknown_to_the_smpp_client(tmp_path: Path) -> None:
    delivers: asyncio.Queue[Any] = asyncio.Queue()

    def on_event(conn: SmppConnection, event: object) -> None:
        if isinstance(event, RequestReceived):
            delivers.put_nowait(event.pdu)
            conn.respond(event.pdu, DeliverSmResp())

    async with running(tmp_path, SmscProfile(lose_receipts=1.0), binds=1,
                       extra_provider={"query_after": 0}, messages={"receipt_timeout": 0.5},
                       smpp={}, shop={"system_id": "shop", "password": "secret"}) as run:
        assert run.app.smpp is not None
        conn = await open_client("127.0.0.1", run.app.smpp.port, mode=BindMode.TRANSCEIVER,
                                 system_id="shop", password="secret", on_event=on_event)
        try:
            pdu = SubmitSm(short_message="hi",
                           source=PhoneNumber("Shop", TON.ALPHANUMERIC, NPI.UNKNOWN),
                           destination=PhoneNumber(MOBILE[1:], TON.INTERNATIONAL, NPI.ISDN),
                           registered_delivery=1)
            resp = await asyncio.wait_for(conn.request(pdu), DEADLINE)
            receipt = await asyncio.wait_for(delivers.get(), DEADLINE)
            assert receipt.is_receipt()
            assert f"id:{resp.message_id} " in receipt.short_message
            assert "stat:UNKNOWN" in receipt.short_message
            tlvs = {p.tag: p.value for p in receipt.optional_params}
            assert tlvs[0x0427] == 7  # message_state UNKNOWN
            assert run.smsc.queries_total == 0  # query_after = 0: never asked
        finally:
            conn.close()


async def test_id_the_smsc_forgot_is_not_found_without_back_off(tmp_path: Path) -> None:
    backoffs = registry_value("smsagg_receipt_query_backoffs_total", provider="sim")
    not_found = registry_value("smsagg_receipt_queries_total", provider="sim", outcome="not_found")
    async with running(tmp_path, SmscProfile(lose_receipts=1.0, receipt_delay=30.0), binds=1,
                       extra_provider={"query_after": 0.2},
                       messages={"receipt_timeout": 2.0}) as run:
        [message_id] = await post(run, 1)
        await run.wait_status(message_id, {"submitted"})
        # The operator restarts without its store: it no longer knows the id.
        port = run.smsc.port
        await run.smsc.stop()
        run.smsc = Smsc(SmscProfile(lose_receipts=1.0), port=port)
        await run.smsc.start()
        await wait_for(lambda: run.smsc.queries_total >= 2, what="asked again after not found")
        await run.wait_status(message_id, {"unknown"})
    assert registry_value("smsagg_receipt_queries_total", provider="sim",
                          outcome="not_found") - not_found >= 2
    assert registry_value("smsagg_receipt_query_backoffs_total", provider="sim") == backoffs


def test_simulator_cli_and_profile_file_options() -> None:
    import argparse

    from simulator.cli import add_smsc_args, smsc_profile
    from simulator.profiles import parse_profiles

    parser = argparse.ArgumentParser()
    add_smsc_args(parser)
    profile = smsc_profile(parser.parse_args(["--lose-receipts", "0.05", "--no-query-sm"]))
    assert (profile.lose_receipts, profile.answer_query_sm) == (0.05, False)
    [spec] = parse_profiles({"smsc": [{"name": "A", "port": 0, "lose_receipts": 0.05}]}, "f")
    assert (spec.profile.lose_receipts, spec.profile.answer_query_sm) == (0.05, True)

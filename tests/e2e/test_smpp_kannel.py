"""The [smpp] server with the PDUs a Kannel-like gateway sends (issue 16): receipts asked on a
long message's first part only, a window larger than smsagg's, query_sm and data_sm."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from aggregator.ingress.smpp import message_receipt_mode, query_answer
from aggregator.model import Encoding, Message, MessageStatus, Sender, SenderKind
from simulator.smsc import SmscProfile
from tests.helpers import DEADLINE, Running, registry_value, running
from tests.kannel_esme import DATA_SM, QUERY_SM, KannelEsme, cstr, submit_body, tlv, udh8
from tests.smpp_helpers import smpplib_client

MOBILE = "38344123456"
SHOP = {"system_id": "shop", "password": "secret"}
PARTS = [b"first part, ", b"second part, ", b"third part."]


@pytest.fixture
async def r(tmp_path: Path) -> AsyncIterator[Running]:
    async with running(tmp_path, smpp={"window": 10, "reassembly_timeout": 5}, shop=SHOP,
                       prefixes=("+383",)) as run:
        yield run


async def esme(r: Running) -> KannelEsme:
    assert r.app.smpp is not None
    client = KannelEsme("127.0.0.1", r.app.smpp.port)
    await client.connect()
    return client


async def wait_receipt(client: KannelEsme, message_id: str) -> str:
    """The text of the first delivery receipt for message_id."""
    deadline = time.monotonic() + DEADLINE
    while True:
        for esm_class, receipted, text in client.delivers:
            if esm_class & 0x04 and receipted == message_id:
                return text
        assert time.monotonic() < deadline, f"no receipt for {message_id}: {client.delivers}"
        client.delivered.clear()
        try:
            await asyncio.wait_for(client.delivered.wait(), deadline - time.monotonic())
        except TimeoutError:
            continue


def kannel_part(i: int, *, sar: bool) -> bytes:
    """Part i (0-based) of 3 as Kannel sends it with dlr-mask set: registered_delivery 0x11
    (receipt, plus intermediate notification) on part 1, 0 on the others."""
    rd = 0x11 if i == 0 else 0
    if sar:
        tlvs = (tlv(0x020C, (77).to_bytes(2, "big")) + tlv(0x020E, bytes([3]))
                + tlv(0x020F, bytes([i + 1])))
        return submit_body(MOBILE, PARTS[i], registered_delivery=rd, tlvs=tlvs)
    return submit_body(MOBILE, udh8(0x42, 3, i + 1) + PARTS[i], esm_class=0x40,
                       registered_delivery=rd)


@pytest.mark.parametrize("sar", [False, True], ids=["udh", "sar"])
async def test_receipt_asked_on_the_first_part_only_gives_the_final_receipt(
        r: Running, sar: bool) -> None:
    client = await esme(r)
    # Pipelined, as Kannel sends them: part 1 is answered once the message is whole.
    answers = await asyncio.gather(*(client.submit(kannel_part(i, sar=sar)) for i in range(3)))
    assert [a.status for a in answers] == [0, 0, 0]
    ids = {a.message_id for a in answers}
    assert len(ids) == 1
    message_id = ids.pop()
    stored = await r.app.store.get_message("shop", message_id)
    assert stored is not None and stored.text == b"".join(PARTS).decode()
    assert stored.receipt_mode == 1  # part 3 completed it, with registered_delivery 0
    text = await wait_receipt(client, message_id)
    assert f"id:{message_id} " in text and "stat:DELIVRD" in text
    await client.close()


@pytest.mark.parametrize(
    ("modes", "expected"),
    [((0x11, 0, 0), 1), ((0, 0, 0x01), 1), ((0x12, 0, 0), 2), ((0x02, 0x01, 0), 1),
     ((0, 0, 0), 0)],
)
def test_a_long_message_asks_for_a_receipt_if_any_part_does(modes: tuple[int, ...],
                                                           expected: int) -> None:
    assert message_receipt_mode(modes) == expected


# ---- a window larger than [smpp] window (item 7) ----------------------------------------------


def window_exceeded(r: Running) -> float:
    return registry_value("smsagg_smpp_window_exceeded_total", account="shop")


async def test_a_window_above_smpp_window_is_throttled_logged_once_and_counted(
        r: Running) -> None:
    before = window_exceeded(r)
    with capture_logs() as logs:
        first = await esme(r)
        for _ in range(2):  # Kannel with max-pending-submits 15 against [smpp] window 10
            answers = await asyncio.gather(*first.submit_burst(
                [submit_body(MOBILE, b"w") for _ in range(15)]))
            assert sorted(a.status for a in answers) == [0] * 10 + [0x58] * 5
        second = await esme(r)  # another session right away: the log is rate-limited
        answers = await asyncio.gather(*second.submit_burst(
            [submit_body(MOBILE, b"w") for _ in range(12)]))
        assert sorted(a.status for a in answers) == [0] * 10 + [0x58] * 2
    warnings = [e for e in logs if e["event"] == "smpp_window_exceeded"]
    assert len(warnings) == 1, warnings
    assert warnings[0]["account"] == "shop" and warnings[0]["window"] == 10
    assert window_exceeded(r) - before == 12
    await first.close()
    await second.close()


# ---- query_sm and data_sm, with python-smpplib as the client ----------------------------------


async def test_query_sm_with_smpplib(tmp_path: Path) -> None:
    pytest.importorskip("smpplib")
    import smpplib.consts
    import smpplib.smpp

    # Receipts 3 s after the submit: a query before then finds the message en route.
    async with running(tmp_path, SmscProfile(receipt_delay=3), smpp={}, shop=SHOP,
                       prefixes=("+383",)) as r:
        assert r.app.smpp is not None
        port = r.app.smpp.port
        status, body = await r.post({"to": "+" + MOBILE, "from": "ACME", "text": "b"},
                                    headers={"Authorization": "Bearer bank-key"})
        assert status == 202
        banks = body["id"]

        def client_run() -> dict[str, Any]:
            client = smpplib_client(port)
            out: dict[str, Any] = {"sent": [], "receipts": [], "queries": [], "errors": []}
            client.set_message_sent_handler(lambda pdu: out["sent"].append(
                pdu.message_id.decode()))
            client.set_message_received_handler(lambda pdu: out["receipts"].append(
                pdu.receipted_message_id.decode()))
            client.set_query_resp_handler(lambda pdu, **_kw: out["queries"].append(
                (pdu.status, pdu.message_id, pdu.final_date, pdu.message_state,
                 pdu.error_code)))
            client.set_error_pdu_handler(lambda pdu: out["errors"].append(
                (pdu.command, pdu.status)))

            def query(message_id: str) -> Any:
                before = len(out["queries"])
                client.query_message(message_id=message_id, source_addr_ton=5,
                                     source_addr_npi=0, source_addr="ACME")
                while len(out["queries"]) == before:
                    client.read_once()
                return out["queries"][-1]

            client.connect()
            client.bind_transceiver(system_id="shop", password="secret")
            client.send_message(
                source_addr_ton=smpplib.consts.SMPP_TON_ALNUM, source_addr="ACME",
                dest_addr_ton=smpplib.consts.SMPP_TON_INTL, destination_addr=MOBILE,
                short_message=b"q", registered_delivery=True)
            while not out["sent"]:
                client.read_once()
            mid = out["sent"][0]
            out["en_route"] = query(mid)
            while not out["receipts"]:
                client.read_once()
            out["final"] = query(mid)
            out["unknown"] = query("0" * 32)
            out["other_account"] = query(banks)
            # data_sm is refused with its own response and ESME_RINVCMDID.
            client.send_pdu(smpplib.smpp.make_pdu(
                "data_sm", client=client, source_addr_ton=5, source_addr="ACME",
                dest_addr_ton=1, destination_addr=MOBILE, data_coding=0))
            while not any(e[0] == "data_sm_resp" for e in out["errors"]):
                client.read_once()
            client.unbind()
            client.disconnect()
            return out

        out = await asyncio.to_thread(client_run)
    mid = out["sent"][0]
    assert out["receipts"] == [mid]
    assert out["en_route"] == (0, mid.encode(), b"", 1, 0)  # ENROUTE, no final_date yet
    status, got_id, final_date, state, error = out["final"]
    assert (status, got_id, state, error) == (0, mid.encode(), 2, 0)
    assert final_date is not None and len(final_date) == 16 and final_date.endswith(b"000+")
    assert out["unknown"][0] == out["other_account"][0] == 0x0C  # ESME_RINVMSGID
    assert ("data_sm_resp", 0x03) in out["errors"]
    assert ("query_sm_resp", 0x0C) in out["errors"]


async def test_query_sm_on_the_wire_answers_final_states_and_refuses_malformed(
        r: Running) -> None:
    client = await esme(r)
    answer = await client.submit(submit_body(MOBILE, b"x", registered_delivery=1))
    message_id = answer.message_id
    await wait_receipt(client, message_id)
    got = await client.request(QUERY_SM, cstr(message_id) + bytes([5, 0]) + cstr("ACME"))
    assert (got.command_id, got.status) == (0x80000003, 0)
    assert got.body[:33] == cstr(message_id) and got.body[-2:] == bytes([2, 0])
    # A message_id longer than 64 octets: ESME_RINVMSGLEN, and the session goes on.
    got = await client.request(QUERY_SM, cstr("1" * 70) + bytes([5, 0]) + cstr("ACME"))
    assert (got.command_id, got.status, got.body) == (0x80000003, 0x01, b"")
    got = await client.request(QUERY_SM, cstr("") + bytes([5, 0]) + cstr("ACME"))
    assert (got.command_id, got.status) == (0x80000003, 0x0C)
    got = await client.request(DATA_SM, b"")
    assert (got.command_id, got.status) == (0x80000103, 0x03)
    await client.close()


def test_query_answer_maps_statuses() -> None:
    m = Message(id="a" * 32, account="shop", to="+38344123456",
                sender=Sender("ACME", SenderKind.ALPHANUMERIC), text="x",
                encoding=Encoding.GSM7, segments=1, concat_ref=1, created_at=0.0)
    for status in ("accepted", "scheduled", "queued", "submitted"):
        m.status = MessageStatus(status)
        assert (query_answer(m).message_state, query_answer(m).final_date) == (1, "")
    m.done_at = 1_700_000_000.0
    for status, state in (("delivered", 2), ("expired", 3), ("undeliverable", 5),
                          ("rejected", 8), ("failed", 5)):
        m.status = MessageStatus(status)
        assert query_answer(m).message_state == state
        assert query_answer(m).final_date == "231114221320000+"
    m.status, m.error = MessageStatus.UNDELIVERABLE, "UNDELIV err:034"
    assert query_answer(m).error_code == 34
    m.error = "UNDELIV err:9999"  # does not fit the octet
    assert query_answer(m).error_code == 0

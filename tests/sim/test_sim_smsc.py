"""Tests for the simulator SMSC, driven through aggregator.smpp's client on ephemeral ports."""

from __future__ import annotations

import asyncio
import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from aiosmpplib import OptionalParam, SmppCommandStatus

from aggregator.smpp.session import BindMode
from aggregator.smpp.transport import BindError
from simulator.smsc import raw_short_message
from tests.helpers import Start
from tests.sim_helpers import (
    DEADLINE,
    Connect,
    make_submit,
    sigterm_and_wait,
    simulator_process,
    stderr_match,
)

RECEIPT_RE = re.compile(
    r"^id:(?P<id>\S+) sub:001 dlvrd:(?P<dlvrd>\d{3}) submit date:\d{10} done date:\d{10}"
    r" stat:(?P<stat>\w+) err:(?P<err>\d{3}) text:$"
)


def udh_submit(udh: bytes, text: str = "part") -> Any:
    pdu = make_submit(text, esm_class=0x40)
    pdu.set_encoded_message(udh + text.encode("ascii"))  # GSM 7-bit equals ASCII for letters
    return pdu


def tlv(pdu: Any, tag: int) -> Any:
    return next(p.value for p in pdu.optional_params if p.tag == tag)


def parse_receipt(pdu: Any) -> re.Match[str]:
    match = RECEIPT_RE.match(pdu.short_message)
    assert match, pdu.short_message
    return match


# -- submit and receipts ----------------------------------------------------------------------


async def test_submit_gets_unique_ids_and_delivered_receipts(
    start_smsc: Start, connect: Connect
) -> None:
    smsc = await start_smsc()
    client = await connect(smsc)
    resps = [await client.submit(make_submit(f"m{i}")) for i in range(3)]
    ids = [r.message_id for r in resps]
    assert all(r.command_status == SmppCommandStatus.ESME_ROK for r in resps)
    assert len(set(ids)) == 3
    assert all(re.fullmatch(r"[0-9a-f]{1,16}", i) for i in ids)

    receipts = [await client.next_deliver() for _ in range(3)]
    assert sorted(tlv(r, 0x001E) for r in receipts) == sorted(ids)
    for receipt in receipts:
        assert receipt.esm_class == 0x04
        assert receipt.registered_delivery == 0
        assert receipt.source.number == "4915112345678"  # the submit's destination
        assert receipt.destination.number == "SENDER"
        match = parse_receipt(receipt)
        assert match["id"] == tlv(receipt, 0x001E)
        assert (match["stat"], match["dlvrd"], match["err"]) == ("DELIVRD", "001", "000")
        assert tlv(receipt, 0x0427) == 2

    assert smsc.submits_total == 3
    assert [r.smsc_id for r in smsc.received] == ids
    assert smsc.received[0].short_message == b"m0"
    assert smsc.received[0].bind_id == "b1"
    assert smsc.binds_total == 1
    await smsc.wait_until(lambda: smsc.receipts_acked == 3, DEADLINE)
    assert smsc.receipts_sent == 3
    summary = smsc.summary()
    json.dumps(summary)
    assert summary["submits"] == 3 and summary["receipts_acked"] == 3


async def test_undeliverable_ratio_one_gives_undeliv(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc(undeliverable_ratio=1.0)
    client = await connect(smsc)
    resp = await client.submit(make_submit())
    receipt = await client.next_deliver()
    match = parse_receipt(receipt)
    assert match["id"] == resp.message_id
    assert (match["stat"], match["dlvrd"], match["err"]) == ("UNDELIV", "000", "001")
    assert tlv(receipt, 0x0427) == 5


async def test_decimal_receipt_ids(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc(receipt_id_format="decimal")
    client = await connect(smsc)
    resp = await client.submit(make_submit())
    receipt = await client.next_deliver()
    decimal = str(int(resp.message_id, 16))
    assert parse_receipt(receipt)["id"] == decimal
    assert tlv(receipt, 0x001E) == decimal


async def test_registered_delivery_zero_gets_no_receipt(
    start_smsc: Start, connect: Connect
) -> None:
    smsc = await start_smsc()
    client = await connect(smsc)
    await client.submit(make_submit(registered_delivery=0))
    wanted = await client.submit(make_submit(registered_delivery=1))
    receipt = await client.next_deliver()
    assert tlv(receipt, 0x001E) == wanted.message_id
    assert client.delivers.empty()
    assert smsc.receipts_sent == 1


async def test_no_receipts_profile(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc(receipts=False)
    client = await connect(smsc)
    await client.submit(make_submit())
    assert smsc.receipts_sent == 0 and smsc.pending_receipts == 0


# -- throttling and latency -------------------------------------------------------------------


async def test_max_tps_throttles(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc(max_tps=5, receipts=False)
    client = await connect(smsc, window=50)
    resps = await asyncio.gather(*(client.submit(make_submit()) for _ in range(20)))
    throttled = [r for r in resps if r.command_status == SmppCommandStatus.ESME_RTHROTTLED]
    assert len(throttled) >= 10
    assert smsc.throttled_total == len(throttled)
    assert smsc.submits_total == 20
    assert len(smsc.received) == 20 - len(throttled)


async def test_latency_counts_outstanding(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc(latency=0.2, receipts=False)
    client = await connect(smsc)
    loop = asyncio.get_running_loop()
    started = loop.time()
    resps = await asyncio.gather(*(client.submit(make_submit()) for _ in range(5)))
    assert loop.time() - started >= 0.19
    assert all(r.command_status == SmppCommandStatus.ESME_ROK for r in resps)
    assert smsc.max_outstanding == 5
    stats = smsc.bind_stats["b1"]
    assert (stats.submits, stats.outstanding, stats.max_outstanding) == (5, 0, 5)


async def test_wait_for_submits(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc(latency=0.05, receipts=False)
    client = await connect(smsc)
    waiting = asyncio.create_task(smsc.wait_for_submits(2, DEADLINE))
    await asyncio.gather(client.submit(make_submit()), client.submit(make_submit()))
    await waiting
    with pytest.raises(TimeoutError):
        await smsc.wait_for_submits(3, 0.05)


# -- binds ------------------------------------------------------------------------------------


async def test_credentials_checked_when_set(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc(system_id="acme", password="secret")
    with pytest.raises(BindError) as wrong_password:
        await connect(smsc, system_id="acme", password="wrong")
    assert wrong_password.value.status == SmppCommandStatus.ESME_RINVPASWD
    with pytest.raises(BindError) as wrong_id:
        await connect(smsc, system_id="other", password="secret")
    assert wrong_id.value.status == SmppCommandStatus.ESME_RINVSYSID
    client = await connect(smsc, system_id="acme", password="secret")
    resp = await client.submit(make_submit())
    assert resp.command_status == SmppCommandStatus.ESME_ROK
    assert smsc.bind_failures == 2 and smsc.binds_total == 1


async def test_any_credentials_accepted_by_default(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc()
    await connect(smsc, system_id="x", password="y", mode=BindMode.TRANSMITTER)
    await connect(smsc, system_id="x", password="z", mode=BindMode.RECEIVER)
    assert [s.mode for s in smsc.bind_stats.values()] == ["tx", "rx"]


async def test_stop_unbinds_clients(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc()
    client = await connect(smsc)
    await smsc.stop(timeout=1.0)
    await asyncio.wait_for(client.closed.wait(), DEADLINE)
    assert not smsc.bind_stats["b1"].bound


async def test_misbehaving_clients_do_not_hurt_the_server(
    start_smsc: Start, connect: Connect
) -> None:
    smsc = await start_smsc(latency=0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", smsc.port)
    submit = make_submit(sequence_num=7).pdu()
    unknown = struct.pack("!IIII", 16, 0x99, 0, 8)
    writer.write(submit + unknown)
    headers = [
        struct.unpack("!IIII", await asyncio.wait_for(reader.readexactly(16), DEADLINE))
        for _ in range(2)
    ]
    assert headers[0][1:] == (0x80000004, SmppCommandStatus.ESME_RINVBNDSTS, 7)
    assert headers[1][1:] == (0x80000000, SmppCommandStatus.ESME_RINVCMDID, 8)
    writer.write(struct.pack("!IIII", 3, 4, 0, 9))  # command_length below the header's
    assert await asyncio.wait_for(reader.read(), DEADLINE)  # generic_nack, then EOF
    writer.close()

    # A client that leaves with submits still being "processed".
    gone = await connect(smsc)
    requests = [gone.conn.request(make_submit()) for _ in range(3)]
    gone.conn.close()
    results = await asyncio.gather(*requests, return_exceptions=True)
    assert all(isinstance(r, Exception) for r in results)

    client = await connect(smsc)
    resp = await client.submit(make_submit())
    assert resp.command_status == SmppCommandStatus.ESME_ROK
    await client.next_deliver()
    assert smsc.submits_total == 4


# -- raw octets -------------------------------------------------------------------------------


async def test_received_keeps_raw_udh(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc(receipts=False)
    client = await connect(smsc)
    await client.submit(udh_submit(bytes([0x05, 0x00, 0x03, 0x2A, 0x02, 0x01]), "first"))
    await client.submit(udh_submit(bytes([0x06, 0x08, 0x04, 0x12, 0x34, 0x03, 0x02]), "second"))
    eight, sixteen = smsc.received
    assert eight.esm_class == 0x40 and eight.data_coding == 0
    assert eight.short_message == bytes([0x05, 0x00, 0x03, 0x2A, 0x02, 0x01]) + b"first"
    assert sixteen.short_message == bytes([0x06, 0x08, 0x04, 0x12, 0x34, 0x03, 0x02]) + b"second"


async def test_received_keeps_ucs2_octets(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc(receipts=False)
    client = await connect(smsc)
    await client.submit(make_submit("привет €", encoding="ucs2"))
    (received,) = smsc.received
    assert received.data_coding == 8
    assert received.short_message == "привет €".encode("utf-16-be")


async def test_received_keeps_gsm_octets(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc(receipts=False)
    client = await connect(smsc)
    await client.submit(make_submit("a@b$c_d"))  # GSM 03.38: @ 0x00, $ 0x02, _ 0x11
    (received,) = smsc.received
    assert received.data_coding == 0
    assert received.short_message == b"a\x00b\x02c\x11d"


def test_raw_short_message_without_udh() -> None:
    pdu = make_submit("plain", optional_params=[OptionalParam(0x020C, 7)])
    assert raw_short_message(pdu) == (0, b"plain")


# -- pending receipts and retries -------------------------------------------------------------


async def test_receipt_waits_for_a_receiver_bind(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc()
    sender = await connect(smsc, mode=BindMode.TRANSMITTER)
    resp = await sender.submit(make_submit())
    assert smsc.pending_receipts == 1  # a transmitter bind cannot take deliver_sm
    receiver = await connect(smsc, mode=BindMode.RECEIVER)
    receipt = await receiver.next_deliver()
    assert tlv(receipt, 0x001E) == resp.message_id
    assert smsc.pending_receipts == 0


async def test_receipt_for_closed_session_goes_to_new_bind(
    start_smsc: Start, connect: Connect
) -> None:
    smsc = await start_smsc(receipt_delay=0.1)
    first = await connect(smsc)
    resp = await first.submit(make_submit())
    await first.conn.unbind(timeout=1.0)
    await smsc.wait_until(lambda: smsc.pending_receipts == 1, DEADLINE)
    other = await connect(smsc, system_id="someone-else")
    second = await connect(smsc)
    receipt = await second.next_deliver()
    assert tlv(receipt, 0x001E) == resp.message_id
    assert first.delivers.empty() and other.delivers.empty()


async def test_refused_receipt_retried_three_times(start_smsc: Start, connect: Connect) -> None:
    smsc = await start_smsc()
    client = await connect(smsc, deliver_status=SmppCommandStatus.ESME_RSYSERR)
    resp = await client.submit(make_submit())
    receipts = [await client.next_deliver() for _ in range(4)]
    assert {tlv(r, 0x001E) for r in receipts} == {resp.message_id}
    await smsc.wait_until(lambda: smsc.receipts_failed == 1, DEADLINE)
    assert smsc.receipts_sent == 4 and smsc.receipts_acked == 0
    assert client.delivers.empty()


# -- CLI --------------------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "auto"])
async def test_cli_smsc_smoke(tmp_path: Path, connect: Connect, loop: str) -> None:
    stats_file = tmp_path / "stats.json"
    async with simulator_process("smsc", "--port", "0", "--stats-interval", "0.1",
                                 "--stats-file", str(stats_file), "--loop", loop) as proc:
        match = await stderr_match(proc, r"listening on ([\d.]+):(\d+)", 20.0)
        client = await connect(int(match[2]))
        resp = await client.submit(make_submit())
        await client.next_deliver()
        await stderr_match(proc, r".*submits=1 ")
        stdout = await sigterm_and_wait(proc)
    assert proc.returncode == 0
    summary = json.loads(stdout)
    assert summary["submits"] == 1 and summary["binds"] == 1
    assert json.loads(stats_file.read_text()) == summary
    assert resp.message_id

"""The SMPP server for upstream ESMEs: session rules, submit_sm through the accept path, long
messages in parts, and receipts back as deliver_sm."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiosmpplib import DeliverSmResp, OptionalParam

from aggregator.smpp.session import BindMode
from aggregator.smpp.transport import BindError
from simulator.smsc import SmscProfile
from tests.helpers import DEADLINE, Running, running
from tests.smpp_helpers import MOBILE, SHOP, Upstream, bind, send, smpplib_client, submit, tlv


@pytest.fixture
async def r(tmp_path: Path) -> AsyncIterator[Running]:
    async with running(tmp_path, smpp={"idle_timeout": 30, "reassembly_timeout": 2},
                       shop=SHOP, prefixes=("+383",)) as run:
        yield run


async def test_submit_is_acknowledged_with_our_id_and_the_receipt_comes_back(r: Running) -> None:
    up = Upstream()
    conn = await bind(r, up=up)
    resp = await send(conn, submit())
    assert int(resp.command_status) == 0 and len(resp.message_id) == 32
    _, view = await r.get(resp.message_id)
    assert view["status"] in ("accepted", "queued", "submitted", "delivered")
    rc = await up.receipt()
    assert rc.is_receipt()
    assert tlv(rc, 0x001E) == resp.message_id and tlv(rc, 0x0427) == 2
    assert f"id:{resp.message_id} sub:001 dlvrd:001" in rc.short_message
    assert "stat:DELIVRD err:000" in rc.short_message
    assert rc.source.number == MOBILE and rc.destination.number == "ACME"


@pytest.mark.parametrize("mode", [BindMode.TRANSMITTER, BindMode.RECEIVER, BindMode.TRANSCEIVER])
async def test_each_bind_mode_is_accepted(r: Running, mode: BindMode) -> None:
    conn = await bind(r, mode)
    assert conn.session.mode is mode


@pytest.mark.parametrize(
    ("system_id", "password", "status"),
    [("shop", "wrong", 0x0E), ("nobody", "secret", 0x0F)],
)
async def test_wrong_credentials_are_refused(r: Running, system_id: str, password: str,
                                             status: int) -> None:
    with pytest.raises(BindError) as err:
        await bind(r, system_id=system_id, password=password)
    assert err.value.status == status


async def test_binds_beyond_max_binds_are_refused(r: Running) -> None:
    for _ in range(3):
        await bind(r)
    with pytest.raises(BindError) as err:
        await bind(r)
    assert err.value.status == 0x0D


def raw_pdu(command_id: int, body: bytes = b"", seq: int = 7, length: int | None = None) -> bytes:
    return struct.pack("!IIII", length or 16 + len(body), command_id, 0, seq) + body


async def exchange(port: int, data: bytes, n: int = 1) -> list[tuple[int, int, int]]:
    """Send raw bytes on a fresh TCP connection; read n response headers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out = []
    try:
        for _ in range(n):
            header = await asyncio.wait_for(reader.readexactly(16), DEADLINE)
            length, cmd, status, seq = struct.unpack("!IIII", header)
            await reader.readexactly(length - 16)
            out.append((cmd, status, seq))
    finally:
        writer.close()
    return out


def bind_body(system_id: str = "shop", password: str = "secret") -> bytes:
    return (system_id.encode() + b"\0" + password.encode() + b"\0" + b"\0"
            + bytes([0x34, 0, 0]) + b"\0")


async def test_session_rules_on_the_wire(r: Running) -> None:
    assert r.app.smpp is not None
    port = r.app.smpp.port
    # A request before bind: its own response with ESME_RINVBNDSTS.
    assert await exchange(port, raw_pdu(0x04, b"\0" * 20)) == [(0x80000004, 0x04, 7)]
    # enquire_link is answered, even before bind.
    assert await exchange(port, raw_pdu(0x15)) == [(0x80000015, 0, 7)]
    # A second bind on a bound session: ESME_RALYBND.
    got = await exchange(port, raw_pdu(0x09, bind_body(), 1) + raw_pdu(0x09, bind_body(), 2), 2)
    assert sorted(got) == [(0x80000009, 0, 1), (0x80000009, 0x05, 2)]
    # Unknown command id: generic_nack ESME_RINVCMDID with the same sequence number.
    assert await exchange(port, raw_pdu(0x99, b"", 42)) == [(0x80000000, 0x03, 42)]
    # A length below the header: generic_nack ESME_RINVCMDLEN, then the session closes.
    assert await exchange(port, raw_pdu(0x15, length=8)) == [(0x80000000, 0x02, 7)]
    # unbind is answered and the session closed.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw_pdu(0x09, bind_body(), 1))
    length, cmd, status, _ = struct.unpack("!IIII", await reader.readexactly(16))
    assert (cmd, status) == (0x80000009, 0)
    await reader.readexactly(length - 16)
    writer.write(raw_pdu(0x06, b"", 2))
    assert struct.unpack("!IIII", await reader.readexactly(16)) == (16, 0x80000006, 0, 2)
    assert await asyncio.wait_for(reader.read(), DEADLINE) == b""  # closed by the server
    writer.close()
    # The daemon still works.
    conn = await bind(r)
    assert int((await send(conn, submit())).command_status) == 0


async def test_idle_session_times_out(tmp_path: Path) -> None:
    async with running(tmp_path, smpp={"idle_timeout": 0.3}, shop=SHOP) as r:
        assert r.app.smpp is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", r.app.smpp.port)
        writer.write(raw_pdu(0x09, bind_body(), 1))
        await reader.readexactly(16)
        # Nothing more from us: the server closes the idle session (maybe after enquire_link).
        data = await asyncio.wait_for(reader.read(), DEADLINE)
        assert reader.at_eof(), data
        writer.close()


@pytest.mark.parametrize(
    ("pdu_args", "status"),
    [
        ({"to": "123"}, 0x0B),
        ({"to": "38338123456"}, 0x0B),  # fixed line
        ({"to": "14155552671"}, 0x0B),  # no route (only +383 is routed here)
        ({"source": "WAY_TOO_LONG_SENDER"}, 0x0A),
        ({"text": "x" * 161 * 10, "payload": True}, 0x01),
    ],
)
async def test_submit_errors_map_to_smpp_statuses(r: Running, pdu_args: dict[str, Any],
                                                  status: int) -> None:
    conn = await bind(r)
    resp = await send(conn, submit(**pdu_args))
    assert int(resp.command_status) == status


async def test_queue_full_is_rmsgqful(r: Running) -> None:
    conn = await bind(r)
    r.app.store.pending = 10**9
    assert int((await send(conn, submit())).command_status) == 0x14


async def test_account_above_max_tps_is_throttled(tmp_path: Path) -> None:
    async with running(tmp_path, smpp={}, shop={**SHOP, "max_tps": 5}) as r:
        conn = await bind(r)
        results = await asyncio.gather(*(send(conn, submit()) for _ in range(15)))
        statuses = [int(x.command_status) for x in results]
        assert statuses.count(0) == 5 and statuses.count(0x58) == 10


@pytest.mark.parametrize(
    ("text", "encoding", "expected"),
    [("Grüße, café", "latin_1", "Grüße, café"), ("Привет", "ucs2", "Привет"),
     ("a@b$_ä{", None, "a@b$_ä{")],
)
async def test_data_codings_are_decoded(r: Running, text: str, encoding: str | None,
                                        expected: str) -> None:
    conn = await bind(r)
    resp = await send(conn, submit(text=text, encoding=encoding))
    assert int(resp.command_status) == 0
    await r.wait_status(resp.message_id, {"delivered"})
    assert await stored_text(r, resp.message_id) == expected


async def stored_text(r: Running, message_id: str) -> str:
    m = await r.app.store.get_message("shop", message_id)
    assert m is not None
    return m.text


async def test_message_payload_is_accepted(r: Running) -> None:
    conn = await bind(r)
    text = "long " * 60
    resp = await send(conn, submit(text=text, payload=True))
    assert int(resp.command_status) == 0
    assert await stored_text(r, resp.message_id) == text


PARTS = ["first part, ", "second part, ", "third part."]


def udh8(ref: int, total: int, seq: int) -> bytes:
    return bytes([5, 0, 3, ref, total, seq])


def udh16(ref: int, total: int, seq: int) -> bytes:
    return bytes([6, 8, 4, ref >> 8, ref & 0xFF, total, seq])


@pytest.mark.parametrize("udh", [udh8, udh16])
async def test_udh_parts_are_reassembled_into_one_message(r: Running, udh: Any) -> None:
    conn = await bind(r)
    ref = 0x1234 if udh is udh16 else 0x42
    pdus = [submit(raw=udh(ref, 3, i + 1) + p.encode(), esm_class=0x40)
            for i, p in enumerate(PARTS)]
    resps = await asyncio.gather(*(send(conn, p) for p in reversed(pdus)))  # any order
    ids = {x.message_id for x in resps}
    assert all(int(x.command_status) == 0 for x in resps) and len(ids) == 1
    assert await stored_text(r, ids.pop()) == "".join(PARTS)


async def test_sar_parts_are_reassembled_into_one_message(r: Running) -> None:
    conn = await bind(r)
    pdus = [submit(text=p, params=[OptionalParam(0x020C, 77), OptionalParam(0x020E, 3),
                                   OptionalParam(0x020F, i + 1)])
            for i, p in enumerate(PARTS)]
    resps = await asyncio.gather(*(send(conn, p) for p in pdus))
    ids = {x.message_id for x in resps}
    assert len(ids) == 1
    assert await stored_text(r, ids.pop()) == "".join(PARTS)


async def test_incomplete_parts_are_refused_after_the_timeout(r: Running) -> None:
    conn = await bind(r)
    resp = await send(conn, submit(raw=udh8(9, 2, 1) + b"only one", esm_class=0x40))
    assert int(resp.command_status) == 0x45  # after reassembly_timeout (2 s here)


async def test_receipts_wait_while_unbound_and_arrive_on_bind(r: Running) -> None:
    tx = await bind(r, BindMode.TRANSMITTER)
    resp = await send(tx, submit())
    await r.wait_status(resp.message_id, {"delivered"})
    up = Upstream()
    await bind(r, BindMode.RECEIVER, up=up)
    rc = await up.receipt()
    assert tlv(rc, 0x001E) == resp.message_id


async def test_unacknowledged_receipt_is_sent_again(r: Running) -> None:
    up = Upstream()
    up.ack = False
    conn = await bind(r, up=up)
    conn.session.response_timeout = 30
    resp = await send(conn, submit())
    first = await up.receipt()
    assert up.conn is not None
    up.conn.respond(first, _nack())  # refused: it must come again
    second = await asyncio.wait_for(up.delivers.get(), 10)
    assert tlv(second, 0x001E) == resp.message_id


def _nack() -> Any:
    resp = DeliverSmResp()
    resp.command_status = 0x08
    return resp


async def test_smpplib_client_interoperates(tmp_path: Path) -> None:
    pytest.importorskip("smpplib")
    import smpplib.consts
    import smpplib.gsm

    async with running(tmp_path, SmscProfile(), smpp={}, shop=SHOP) as r:
        assert r.app.smpp is not None
        port = r.app.smpp.port

        def client_run() -> tuple[list[str], list[str]]:
            client = smpplib_client(port)
            sent: list[str] = []
            receipts: list[str] = []
            client.set_message_sent_handler(lambda pdu: sent.append(pdu.message_id.decode()))

            def on_deliver(pdu: Any) -> None:
                receipts.append(pdu.receipted_message_id.decode())

            client.set_message_received_handler(on_deliver)
            client.connect()
            client.bind_transceiver(system_id="shop", password="secret")
            for text in ("short one", "long " * 50):
                parts, coding, msg_type = smpplib.gsm.make_parts(text)
                for part in parts:
                    client.send_message(
                        source_addr_ton=smpplib.consts.SMPP_TON_ALNUM, source_addr="ACME",
                        dest_addr_ton=smpplib.consts.SMPP_TON_INTL, destination_addr=MOBILE,
                        short_message=part, data_coding=coding, esm_class=msg_type,
                        registered_delivery=True,
                    )
            while len(receipts) < 2:
                client.read_once()
            client.unbind()
            client.disconnect()
            return sent, receipts

        try:
            sent, receipts = await asyncio.to_thread(client_run)
        except TimeoutError:  # pragma: no cover - reported as a failure with context
            pytest.fail("smpplib client timed out waiting for receipts")
        assert len(set(sent)) == 2  # one id for the short message, one shared by the parts
        assert set(receipts) == set(sent)

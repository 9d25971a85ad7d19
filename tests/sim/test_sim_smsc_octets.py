"""The simulated SMSC reads a submit_sm's octets as they were sent (aggregator.smpp.fields, the
daemon's parser), not as aiosmpplib re-encodes the text it decoded."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest

from aggregator.outbound.pool import EncodedSubmitSm
from aggregator.smpp.session import BindMode
from aggregator.smpp.status import CommandStatus
from aggregator.smpp.transport import SmppConnection, open_client
from simulator.smsc import Smsc
from tests.helpers import Start

DEADLINE = 5.0
MESSAGE_PAYLOAD = 0x0424


def submit_body(data_coding: int, message: bytes, tlvs: bytes = b"") -> bytes:
    return (b"\0" + b"\x05\x00SENDER\0" + b"\x01\x014915112345678\0"
            + bytes([0, 0, 0]) + b"\0\0" + bytes([0, 0, data_coding, 0, len(message)])
            + message + tlvs)


def payload_tlv(value: bytes) -> bytes:
    return struct.pack("!HH", MESSAGE_PAYLOAD, len(value)) + value


@pytest.fixture
async def client(start_smsc: Start) -> AsyncIterator[tuple[Smsc, SmppConnection]]:
    smsc = await start_smsc(receipts=False)
    conn = await open_client("127.0.0.1", smsc.port, mode=BindMode.TRANSMITTER,
                             system_id="esme", password="pw", bind_timeout=DEADLINE)
    yield smsc, conn
    conn.close()


async def submit(conn: SmppConnection, body: bytes) -> int:
    resp = await asyncio.wait_for(conn.request(EncodedSubmitSm(body, "t")), DEADLINE)
    return int(resp.command_status)


async def test_binary_octets_are_kept_as_sent(client: tuple[Smsc, SmppConnection]) -> None:
    smsc, conn = client
    # 8-bit data (data_coding 4) within what the session's decoder takes (it reads it as ASCII)
    octets = bytes([0x00, 0x7F, 0x1B, 0x41])
    assert await submit(conn, submit_body(4, octets)) == CommandStatus.ESME_ROK
    (received,) = smsc.received
    assert (received.data_coding, received.short_message) == (4, octets)


async def test_message_payload_octets_are_kept(client: tuple[Smsc, SmppConnection]) -> None:
    smsc, conn = client
    body = "Ж".encode("utf-16-be") * 150  # 300 octets: too long for short_message
    assert await submit(conn, submit_body(8, b"", payload_tlv(body))) == CommandStatus.ESME_ROK
    (received,) = smsc.received
    assert (received.data_coding, received.short_message) == (8, body)


async def test_short_message_and_message_payload_together_are_refused(
    client: tuple[Smsc, SmppConnection],
) -> None:
    smsc, conn = client
    status = await submit(conn, submit_body(0, b"hello", payload_tlv(b"world")))
    assert status == CommandStatus.ESME_RINVMSGLEN
    assert smsc.received == [] and smsc.submits_total == 0

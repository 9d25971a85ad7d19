"""An ESME on a running daemon's SMPP server (aiosmpplib's client): bind, build a submit_sm,
send it with a deadline, read a TLV; deliver_sm collected and acknowledged."""

from __future__ import annotations

import asyncio
from typing import Any

from aiosmpplib import NPI, TON, DeliverSmResp, OptionalParam, PhoneNumber, SubmitSm

from aggregator.smpp.session import BindMode, RequestReceived
from aggregator.smpp.transport import SmppConnection, open_client
from tests.helpers import DEADLINE, Running

MOBILE = "38344123456"
SHOP = {"system_id": "shop", "password": "secret", "max_binds": 3}


class Upstream:
    """An ESME bound to smsagg: collects deliver_sm and acknowledges them (or not)."""

    def __init__(self) -> None:
        self.delivers: asyncio.Queue[Any] = asyncio.Queue()
        self.ack = True
        self.conn: SmppConnection | None = None

    def on_event(self, conn: SmppConnection, event: object) -> None:
        if isinstance(event, RequestReceived):
            self.delivers.put_nowait(event.pdu)
            if self.ack:
                conn.respond(event.pdu, DeliverSmResp())

    async def receipt(self) -> Any:
        return await asyncio.wait_for(self.delivers.get(), DEADLINE)


async def bind(r: Running, mode: BindMode = BindMode.TRANSCEIVER, system_id: str = "shop",
               password: str = "secret", up: Upstream | None = None) -> SmppConnection:
    assert r.app.smpp is not None
    up = up or Upstream()
    conn = await open_client("127.0.0.1", r.app.smpp.port, mode=mode, system_id=system_id,
                             password=password, on_event=up.on_event, window=20)
    up.conn = conn
    return conn


def submit(to: str = MOBILE, text: str = "hello", *, source: str = "ACME",
           source_ton: TON = TON.ALPHANUMERIC, raw: bytes | None = None, esm_class: int = 0,
           encoding: str | None = None, params: list[OptionalParam] | None = None,
           registered_delivery: int = 1, payload: bool = False) -> Any:
    pdu = SubmitSm(
        short_message="" if payload else text,
        message_payload=text if payload else "",
        source=PhoneNumber(source, source_ton, NPI.UNKNOWN),
        destination=PhoneNumber(to, TON.INTERNATIONAL, NPI.ISDN),
        esm_class=esm_class, registered_delivery=registered_delivery, encoding=encoding,
        optional_params=params or [],
    )
    if raw is not None:
        pdu.set_encoded_message(raw)
    return pdu


async def send(conn: SmppConnection, pdu: Any) -> Any:
    return await asyncio.wait_for(conn.request(pdu), DEADLINE)


def tlv(pdu: Any, tag: int) -> Any:
    return next(p.value for p in pdu.optional_params if p.tag == tag)


def smpplib_client(port: int) -> Any:
    """python-smpplib's client, an independent ESME, for the daemon's SMPP server on port: every
    socket read waits up to DEADLINE (smpplib's own timeout argument, not its socket)."""
    import smpplib.client

    return smpplib.client.Client("127.0.0.1", port, timeout=DEADLINE,
                                 allow_unknown_opt_params=True)


def smpplib_submit_status(port: int, destination: str, text: bytes, *, source: str = "ACME",
                          **fields: Any) -> int:
    """smpplib binds as shop and sends one submit_sm (alphanumeric source, international
    destination without its +, other fields as given); the status of its submit_sm_resp."""
    import smpplib.consts

    client = smpplib_client(port)
    try:
        client.connect()
        client.bind_transceiver(system_id="shop", password="secret")
        client.send_message(
            source_addr_ton=smpplib.consts.SMPP_TON_ALNUM, source_addr=source,
            dest_addr_ton=smpplib.consts.SMPP_TON_INTL, destination_addr=destination,
            short_message=text, **fields)
        resp = client.read_pdu()
        assert resp.command == "submit_sm_resp"
        return int(resp.status)
    finally:
        client.disconnect()

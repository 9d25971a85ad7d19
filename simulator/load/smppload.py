"""The load over SMPP: submit_sm on transceiver binds; receipts come as deliver_sm."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from aiosmpplib import NPI, TON, DeliverSmResp, PhoneNumber, SubmitSm

from aggregator.smpp.fields import MESSAGE_STATE, RECEIPTED_MESSAGE_ID
from aggregator.smpp.session import BindMode, NotBound, RequestReceived, WindowFull
from aggregator.smpp.status import CommandStatus, status_name
from aggregator.smpp.transport import ConnectionLost, RequestTimeout, SmppConnection, open_client
from aggregator.text import GSM7_SINGLE
from simulator.load.content import Destinations
from simulator.load.options import LoadOptions
from simulator.load.recorder import Recorder, wait_receipts
from simulator.load.schedule import schedule

# SMPP message_state (TLV 0x0427) to the status names of the HTTP API.
_MESSAGE_STATES = {
    1: "enroute", 2: "delivered", 3: "expired", 4: "deleted", 5: "undeliverable",
    6: "accepted", 7: "unknown", 8: "rejected",
}


def _tlv(pdu: Any, tag: int) -> Any:
    for param in getattr(pdu, "optional_params", None) or []:
        if param.tag == tag:
            return param.value
    return None


class SmppLoad:
    def __init__(self, options: LoadOptions, rec: Recorder, text: str,
                 destinations: Destinations) -> None:
        self.options = options
        self.rec = rec
        self.text = text
        self.destinations = destinations
        self.conns: list[SmppConnection] = []

    def on_event(self, conn: SmppConnection, event: object) -> None:
        if not isinstance(event, RequestReceived):
            return
        pdu = event.pdu
        conn.respond(pdu, DeliverSmResp())
        message_id = _tlv(pdu, RECEIPTED_MESSAGE_ID)
        if message_id is None:
            return  # a mobile-originated message, not a receipt
        state = _tlv(pdu, MESSAGE_STATE)
        status = _MESSAGE_STATES.get(int(state), str(state)) if state is not None else "unknown"
        self.rec.receipt(str(message_id), status, time.perf_counter())

    async def connect(self) -> None:
        o = self.options
        self.conns = list(await asyncio.gather(*(
            open_client(o.smpp_host, o.smpp_port, mode=BindMode.TRANSCEIVER,
                        system_id=o.system_id, password=o.password, window=o.window,
                        response_timeout=o.timeout, on_event=self.on_event)
            for _ in range(o.binds)
        )))

    async def close(self) -> None:
        await asyncio.gather(*(c.unbind() for c in self.conns), return_exceptions=True)

    def _pick(self) -> SmppConnection | None:
        best: SmppConnection | None = None
        best_free = 0
        for conn in self.conns:
            if conn.closed.done():
                continue
            free = conn.session.window - conn.session.in_flight
            if free > best_free:
                best, best_free = conn, free
        return best

    def _pdu(self) -> Any:
        sender = self.options.sender
        source = (PhoneNumber(sender.lstrip("+"), TON.INTERNATIONAL, NPI.ISDN)
                  if sender.lstrip("+").isdigit()
                  else PhoneNumber(sender, TON.ALPHANUMERIC, NPI.UNKNOWN))
        long = len(self.text) > GSM7_SINGLE
        return SubmitSm(
            short_message="" if long else self.text,
            message_payload=self.text if long else "",
            source=source,
            destination=PhoneNumber(self.destinations.next()[1:], TON.INTERNATIONAL, NPI.ISDN),
            registered_delivery=1 if self.options.receipts else 0,
        )

    async def submit(self, index: int, n: int) -> None:
        rec = self.rec
        t0 = time.perf_counter()
        rec.sent(1, t0)
        conn = self._pick()
        if conn is None:
            rec.error("no_bind", t0)
            return
        try:
            resp = await conn.request(self._pdu())
        except RequestTimeout:
            rec.error("timeout", time.perf_counter())
            return
        except (ConnectionLost, NotBound, WindowFull) as exc:
            rec.error(type(exc).__name__, time.perf_counter())
            return
        now = time.perf_counter()
        status = int(resp.command_status)
        if status == CommandStatus.ESME_ROK:
            rec.accepted(str(resp.message_id), t0, now)
        else:
            rec.error(status_name(status) or f"0x{status:08X}", now)


async def run_smpp(options: LoadOptions, rec: Recorder, start: float, stop: asyncio.Event,
                    text: str, rng: random.Random) -> None:
    load = SmppLoad(options, rec, text, Destinations(options.prefix, options.digits, rng))
    try:
        await load.connect()
        await schedule(options, load.submit, options.binds * options.window, 1, start, stop)
        await wait_receipts(options, rec, stop)
    finally:
        await load.close()

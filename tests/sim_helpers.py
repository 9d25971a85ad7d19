"""An SMPP client of the simulator SMSC for its tests: one bound connection with its deliver_sm
queue, and a submit_sm builder."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiosmpplib import PhoneNumber, SubmitSm

from aggregator.smpp.transport import SmppConnection

DEADLINE = 5.0


@dataclass
class Client:
    conn: SmppConnection
    delivers: asyncio.Queue[Any]
    closed: asyncio.Event

    async def submit(self, pdu: Any) -> Any:
        return await asyncio.wait_for(self.conn.request(pdu), DEADLINE)

    async def next_deliver(self) -> Any:
        return await asyncio.wait_for(self.delivers.get(), DEADLINE)


Connect = Callable[..., Awaitable[Client]]


def make_submit(text: str = "hello", **kwargs: Any) -> Any:
    kwargs.setdefault("source", PhoneNumber("SENDER"))
    kwargs.setdefault("destination", PhoneNumber("4915112345678"))
    return SubmitSm(short_message=text, **kwargs)

"""What the simulated SMSC keeps: per-bind statistics, the submits it received, the
deliver_sm it has to send (receipts and handset replies), its peers and waiters."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from aiosmpplib import PhoneNumber

from aggregator.smpp.session import BindMode
from aggregator.smpp.transport import SmppConnection

RECEIVED_MAX = 200_000  # submits kept in Smsc.received, and message states for query_sm
CAN_RECEIVE = (BindMode.RECEIVER, BindMode.TRANSCEIVER)  # binds that take deliver_sm


@dataclass(slots=True)
class BindStats:
    bind_id: str
    system_id: str
    submits: int = 0
    max_outstanding: int = 0
    outstanding: int = 0  # submits received, not yet answered
    mode: str = ""
    bound: bool = True  # False once the session has closed
    close_reason: str = ""  # why it closed: "peer unbound" after a clean unbind from the client


@dataclass(slots=True)
class ReceivedSubmit:
    smsc_id: str
    source: str
    destination: str
    esm_class: int
    data_coding: int
    short_message: bytes  # the octets as received, UDH included (or message_payload's)
    bind_id: str
    received_at: float  # time.time()


@dataclass(slots=True)
class QueuedDeliver:
    """A receipt, or a handset's reply, waiting to go out as deliver_sm."""

    message_id: str
    system_id: str
    origin: SmppConnection | None  # preferred session: the one the submit came on
    source: PhoneNumber  # the submit's destination
    destination: PhoneNumber  # the submit's source
    submitted_at: float
    delivered: bool
    attempts: int = 0  # deliver_sm sent that timed out or were refused
    # Set: not a receipt but a handset's mobile-originated reply with this text (source: the
    # handset, destination: the sender it replies to); it shares the receipts' queue and retries.
    mo_text: str | None = None


@dataclass(slots=True)
class Peer:
    """What we know about one connection; stats exists once it is bound."""

    conn: SmppConnection
    stats: BindStats | None = None


@dataclass(slots=True)
class Waiter:
    condition: Callable[[], bool]
    future: asyncio.Future[None]


"""The PDUs the simulated SMSC answers with, and what it reads from a submit_sm (through the
daemon's field and UDH parsers, aggregator.smpp.fields and aggregator.text)."""

from __future__ import annotations

import time
from typing import Any

from aggregator.smpp.fields import RawSubmit, parse_submit
from aggregator.smpp.header import HEADER, RESP_BIT, SUBMIT_SM
from aggregator.smpp.status import CommandStatus
from aggregator.text import ESM_CLASS_UDHI, parse_udh
from simulator.smsc.records import ReceivedSubmit

SUBMIT_SM_RESP = SUBMIT_SM | RESP_BIT


class ErrorResp:
    """A bodiless submit_sm_resp with any command_status (aiosmpplib's takes only its enum).

    SMPP 3.4 leaves the body out of an error response; the client decodes it as such.
    """

    def __init__(self, status: int) -> None:
        self.status = status
        self.sequence_num = 0  # set by SmppSession.send_response

    def pdu(self) -> bytes:
        return HEADER.pack(HEADER.size, SUBMIT_SM_RESP, self.status, self.sequence_num)


def response(cls: Any, status: CommandStatus) -> Any:
    """An aiosmpplib response carrying `status` (its constructors take only its own enum);
    the session sets the sequence number."""
    resp = cls()
    resp.command_status = status
    return resp


def strip_plus(number: str) -> str:
    return number[1:] if number.startswith("+") else number


def completes_message(fields: RawSubmit) -> bool:
    """True unless the submit is a part, other than the last, of a concatenated message."""
    if fields.esm_class & ESM_CLASS_UDHI:
        try:
            concat, _ = parse_udh(fields.message)
        except ValueError:  # not a header the SMSC can read: a message of its own
            return True
        return concat is None or concat.seq >= concat.total
    return fields.sar is None or fields.sar.seq >= fields.sar.total


def received_submit(
    pdu: Any, fields: RawSubmit, message_id: str, bind_id: str
) -> ReceivedSubmit:
    return ReceivedSubmit(
        smsc_id=message_id,
        source=pdu.source.number,
        destination=pdu.destination.number,
        esm_class=fields.esm_class,
        data_coding=fields.data_coding,
        short_message=fields.message,
        bind_id=bind_id,
        received_at=time.time(),
    )


def raw_short_message(pdu: Any) -> tuple[int, bytes]:
    """(data_coding, octets with their UDH) of an aiosmpplib submit_sm built here, read back
    from its encoding (a received one's octets are in its RequestReceived.raw)."""
    fields = parse_submit(pdu.pdu())
    return fields.data_coding, fields.message


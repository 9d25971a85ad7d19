"""query_sm and query_sm_resp (SMPP 3.4 sections 4.8.1 and 4.8.2), which aiosmpplib lacks.

They have the interface the session uses for aiosmpplib's PDU classes: `smpp_command`,
`sequence_num`, `command_status`, `pdu()` to encode and `from_pdu(...)` to decode."""

from __future__ import annotations

import time
from typing import Any, Final

from aggregator.smpp.header import HEADER
from aggregator.smpp.status import CommandStatus

QUERY_SM: Final = 0x00000003
QUERY_SM_RESP: Final = 0x80000003
MAX_MESSAGE_ID: Final = 64  # octets, without the NUL
MAX_SOURCE_ADDR: Final = 20
MAX_FINAL_DATE: Final = 16

# message_state values (section 5.2.28)
ENROUTE: Final = 1
DELIVERED: Final = 2
EXPIRED: Final = 3
DELETED: Final = 4
UNDELIVERABLE: Final = 5
ACCEPTED: Final = 6
UNKNOWN: Final = 7
REJECTED: Final = 8


def _cstring(value: str, limit: int, name: str) -> bytes:
    octets = value.encode("ascii")
    if len(octets) > limit or b"\0" in octets:
        raise ValueError(f"{name} must be at most {limit} ASCII characters without NUL")
    return octets + b"\0"


def _read_cstring(body: bytes, pos: int, limit: int, name: str) -> tuple[str, int]:
    end = body.find(b"\0", pos, pos + limit + 1)
    if end < 0:
        raise ValueError(f"{name}: no NUL within {limit + 1} octets")
    return body[pos:end].decode("ascii"), end + 1


class _Pdu:
    smpp_command = 0

    def __init__(self, sequence_num: int = 0, command_status: Any = 0) -> None:
        self.sequence_num = sequence_num
        self.command_status = command_status

    def body(self) -> bytes:
        return b""

    def pdu(self) -> bytes:
        body = self.body()
        return HEADER.pack(HEADER.size + len(body), self.smpp_command,
                            int(self.command_status), self.sequence_num) + body


class QuerySm(_Pdu):
    """Ask the SMSC for the state of a message it answered submit_sm for. `source_addr` must
    be the original message's, with its TON and NPI."""

    smpp_command = QUERY_SM

    def __init__(self, message_id: str = "", source_ton: int = 0, source_npi: int = 0,
                 source_addr: str = "", sequence_num: int = 0, command_status: Any = 0) -> None:
        super().__init__(sequence_num, command_status)
        self.message_id = message_id
        self.source_ton = source_ton
        self.source_npi = source_npi
        self.source_addr = source_addr

    def body(self) -> bytes:
        return (_cstring(self.message_id, MAX_MESSAGE_ID, "message_id")
                + bytes([self.source_ton & 0xFF, self.source_npi & 0xFF])
                + _cstring(self.source_addr, MAX_SOURCE_ADDR, "source_addr"))

    @classmethod
    def from_pdu(cls, data: bytes, header: Any, *_codecs: Any) -> QuerySm:
        body = data[HEADER.size:]
        message_id, pos = _read_cstring(body, 0, MAX_MESSAGE_ID, "message_id")
        if pos + 2 > len(body):
            raise ValueError("query_sm body too short")
        ton, npi = body[pos], body[pos + 1]
        source_addr, _ = _read_cstring(body, pos + 2, MAX_SOURCE_ADDR, "source_addr")
        return cls(message_id, ton, npi, source_addr, header.sequence_num,
                   header.command_status)


class QuerySmResp(_Pdu):
    """The state of the queried message: `message_state` (ENROUTE ... REJECTED), `final_date`
    (SMPP absolute time or ""), `error_code` (network specific)."""

    smpp_command = QUERY_SM_RESP

    def __init__(self, message_id: str = "", final_date: str = "", message_state: int = 0,
                 error_code: int = 0, sequence_num: int = 0, command_status: Any = 0) -> None:
        super().__init__(sequence_num, command_status)
        self.message_id = message_id
        self.final_date = final_date
        self.message_state = message_state
        self.error_code = error_code

    def body(self) -> bytes:
        if int(self.command_status) != CommandStatus.ESME_ROK:
            return b""  # an error response has no body
        return (_cstring(self.message_id, MAX_MESSAGE_ID, "message_id")
                + _cstring(self.final_date, MAX_FINAL_DATE, "final_date")
                + bytes([self.message_state & 0xFF, self.error_code & 0xFF]))

    @classmethod
    def from_pdu(cls, data: bytes, header: Any, *_codecs: Any) -> QuerySmResp:
        body = data[HEADER.size:]
        message_id, pos = _read_cstring(body, 0, MAX_MESSAGE_ID, "message_id")
        final_date, pos = _read_cstring(body, pos, MAX_FINAL_DATE, "final_date")
        if pos + 2 > len(body):
            raise ValueError("query_sm_resp body too short")
        return cls(message_id, final_date, body[pos], body[pos + 1], header.sequence_num,
                   header.command_status)


def final_date(timestamp: float) -> str:
    """SMPP absolute time (YYMMDDhhmmsstnnp) in UTC."""
    return time.strftime("%y%m%d%H%M%S", time.gmtime(timestamp)) + "000+"


__all__ = ["QUERY_SM", "QUERY_SM_RESP", "QuerySm", "QuerySmResp", "final_date"]

"""query_sm and query_sm_resp (SMPP 3.4 sections 4.8.1-4.8.2), which aiosmpplib has no classes
for: encode (`pdu()`) and decode (`from_pdu`) with the same interface as its PDU classes, so the
session handles them like any other request or response."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, ClassVar

QUERY_SM = 0x00000003
QUERY_SM_RESP = 0x80000003
_HEADER = struct.Struct("!IIII")
MAX_MESSAGE_ID = 64  # C-octet string of at most 65 octets with the NUL
MAX_ADDRESS = 20  # source_addr: 21 octets with the NUL
DATE_LENGTH = 16  # absolute time "YYMMDDhhmmsstnnp"


def _cstring(body: bytes, pos: int, limit: int, name: str) -> tuple[str, int]:
    end = body.find(b"\0", pos, pos + limit + 1)
    if end < 0:
        raise ValueError(f"{name} is not a C-octet string of at most {limit} octets")
    return body[pos:end].decode("ascii"), end + 1


def _cbytes(value: str, limit: int, name: str) -> bytes:
    data = value.encode("ascii")
    if len(data) > limit or b"\0" in data:
        raise ValueError(f"{name} must be at most {limit} ASCII characters")
    return data + b"\0"


@dataclass(slots=True)
class QuerySm:
    message_id: str = ""
    source_ton: int = 0
    source_npi: int = 0
    source_addr: str = ""
    sequence_num: int = 0
    command_status: int = 0
    smpp_command: ClassVar[int] = QUERY_SM

    def pdu(self) -> bytes:
        body = (_cbytes(self.message_id, MAX_MESSAGE_ID, "message_id")
                + bytes([self.source_ton, self.source_npi])
                + _cbytes(self.source_addr, MAX_ADDRESS, "source_addr"))
        return _HEADER.pack(16 + len(body), QUERY_SM, int(self.command_status),
                            self.sequence_num) + body

    @classmethod
    def from_pdu(cls, data: bytes, header: Any = None, *_codec: Any) -> QuerySm:
        """Decode a whole PDU (header included); ValueError on a malformed body."""
        _, _, status, seq = _HEADER.unpack_from(data)
        message_id, pos = _cstring(data, 16, MAX_MESSAGE_ID, "message_id")
        if len(data) < pos + 2:
            raise ValueError("query_sm ends before source_addr_ton")
        ton, npi = data[pos], data[pos + 1]
        source, _ = _cstring(data, pos + 2, MAX_ADDRESS, "source_addr")
        return cls(message_id, ton, npi, source, seq, status)


@dataclass(slots=True)
class QuerySmResp:
    message_id: str = ""
    final_date: str = ""  # "" while the message is not final
    message_state: int = 0
    error_code: int = 0
    sequence_num: int = 0
    command_status: int = 0
    smpp_command: ClassVar[int] = QUERY_SM_RESP

    def pdu(self) -> bytes:
        if int(self.command_status) != 0:  # an error response has no body (section 4.8.2)
            return _HEADER.pack(16, QUERY_SM_RESP, int(self.command_status), self.sequence_num)
        body = (_cbytes(self.message_id, MAX_MESSAGE_ID, "message_id")
                + _cbytes(self.final_date, DATE_LENGTH, "final_date")
                + bytes([self.message_state, self.error_code]))
        return _HEADER.pack(16 + len(body), QUERY_SM_RESP, 0, self.sequence_num) + body

    @classmethod
    def from_pdu(cls, data: bytes, header: Any = None, *_codec: Any) -> QuerySmResp:
        _, _, status, seq = _HEADER.unpack_from(data)
        if len(data) == 16:
            return cls(sequence_num=seq, command_status=status)
        message_id, pos = _cstring(data, 16, MAX_MESSAGE_ID, "message_id")
        final_date, pos = _cstring(data, pos, DATE_LENGTH, "final_date")
        if len(data) < pos + 2:
            raise ValueError("query_sm_resp ends before message_state")
        return cls(message_id, final_date, data[pos], data[pos + 1], seq, status)


# Command id to class, for the session's decoder table.
PDU_CLASSES: dict[int, Any] = {QUERY_SM: QuerySm, QUERY_SM_RESP: QuerySmResp}

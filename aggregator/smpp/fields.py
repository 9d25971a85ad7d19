"""Raw submit_sm / deliver_sm body fields read straight from the octets: the message bytes with
their UDH, message_payload and the SAR TLVs. aiosmpplib decodes the text but misreads 16-bit
concatenation references and cannot give the octets back, so reassembly reads them here."""

from __future__ import annotations

import struct
from dataclasses import dataclass

# TLV tags (SMPP 3.4 section 5.3.2).
RECEIPTED_MESSAGE_ID = 0x001E
NETWORK_ERROR_CODE = 0x0423
MESSAGE_PAYLOAD = 0x0424
MESSAGE_STATE = 0x0427
SAR_MSG_REF_NUM = 0x020C
SAR_TOTAL_SEGMENTS = 0x020E
SAR_SEGMENT_SEQNUM = 0x020F
HEADER = 16


@dataclass(slots=True, frozen=True)
class Sar:
    reference: int
    total: int
    seq: int


@dataclass(slots=True, frozen=True)
class RawSubmit:
    esm_class: int
    registered_delivery: int
    data_coding: int
    message: bytes  # short_message, or message_payload when that carries the body
    sar: Sar | None


def _cstring_end(data: bytes, pos: int) -> int:
    end = data.index(b"\x00", pos)  # ValueError on a missing terminator
    return end + 1


def parse_submit(pdu: bytes) -> RawSubmit:
    """Parse a whole submit_sm (or deliver_sm) PDU; raises ValueError on malformed octets."""
    try:
        pos = _cstring_end(pdu, HEADER)  # service_type
        pos = _cstring_end(pdu, pos + 2)  # source ton, npi, addr
        pos = _cstring_end(pdu, pos + 2)  # dest ton, npi, addr
        esm_class = pdu[pos]
        pos = _cstring_end(pdu, pos + 3)  # esm_class, protocol_id, priority, schedule time
        pos = _cstring_end(pdu, pos)  # validity period
        registered_delivery, _replace, data_coding, _default_id, sm_length = struct.unpack_from(
            "!BBBBB", pdu, pos
        )
        pos += 5
        message = pdu[pos:pos + sm_length]
        if len(message) != sm_length:
            raise ValueError("short_message runs past the end of the PDU")
        pos += sm_length
        sar: dict[int, int] = {}
        payload: bytes | None = None
        while pos + 4 <= len(pdu):
            tag, length = struct.unpack_from("!HH", pdu, pos)
            value = pdu[pos + 4:pos + 4 + length]
            if len(value) != length:
                raise ValueError(f"TLV 0x{tag:04X} runs past the end of the PDU")
            if tag == MESSAGE_PAYLOAD:
                payload = value
            elif tag in (SAR_MSG_REF_NUM, SAR_TOTAL_SEGMENTS, SAR_SEGMENT_SEQNUM) and length:
                sar[tag] = int.from_bytes(value, "big")
            pos += 4 + length
    except (IndexError, struct.error) as exc:
        raise ValueError(f"truncated PDU: {exc}") from None
    if payload is not None and sm_length:
        raise ValueError("both short_message and message_payload are set")
    info = None
    if len(sar) == 3:
        info = Sar(sar[SAR_MSG_REF_NUM], sar[SAR_TOTAL_SEGMENTS], sar[SAR_SEGMENT_SEQNUM])
    return RawSubmit(esm_class, registered_delivery, data_coding,
                     payload if payload is not None else message, info)

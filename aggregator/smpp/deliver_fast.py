"""deliver_sm decoded without aiosmpplib's general path, for the common shape of a receipt or an
MO: no UDH, no scheduled or validity time, text in short_message (any data_coding aiosmpplib
knows; 0 is GSM 03.38 here). Anything else returns None and aiosmpplib decodes it (and raises
its own errors on a bad body).

The object is the DeliverSm aiosmpplib's from_pdu makes, attribute for attribute
(tests/unit/test_deliver_fast.py compares both over receipts, MOs, TLVs and odd bodies), built
without the constructor's 31 parameter checks: 28-30 -> 9-13 us a receipt here on the loaded
2-core machine, about 3% of the daemon's CPU per message at 1,000 msg/s. The data_coding's
name, the codec and each TLV tag's type are remembered rather than looked up per receipt (an
enum call, aiosmpplib's codec search and a 33-tuple scan): 14-17 -> 8-9 us a receipt.
"""

from __future__ import annotations

import struct
from codecs import CodecInfo
from typing import Any

from aiosmpplib import NPI, TON
from aiosmpplib.codec import GSM_BASIC_DECODE_MAP, find_codec_info
from aiosmpplib.protocol import DEFAULT_ENCODING, DeliverSm, OptionalParam, PhoneNumber
from aiosmpplib.state import SmppDataCoding, tag_data_type

from aggregator.smpp.fields import MESSAGE_PAYLOAD
from aggregator.smpp.header import HEADER_LENGTH
from aggregator.text import GSM7_CODEC

_TAG_LENGTH = struct.Struct("!HH")
_INT_FORMATS = {1: struct.Struct("!B"), 2: struct.Struct("!H"), 4: struct.Struct("!I")}
_TONS = {int(t): t for t in TON}
_NPIS = {int(n): n for n in NPI}


def _c_string(pdu: bytes, index: int) -> tuple[str, int]:
    end = pdu.index(b"\0", index)
    return pdu[index:end].decode("ascii"), end + 1


def _number(pdu: bytes, index: int) -> tuple[PhoneNumber, int] | None:
    ton, npi = _TONS.get(pdu[index]), _NPIS.get(pdu[index + 1])
    number, index = _c_string(pdu, index + 2)
    if ton is None or npi is None or len(number) > 20:
        return None  # aiosmpplib refuses these: let it say why
    phone = PhoneNumber.__new__(PhoneNumber)
    phone.__dict__.update(number=number, ton=ton, npi=npi)
    return phone, index


def _optional(tag: int, value: object) -> OptionalParam:
    param = OptionalParam.__new__(OptionalParam)
    param.__dict__.update(tag=tag, value=value)
    return param


# tag_data_type's answers, remembered (it tests a 33-tuple per call); bounded by 65,536 tags.
_TAG_TYPES: dict[int, type] = {}
# data_coding -> aiosmpplib's encoding name, and (encoding, codecs) -> codec, remembered.
_ENCODINGS: dict[int, str] = {int(dc): dc.name for dc in SmppDataCoding}
_CODECS: dict[str, tuple[dict[str, CodecInfo], CodecInfo]] = {}


def _tag_type(tag: int) -> type:
    kind = _TAG_TYPES.get(tag)
    if kind is None:
        kind = _TAG_TYPES[tag] = tag_data_type(tag)
    return kind


def _codec(encoding: str, codecs: dict[str, CodecInfo]) -> CodecInfo:
    found = _CODECS.get(encoding)
    if found is not None and found[0] is codecs:  # the session's one table, in practice
        return found[1]
    codec: CodecInfo = find_codec_info(encoding, codecs)
    _CODECS[encoding] = (codecs, codec)
    return codec


# The octets GSM 03.38 decodes to the same ASCII character (letters, digits, space and most
# punctuation): a text of only these, as receipts are, decodes as ASCII in one call (a receipt's
# text 3.2 -> 0.3 us here).
_SAME_IN_ASCII = bytes(b for b in range(0x80) if GSM_BASIC_DECODE_MAP.get(b) == chr(b))


def _text(raw: bytes, codec: CodecInfo) -> str:
    """`raw` decoded with `codec`."""
    if codec is GSM7_CODEC and not raw.translate(None, _SAME_IN_ASCII):
        return raw.decode("ascii")
    text: str = codec.decode(raw)[0]
    return text


def _tlv_values(pdu: bytes, index: int) -> list[tuple[int, object]] | None:
    """(tag, value) of each TLV from `index` on, valued as aiosmpplib values them."""
    params: list[tuple[int, object]] = []
    end = len(pdu)
    tag_length = _TAG_LENGTH.unpack_from
    while index < end:
        tag, length = tag_length(pdu, index)
        index += 4
        kind = _tag_type(tag)
        if tag == MESSAGE_PAYLOAD:
            return None
        if kind is int:
            unpack = _INT_FORMATS.get(length)
            if unpack is None:
                return None
            params.append((tag, unpack.unpack_from(pdu, index)[0]))
        elif kind is bool:
            params.append((tag, True))
        else:
            text = pdu[index:index + length].decode("ascii")
            params.append((tag, text[:-1] if text.endswith("\0") else text))
        index += length
    return params


def _tlvs(pdu: bytes, index: int) -> list[OptionalParam] | None:
    values = _tlv_values(pdu, index)
    return None if values is None else [_optional(tag, value) for tag, value in values]


def decode_deliver_sm(pdu: bytes, command_status: Any, seq: int,
                      codecs: dict[str, CodecInfo]) -> DeliverSm | None:
    """The DeliverSm of a whole PDU (header included), or None when aiosmpplib must decode it."""
    try:
        return _decode(pdu, command_status, seq, codecs)
    except Exception:  # a short or odd body: aiosmpplib's path decides what it is
        return None


def _decode(pdu: bytes, command_status: Any, seq: int,
            codecs: dict[str, CodecInfo]) -> DeliverSm | None:
    service_type, index = _c_string(pdu, HEADER_LENGTH)
    source = _number(pdu, index)
    if source is None or len(service_type) > 5:
        return None
    destination = _number(pdu, source[1])
    if destination is None:
        return None
    index = destination[1]
    esm_class, protocol_id, priority_flag = pdu[index], pdu[index + 1], pdu[index + 2]
    if esm_class & 0x40 or pdu[index + 3] or pdu[index + 4]:
        return None  # UDH, or a scheduled / validity time
    index += 5
    registered_delivery, replace_if_present, data_coding = (
        pdu[index], pdu[index + 1], pdu[index + 2])
    sm_default_msg_id, sm_length = pdu[index + 3], pdu[index + 4]
    index += 5
    encoding = _ENCODINGS[data_coding] if data_coding else DEFAULT_ENCODING  # KeyError: None
    codec = _codec(encoding, codecs)
    raw = pdu[index:index + sm_length]
    if len(raw) != sm_length or not sm_length:
        return None
    short_message = _text(raw, codec)
    params = _tlvs(pdu, index + sm_length)
    if params is None or not short_message:
        return None
    message = DeliverSm.__new__(DeliverSm)
    message.__dict__.update(
        log_id="", extra_data="", sequence_num=seq, command_status=command_status,
        short_message=short_message, source=source[0], destination=destination[0],
        service_type=service_type, esm_class=esm_class, protocol_id=protocol_id,
        priority_flag=priority_flag, schedule_delivery_time=None, validity_period=None,
        registered_delivery=registered_delivery, replace_if_present_flag=replace_if_present,
        encoding=encoding if encoding != DEFAULT_ENCODING else None,
        sm_default_msg_id=sm_default_msg_id, message_payload="", optional_params=params,
        auto_message_payload=True, error_handling="strict",
        _default_encoding=DEFAULT_ENCODING, _custom_codecs=None, _encoded_message=b"",
        _parsed_receipt=None,
    )
    return message


class ReceiptPdu:
    """A delivery receipt's deliver_sm decoded only as far as a receipt is read: its text (as
    DeliverSm.short_message) and its TLVs by tag (the last of a repeated tag, as a dict made
    from DeliverSm.optional_params). What a session with `lean_receipts` hands on instead of a
    DeliverSm: no PhoneNumber, OptionalParam or DeliverSm objects (decoded and parsed as a
    receipt, 11.6-12.2 -> 8.1-8.5 us here on the loaded machine; test_receipt_lean.py)."""

    __slots__ = ("sequence_num", "text", "tlvs")

    def __init__(self, sequence_num: int, text: str, tlvs: dict[int, object]) -> None:
        self.sequence_num = sequence_num
        self.text = text
        self.tlvs = tlvs


def decode_receipt(pdu: bytes, seq: int, codecs: dict[str, CodecInfo]) -> ReceiptPdu | None:
    """The ReceiptPdu of a whole deliver_sm (header included) that is a delivery receipt and that
    decode_deliver_sm decodes; None for anything else (an MO, or a shape it declines)."""
    try:
        return _receipt(pdu, seq, codecs)
    except Exception:  # a short or odd body: the full path decides what it is
        return None


def _address_end(pdu: bytes, index: int) -> int | None:
    """Where the address at `index` (ton, npi, NUL-ended ASCII) ends; None where _number
    declines it."""
    if pdu[index] not in _TONS or pdu[index + 1] not in _NPIS:
        return None
    end = pdu.index(b"\0", index + 2)
    if end - index - 2 > 20:
        return None
    pdu[index + 2:end].decode("ascii")  # raises, as _c_string does, on a non-ASCII octet
    return end + 1


def _receipt(pdu: bytes, seq: int, codecs: dict[str, CodecInfo]) -> ReceiptPdu | None:
    # The checks of _decode, in its order, without building what a receipt does not read.
    service_type, index = _c_string(pdu, HEADER_LENGTH)
    source_end = _address_end(pdu, index)
    if source_end is None or len(service_type) > 5:
        return None
    destination_end = _address_end(pdu, source_end)
    if destination_end is None:
        return None
    index = destination_end
    esm_class = pdu[index]
    if esm_class & 0x3C != 0x04:
        return None  # not a receipt (DeliverSm.is_receipt)
    if esm_class & 0x40 or pdu[index + 3] or pdu[index + 4]:
        return None
    index += 10
    data_coding, sm_length = pdu[index - 3], pdu[index - 1]
    encoding = _ENCODINGS[data_coding] if data_coding else DEFAULT_ENCODING  # KeyError: None
    raw = pdu[index:index + sm_length]
    if len(raw) != sm_length or not sm_length:
        return None
    text = _text(raw, _codec(encoding, codecs))
    values = _tlv_values(pdu, index + sm_length)
    if values is None or not text:
        return None
    return ReceiptPdu(seq, text, dict(values))

"""deliver_fast.decode_deliver_sm gives, for every deliver_sm it decides, the DeliverSm
aiosmpplib's from_pdu gives (attribute for attribute), and declines whatever it does not handle
(UDH, message_payload, times, odd or broken bodies) so aiosmpplib decodes or refuses those as
before. The micro-benchmark guards what the short cut buys on the receipt path."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import Any

from aiosmpplib import NPI, TON
from aiosmpplib.protocol import DeliverSm, OptionalParam, PhoneNumber

from aggregator.smpp.deliver_fast import decode_deliver_sm
from aggregator.smpp.header import HEADER
from aggregator.smpp.session import decode_pdu, request_status
from aggregator.text import GSM7_CODECS

RECEIPT = ("id:0123456789abcdef sub:001 dlvrd:001 submit date:2612041200 done date:2612041200 "
           "stat:DELIVRD err:000 text:")


def _pdu(text: str = RECEIPT, esm_class: int = 4, seq: int = 7, **kw: Any) -> bytes:
    message = DeliverSm(
        short_message=text, esm_class=esm_class,
        source=kw.pop("source", PhoneNumber("38344123456", TON.INTERNATIONAL, NPI.ISDN)),
        destination=kw.pop("destination", PhoneNumber("SMSAGG", TON.ALPHANUMERIC, NPI.UNKNOWN)),
        **kw)
    message.sequence_num = seq
    message.set_encoding_info("gsm0338", GSM7_CODECS)
    return bytes(message.pdu())


def _with_status(pdu: bytes, status: int) -> bytes:
    return pdu[:8] + struct.pack("!I", status) + pdu[12:]


def _corpus() -> list[bytes]:
    tlvs = [OptionalParam(0x001E, "0123456789abcdef"), OptionalParam(0x0427, 2)]
    good = [
        _pdu(),
        _pdu(optional_params=tlvs),
        _pdu(optional_params=[*tlvs, OptionalParam(0x0425, 1), OptionalParam(0x1400, "vendor")]),
        _pdu("stat:UNDELIV err:001 id:abc", esm_class=0x04, service_type="CMT"),
        _pdu("hello from a handset", esm_class=0),  # an MO
        _pdu("Ünïcödé MO 🙂", esm_class=0, encoding="ucs2"),
        _pdu("€ [brackets] {braces}", esm_class=0),
        _pdu(source=PhoneNumber("12345", TON.NATIONAL, NPI.ISDN), registered_delivery=0,
             protocol_id=3, priority_flag=1),
        _with_status(_pdu(), 0x0000000A),
        _with_status(_pdu(), 0x00000400),  # a status aiosmpplib does not know
    ]
    declined = [
        _pdu("x" * 300, esm_class=0),  # message_payload
        _pdu(esm_class=0x44),  # UDH flag
    ]
    base = _pdu(optional_params=tlvs)
    broken = [
        base[:20], base[:-3], base[:16] + b"LONGSERVICE\0" + base[17:],
        base[:17] + b"\x09" + base[18:],  # an unknown TON
        _pdu(text="x")[:-1] + b"",  # short_message cut
        base + b"\x00\x1e\x00",  # a TLV cut
        base + b"\x04\x27\x00\x03abc",  # an int TLV of 3 octets
    ]
    return good + declined + broken


def _slow(pdu: bytes) -> Any:
    _, command_id, status, seq = HEADER.unpack_from(pdu, 0)
    try:
        return decode_pdu(DeliverSm, pdu, len(pdu), command_id, status, seq)
    except Exception as exc:
        return exc


def _fast(pdu: bytes) -> DeliverSm | None:
    _, _, status, seq = HEADER.unpack_from(pdu, 0)
    return decode_deliver_sm(pdu, request_status(status), seq, GSM7_CODECS)


def test_fast_decode_is_aiosmpplibs() -> None:
    decided = 0
    for pdu in _corpus():
        fast, slow = _fast(pdu), _slow(pdu)
        if fast is None:
            continue
        decided += 1
        assert isinstance(slow, DeliverSm), (pdu, slow)
        assert vars(fast) == vars(slow), pdu
        assert fast.parse_receipt() == slow.parse_receipt()
    assert decided == 10  # every good one, and nothing else


def test_receipts_and_mos_take_the_fast_path() -> None:
    assert _fast(_pdu()) is not None
    assert _fast(_pdu("an MO", esm_class=0)) is not None
    assert _fast(_pdu(esm_class=0x44)) is None


def test_fast_decode_micro_benchmark() -> None:
    """9-13 vs 28-30 us a receipt when measured; the bound is loose for a loaded machine."""
    pdu = _pdu(optional_params=[OptionalParam(0x001E, "0123456789abcdef"),
                                OptionalParam(0x0427, 2)])

    def cost(decode: Callable[[bytes], Any]) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.process_time()
            for _ in range(500):
                decode(pdu)
            best = min(best, time.process_time() - start)
        return best

    assert cost(_fast) < cost(_slow) / 2

"""resp_fast decodes submit_sm_resp / deliver_sm_resp into the object aiosmpplib's from_pdu makes
(attribute for attribute, known and unknown statuses, empty and odd bodies), declines what
aiosmpplib refuses, and encodes deliver_sm_resp to aiosmpplib's octets. The session takes the
short cut; the micro-benchmark guards what it buys."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from aiosmpplib import DeliverSmResp, SubmitSmResp
from aiosmpplib.state import SmppCommandStatus

from aggregator.smpp.header import HEADER
from aggregator.smpp.resp_fast import (
    DELIVER_SM_RESP,
    SUBMIT_SM_RESP,
    decode_message_id_resp,
    deliver_sm_resp,
)
from aggregator.smpp.session import decode_pdu
from aggregator.smpp.status import CommandStatus


def _pdu(command_id: int, body: bytes, status: int = 0, seq: int = 9) -> bytes:
    return HEADER.pack(16 + len(body), command_id, status, seq) + body


def _status_arg(status: int) -> Any:
    """What the session passes: aiosmpplib's member for a status it knows, else the number."""
    try:
        return SmppCommandStatus(status)
    except ValueError:
        return status


CASES = [
    (cmd, body, status)
    for cmd in (SUBMIT_SM_RESP, DELIVER_SM_RESP)
    for body in (b"abc123\0", b"\0", b"", b"no-nul", b"x" * 64 + b"\0")
    for status in (0, 0x58, 0x400)
]


@pytest.mark.parametrize(("command_id", "body", "status"), CASES)
def test_same_object_as_aiosmpplib(command_id: int, body: bytes, status: int) -> None:
    data = _pdu(command_id, body, status)
    cls = SubmitSmResp if command_id == SUBMIT_SM_RESP else DeliverSmResp
    slow = decode_pdu(cls, data, len(data), command_id, status, 9)
    fast = decode_message_id_resp(cls, data, _status_arg(status), 9)
    assert type(fast) is type(slow)
    assert fast.__dict__ == slow.__dict__
    assert fast.pdu() == slow.pdu()


@pytest.mark.parametrize("body", [b"x" * 65 + b"\0", "é".encode() + b"\0"])
def test_declines_what_aiosmpplib_refuses(body: bytes) -> None:
    data = _pdu(SUBMIT_SM_RESP, body)
    assert decode_message_id_resp(SubmitSmResp, data, 0, 9) is None
    with pytest.raises(Exception):  # noqa: B017 - aiosmpplib raises its own types
        decode_pdu(SubmitSmResp, data, len(data), SUBMIT_SM_RESP, 0, 9)


@pytest.mark.parametrize("status", [0, CommandStatus.ESME_RTHROTTLED, 0x400])
def test_deliver_sm_resp_octets(status: int) -> None:
    resp = DeliverSmResp()
    resp.sequence_num = 77
    resp.command_status = status
    assert deliver_sm_resp(77, status) == resp.pdu()


def _cost(fn: Callable[[], object], n: int = 20_000) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def test_short_cut_is_cheaper() -> None:
    """A loose guard (half, where it measures a quarter): the short cut must not fall back to
    aiosmpplib's checked constructor on the usual response."""
    data = _pdu(SUBMIT_SM_RESP, b"0123456789abcdef\0")
    slow = min(_cost(lambda: decode_pdu(SubmitSmResp, data, len(data), SUBMIT_SM_RESP, 0, 9))
               for _ in range(3))
    fast = min(_cost(lambda: decode_message_id_resp(SubmitSmResp, data, 0, 9)) for _ in range(3))
    print(f"submit_sm_resp decode: aiosmpplib {slow:.2f} us, short cut {fast:.2f} us")
    assert fast * 2 < slow

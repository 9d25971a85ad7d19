"""parse_receipt searches the text only for what the TLVs lack: the same result as searching
it for everything, in less time for the usual receipt (both TLVs)."""

from __future__ import annotations

import re
import time
from typing import Any

from aggregator.receipts import (
    _STAT_TO_STATUS,
    _STATE_NAMES,
    _STATE_TO_STATUS,
    MESSAGE_STATE,
    NETWORK_ERROR_CODE,
    RECEIPTED_MESSAGE_ID,
    ParsedReceipt,
    parse_receipt,
)

TEXT = ("id:0123456789abcdef sub:001 dlvrd:001 submit date:2612041640 done date:2612041640 "
        "stat:DELIVRD err:000 text:")


# The searches as they were, each with its `\b` (parse_receipt checks the boundary itself).
_ID_RE = re.compile(r"\bid:(\S+)", re.IGNORECASE)
_STAT_RE = re.compile(r"\bstat:(\w+)", re.IGNORECASE)
_ERR_RE = re.compile(r"\berr:(\w+)", re.IGNORECASE)


def searching_everything(text: str, tlvs: dict[int, Any]) -> ParsedReceipt | None:
    """The reference: all three searches, then the TLVs win where present."""
    m_id, m_stat, m_err = _ID_RE.search(text), _STAT_RE.search(text), _ERR_RE.search(text)
    msg_id = tlvs.get(RECEIPTED_MESSAGE_ID) or (m_id.group(1) if m_id else None)
    state = tlvs.get(MESSAGE_STATE)
    status, stat = None, ""
    if isinstance(state, int) and state in _STATE_TO_STATUS:
        status, stat = _STATE_TO_STATUS[state], _STATE_NAMES[state]
    elif m_stat is not None:
        stat = m_stat.group(1).upper()
        status = _STAT_TO_STATUS.get(stat)
    if not msg_id or status is None:
        return None
    err = m_err.group(1) if m_err else None
    if err is None and tlvs.get(NETWORK_ERROR_CODE):
        err = str(tlvs[NETWORK_ERROR_CODE])
    return ParsedReceipt(str(msg_id).strip("\x00"), status, stat, err)


CASES: list[tuple[str, dict[int, Any]]] = [
    (TEXT, {RECEIPTED_MESSAGE_ID: "0123456789abcdef", MESSAGE_STATE: 2}),
    (TEXT, {}),
    (TEXT, {MESSAGE_STATE: 5}),
    (TEXT, {RECEIPTED_MESSAGE_ID: "other\x00"}),
    (TEXT, {RECEIPTED_MESSAGE_ID: "", MESSAGE_STATE: 9}),
    ("stat:UNDELIV", {RECEIPTED_MESSAGE_ID: "x", NETWORK_ERROR_CODE: b"\x03\x00\x01"}),
    ("id:1 stat:WHATEVER", {}),
    ("", {RECEIPTED_MESSAGE_ID: "x", MESSAGE_STATE: 8, NETWORK_ERROR_CODE: 7}),
    ("", {}),
    # Word boundaries: a field name inside a word is not the field.
    ("xid:1 aerr:5 _stat:UNDELIV id:2 stat:DELIVRD err:7", {}),
    ("éid:1 ÿerr:2 ĳstat:EXPIRED İD:3 ſtat:REJECTD ERR:abc", {}),
    ("-id:9,stat:ACCEPTD;err:", {}),
    ("id: 5 stat: DELIVRD err: 1 id:6 stat:EXPIRED err:2", {}),
    ("submit date:2612041640 xstat:DELIVRD", {RECEIPTED_MESSAGE_ID: "x"}),
]


def test_same_result_as_searching_everything() -> None:
    for text, tlvs in CASES:
        assert parse_receipt(text, tlvs) == searching_everything(text, tlvs), (text, tlvs)


def test_the_usual_receipt_costs_less() -> None:
    """Micro-benchmark (best of 3, 20,000 receipts): 5.4 -> 3.0 µs here."""
    tlvs = CASES[0][1]

    def best(parse: Any) -> float:
        times = []
        for _ in range(3):
            started = time.process_time()
            for _ in range(20_000):
                parse(TEXT, tlvs)
            times.append(time.process_time() - started)
        return min(times)

    assert best(parse_receipt) < best(searching_everything)

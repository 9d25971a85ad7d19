"""Receipts: parsing (text format and TLVs), id normalisation, and the processor over a store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aggregator.model import (
    FinalNotice,
    Message,
    MessageStatus,
    ReceiptUpdate,
    SegmentSubmit,
)
from aggregator.receipts import (
    MESSAGE_STATE,
    RECEIPTED_MESSAGE_ID,
    ParsedReceipt,
    ReceiptProcessor,
    normalise_receipt_id,
    normalise_submit_id,
    parse_receipt,
    receipt_error,
)
from aggregator.store.sqlite import SqliteStore
from tests.store_helpers import make_message, opened_sqlite

NOW = 1_700_000_000.0


def text_receipt(
    stat: str,
    err: str = "000",
    *,
    msg_id: str = "0123456789",
    submit_date: str = "2401011200",
    done_date: str = "2401011201",
) -> str:
    dlvrd = "001" if stat == "DELIVRD" else "000"
    return (
        f"id:{msg_id} sub:001 dlvrd:{dlvrd} submit date:{submit_date} done date:{done_date}"
        f" stat:{stat} err:{err} text:Your code is 1234"
    )


# ---- parse_receipt: text format ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("stat", "err", "status"),
    [
        ("DELIVRD", "000", MessageStatus.DELIVERED),
        ("UNDELIV", "034", MessageStatus.UNDELIVERABLE),
        ("EXPIRED", "000", MessageStatus.EXPIRED),
        ("REJECTD", "011", MessageStatus.REJECTED),
        ("ACCEPTD", "000", MessageStatus.SUBMITTED),  # intermediate: still on its way
        ("ENROUTE", "000", MessageStatus.SUBMITTED),
        ("DELETED", "000", MessageStatus.UNDELIVERABLE),
    ],
)
def test_parse_text_receipt(stat: str, err: str, status: MessageStatus) -> None:
    parsed = parse_receipt(text_receipt(stat, err), {})

    assert parsed == ParsedReceipt("0123456789", status, stat, err)


def test_parse_text_receipt_error_text() -> None:
    undeliv = parse_receipt(text_receipt("UNDELIV", "034"), {})
    delivered = parse_receipt(text_receipt("DELIVRD", "000"), {})
    assert undeliv is not None
    assert delivered is not None

    assert receipt_error(undeliv) == "UNDELIV err:034"
    assert receipt_error(delivered) is None


@pytest.mark.parametrize(
    ("submit_date", "done_date"),
    [
        ("2401011200", "2401011201"),  # YYMMDDhhmm
        ("240101120000", "240101120105"),  # with seconds
        ("202401011200", "202401011201"),  # 4-digit year
        ("20240101120000", "20240101120105"),  # 4-digit year and seconds
    ],
)
def test_parse_text_receipt_date_forms(submit_date: str, done_date: str) -> None:
    text = text_receipt("UNDELIV", "001", submit_date=submit_date, done_date=done_date)

    parsed = parse_receipt(text, {})

    assert parsed == ParsedReceipt("0123456789", MessageStatus.UNDELIVERABLE, "UNDELIV", "001")


def test_parse_text_receipt_is_case_insensitive() -> None:
    parsed = parse_receipt("ID:abc123 SUB:001 DLVRD:001 STAT:delivrd ERR:000", {})

    assert parsed == ParsedReceipt("abc123", MessageStatus.DELIVERED, "DELIVRD", "000")


# ---- parse_receipt: TLVs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "status", "stat"),
    [
        (1, MessageStatus.SUBMITTED, "ENROUTE"),
        (2, MessageStatus.DELIVERED, "DELIVRD"),
        (3, MessageStatus.EXPIRED, "EXPIRED"),
        (5, MessageStatus.UNDELIVERABLE, "UNDELIV"),
        (6, MessageStatus.SUBMITTED, "ACCEPTD"),
        (8, MessageStatus.REJECTED, "REJECTD"),
    ],
)
def test_parse_tlv_only_receipt(state: int, status: MessageStatus, stat: str) -> None:
    parsed = parse_receipt("", {RECEIPTED_MESSAGE_ID: "5f3a9c", MESSAGE_STATE: state})

    assert parsed == ParsedReceipt("5f3a9c", status, stat, None)


def test_tlv_message_id_loses_its_nul_terminator() -> None:
    parsed = parse_receipt("", {RECEIPTED_MESSAGE_ID: "5f3a9c\x00", MESSAGE_STATE: 2})

    assert parsed is not None
    assert parsed.provider_msg_id == "5f3a9c"


def test_tlv_wins_over_text_when_they_disagree() -> None:
    text = text_receipt("DELIVRD", "000", msg_id="111")
    tlvs: dict[int, Any] = {RECEIPTED_MESSAGE_ID: "222", MESSAGE_STATE: 5}

    parsed = parse_receipt(text, tlvs)

    assert parsed is not None
    assert parsed.provider_msg_id == "222"
    assert parsed.status is MessageStatus.UNDELIVERABLE
    assert parsed.stat == "UNDELIV"


def test_text_fills_what_tlvs_lack() -> None:
    only_id = parse_receipt(text_receipt("EXPIRED", msg_id="111"), {RECEIPTED_MESSAGE_ID: "222"})
    only_state = parse_receipt(text_receipt("DELIVRD", msg_id="111"), {MESSAGE_STATE: 3})
    unknown_state = parse_receipt(text_receipt("DELIVRD", msg_id="111"), {MESSAGE_STATE: 99})

    assert only_id == ParsedReceipt("222", MessageStatus.EXPIRED, "EXPIRED", "000")
    assert only_state == ParsedReceipt("111", MessageStatus.EXPIRED, "EXPIRED", "000")
    assert unknown_state == ParsedReceipt("111", MessageStatus.DELIVERED, "DELIVRD", "000")


@pytest.mark.parametrize(
    ("text", "tlvs"),
    [
        ("", {}),
        ("hello, this is a reply", {}),
        ("id:123 sub:001 dlvrd:001", {}),  # no state
        ("sub:001 dlvrd:001 stat:DELIVRD err:000", {}),  # no id
        ("id:123 stat:WHATEVER err:000", {}),  # a state nobody defined
        ("", {MESSAGE_STATE: 2}),  # TLV state, no id anywhere
        ("", {RECEIPTED_MESSAGE_ID: "abc"}),  # TLV id, no state anywhere
        ("", {RECEIPTED_MESSAGE_ID: "abc", MESSAGE_STATE: 42}),  # unknown TLV state
    ],
)
def test_unparsable_receipt_is_none(text: str, tlvs: dict[int, Any]) -> None:
    assert parse_receipt(text, tlvs) is None


# ---- id normalisation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "submit_id", "receipt_id", "canonical"),
    [
        ("as_is", "AB-12cd", "AB-12cd", "AB-12cd"),
        ("hex_to_dec", "1a2b", "6699", "6699"),
        ("hex_to_dec", "1A2B", "6699", "6699"),
        ("hex_to_dec", "00001a2b", "0000006699", "6699"),  # leading zeros on both sides
        ("dec_to_hex", "6699", "1a2b", "1a2b"),
        ("dec_to_hex", "6699", "1A2B", "1a2b"),
        ("dec_to_hex", "0006699", "001a2b", "1a2b"),
    ],
)
def test_submit_and_receipt_ids_normalise_to_the_same_form(
    mode: str, submit_id: str, receipt_id: str, canonical: str
) -> None:
    assert normalise_submit_id(submit_id, mode) == canonical
    assert normalise_receipt_id(receipt_id, mode) == canonical


def test_as_is_keeps_leading_zeros() -> None:
    assert normalise_submit_id("000123", "as_is") == "000123"
    assert normalise_receipt_id("000123", "as_is") == "000123"
    assert normalise_submit_id("000123", "as_is") != normalise_receipt_id("123", "as_is")


@pytest.mark.parametrize("mode", ["hex_to_dec", "dec_to_hex"])
def test_ids_that_do_not_convert_stay_as_they_are(mode: str) -> None:
    assert normalise_submit_id("not-a-number", mode) == "not-a-number"
    assert normalise_receipt_id("not-a-number", mode) == "not-a-number"


# ---- ReceiptProcessor over a real store -------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with opened_sqlite(tmp_path / "smsagg.db") as s:
        yield s


class Finals:
    """Records on_final calls; `first` resolves on the first one."""

    def __init__(self) -> None:
        self.notices: list[FinalNotice] = []
        self.first: asyncio.Future[FinalNotice] = asyncio.get_running_loop().create_future()

    def __call__(self, notice: FinalNotice) -> None:
        self.notices.append(notice)
        if not self.first.done():
            self.first.set_result(notice)


@pytest.fixture
async def finals() -> Finals:
    return Finals()


@pytest.fixture
async def processor(store: SqliteStore, finals: Finals) -> AsyncIterator[ReceiptProcessor]:
    p = ReceiptProcessor(store, finals)
    try:
        yield p
    finally:
        await p.close()


async def submitted_message(store: SqliteStore, msg_id: str, segments: int = 1) -> Message:
    m = make_message(message_id=msg_id, segments=segments, created_at=NOW,
                     reference=f"ref-{msg_id}")
    await store.accept(m, None)
    await store.claim_due(NOW, 100)
    await store.record_submitted(
        msg_id, "opA", [SegmentSubmit(s, f"{msg_id}-{s}") for s in range(1, segments + 1)], NOW
    )
    return m


def update(provider_msg_id: str, status: MessageStatus = MessageStatus.DELIVERED) -> ReceiptUpdate:
    return ReceiptUpdate("opA", provider_msg_id, status, None, NOW + 5)


async def test_processor_apply_returns_matched_and_final(
    store: SqliteStore, processor: ReceiptProcessor, finals: Finals
) -> None:
    await submitted_message(store, "m1")

    result = await processor.apply(update("m1-1"))

    assert result.matched
    assert result.message_id == "m1"
    assert result.final is not None
    assert result.final.status is MessageStatus.DELIVERED
    assert result.final.reference == "ref-m1"
    assert finals.notices == [result.final]


async def test_processor_calls_on_final_once(
    store: SqliteStore, processor: ReceiptProcessor, finals: Finals
) -> None:
    await submitted_message(store, "m1", segments=2)

    enroute = await processor.apply(update("m1-1", MessageStatus.SUBMITTED))
    part1 = await processor.apply(update("m1-1"))
    assert enroute.final is None
    assert part1.final is None
    assert finals.notices == []

    part2 = await processor.apply(update("m1-2"))
    duplicate = await processor.apply(update("m1-2"))

    assert part2.final is not None
    assert duplicate.matched
    assert duplicate.final is None
    assert finals.notices == [part2.final]


async def test_receipts_in_one_loop_turn_share_one_store_commit(
    store: SqliteStore, processor: ReceiptProcessor, finals: Finals
) -> None:
    for msg_id in ("m1", "m2", "m3"):
        await submitted_message(store, msg_id)
    before = store.commits

    results = await asyncio.gather(*(processor.apply(update(f"{i}-1")) for i in ("m1", "m2", "m3")))

    assert [r.message_id for r in results] == ["m1", "m2", "m3"]
    assert store.commits - before == 1
    assert sorted(n.message_id for n in finals.notices) == ["m1", "m2", "m3"]


async def test_receipt_that_overtakes_its_submit_is_applied_on_retry(
    store: SqliteStore, processor: ReceiptProcessor, finals: Finals
) -> None:
    m = make_message(message_id="m1", created_at=NOW)
    await store.accept(m, None)
    await store.claim_due(NOW, 10)

    processor.UNMATCHED_DELAYS = (0.01,) * 500  # keep looking until the submit is committed
    early = asyncio.ensure_future(processor.apply(update("m1-1")))
    first = await store.apply_receipts([update("m1-1")])  # what the processor sees at first
    assert not first[0].matched and not early.done()
    assert finals.notices == []

    await store.record_submitted("m1", "opA", [SegmentSubmit(1, "m1-1")], NOW)
    result = await asyncio.wait_for(early, timeout=10)  # only now may it be acknowledged
    assert result.matched
    notice = await asyncio.wait_for(finals.first, timeout=10)

    assert notice.message_id == "m1"
    assert notice.status is MessageStatus.DELIVERED
    assert len(finals.notices) == 1

"""Helpers the daemon and the simulator share (one copy each): the token bucket's run-time
rate change, SMPP receipt PDUs and dates, and the simulator's view of received octets."""

from __future__ import annotations

from aiosmpplib import NPI, TON, PhoneNumber

from aggregator.ratelimit import TokenBucket
from aggregator.smpp.deliver_pdu import mo_pdu, receipt_pdu, receipt_text
from aggregator.smpp.fields import parse_submit
from aggregator.timefmt import smpp_date


def test_set_rate_refills_at_the_old_rate_up_to_the_new_burst() -> None:
    now = [0.0]
    bucket = TokenBucket(10.0, burst=10.0, clock=lambda: now[0])
    assert all(bucket.try_take() == 0.0 for _ in range(10))
    assert bucket.try_take() > 0  # empty
    now[0] = 0.5  # five tokens at the old rate of 10/s...
    bucket.set_rate(2.0, burst=2.0)
    assert (bucket.rate, bucket.max_rate, bucket.burst) == (2.0, 2.0, 2.0)
    assert bucket.try_take() == 0.0 and bucket.try_take() == 0.0
    assert bucket.try_take() == 0.5  # ...capped at the new burst of 2; one more in 1/2 s


def test_receipt_text_and_pdu() -> None:
    submitted = 1767225600.0  # 2026-01-01 00:00:00 UTC
    assert smpp_date(submitted + 61) == "2601010001"
    assert receipt_text("a1", "UNDELIV", False, submitted, submitted + 61) == (
        "id:a1 sub:001 dlvrd:000 submit date:2601010000 done date:2601010001"
        " stat:UNDELIV err:001 text:"
    )
    pdu = receipt_pdu("a1", "DELIVRD", 2, submitted, submitted,
                      source=PhoneNumber("4179", TON(1), NPI(1)),
                      destination=PhoneNumber("Shop", TON(5), NPI(0)))
    assert pdu.esm_class == 0x04 and pdu.short_message.startswith("id:a1 sub:001 dlvrd:001")
    assert {p.tag: p.value for p in pdu.optional_params} == {0x001E: "a1", 0x0427: 2}


def test_mo_pdu_is_gsm_when_the_text_fits_else_ucs2() -> None:
    handset, sender = PhoneNumber("4179", TON(1), NPI(1)), PhoneNumber("4178", TON(1), NPI(1))
    for text, data_coding in (("Yes @ 5€", 0), ("Да", 8)):
        fields = parse_submit(mo_pdu(text, handset, sender).pdu())  # deliver_sm: same layout
        assert (fields.esm_class, fields.data_coding) == (0, data_coding), text

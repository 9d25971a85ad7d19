from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.model import ErrorCode, Sender, SenderKind
from aggregator.numbers import (
    Destination,
    NumberError,
    SenderError,
    parse_destination,
    parse_sender,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+38344123456", Destination("+38344123456", "XK", "mobile")),
        ("+77011234567", Destination("+77011234567", "KZ", "mobile")),
        ("+14155552671", Destination("+14155552671", "US", "fixed_line_or_mobile")),
        ("+1 (415) 555-2671", Destination("+14155552671", "US", "fixed_line_or_mobile")),
        ("0038344123456", Destination("+38344123456", "XK", "mobile")),
        ("  +383 44 123 456 ", Destination("+38344123456", "XK", "mobile")),
    ],
)
def test_valid_destinations(raw: str, expected: Destination) -> None:
    assert parse_destination(raw) == expected


@pytest.mark.parametrize("raw", ["+38338123456", "+77172123456"])
def test_fixed_line_is_left_to_the_country_rules(raw: str) -> None:
    # Issue 19 item 9: landlines_supported decides (policy.rules.check_landline), not numbers.py.
    assert parse_destination(raw).number_type == "fixed_line"


def test_toll_free_is_not_mobile() -> None:
    with pytest.raises(NumberError) as exc:
        parse_destination("+18002345678")
    assert exc.value.code is ErrorCode.NOT_MOBILE
    assert "toll-free" in str(exc.value)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("hello", "not a phone number"),
        ("+3834412abc", "not a phone number"),
        ("", "empty"),
        ("38344123456", "missing country code"),
        ("+38344", "too short"),
        ("+383441234567890123", "too long"),
        ("+999123456", "country code"),
        ("+38399999999", "invalid"),
    ],
)
def test_invalid_destinations(raw: str, why: str) -> None:
    with pytest.raises(NumberError) as exc:
        parse_destination(raw)
    assert exc.value.code is ErrorCode.INVALID_NUMBER
    assert why in str(exc.value)
    assert isinstance(exc.value, ValueError)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+38344123456", Sender("+38344123456", SenderKind.INTERNATIONAL)),
        ("123", Sender("123", SenderKind.SHORTCODE)),
        ("12345678", Sender("12345678", SenderKind.SHORTCODE)),
        ("MyShop", Sender("MyShop", SenderKind.ALPHANUMERIC)),
        ("A&B Co. 24!", Sender("A&B Co. 24!", SenderKind.ALPHANUMERIC)),
        ("x", Sender("x", SenderKind.ALPHANUMERIC)),
    ],
)
def test_valid_senders(raw: str, expected: Sender) -> None:
    assert parse_sender(raw) == expected


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("TwelveLetter", "longer than 11"),
        ("Shop#1", "contains '#'"),
        ("Café", "contains 'é'"),
        ("12", "short code has 3-8"),
        ("123456789", "short code has 3-8"),
        ("12-34", "at least one letter"),
        ("+12", "not a valid international number"),
        ("+12ab", "'+' must be followed"),
    ],
)
def test_invalid_senders(raw: str, why: str) -> None:
    with pytest.raises(SenderError) as exc:
        parse_sender(raw)
    assert exc.value.code is ErrorCode.INVALID_SENDER
    assert why in str(exc.value)
    assert isinstance(exc.value, ValueError)


@given(st.sampled_from(["1", "7", "44", "49", "383", "77", "355", "61", "86", "91"]),
       st.text("0123456789", min_size=4, max_size=12))
def test_a_number_is_accepted_exactly_when_phonenumbers_calls_it_valid(cc: str,
                                                                       digits: str) -> None:
    # parse_destination asks number_type once instead of is_valid_number and then number_type.
    raw = f"+{cc}{digits}"
    try:
        num = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        return
    valid = phonenumbers.is_valid_number(num)
    try:
        parse_destination(raw)
        accepted = True
    except NumberError as exc:
        accepted = exc.code is ErrorCode.NOT_MOBILE  # valid, but a landline & co.
        assert not accepted or valid
    assert accepted == valid

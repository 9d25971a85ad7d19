"""numbers.py's own steps for "+digits" (parse_plus_digits, region_of, number_type) give
exactly what phonenumbers.parse, region_code_for_number and number_type give: for numbers of
every country calling code and length, with national prefixes and leading zeros, and every
region's example numbers; and parse_normalised's answers equal the ones built from
phonenumbers' public calls alone."""

from __future__ import annotations

import random
from collections.abc import Iterator

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, NumberParseException, PhoneNumberType

from aggregator.model import ErrorCode
from aggregator.numbers import (
    Destination,
    NumberError,
    number_type,
    parse_normalised,
    parse_plus_digits,
    region_of,
)

MAX_DIGITS = 16  # parse_normalised sends at most 17 characters ("+" and 16 digits)
PER_LENGTH = 12  # random national numbers per country code and length
# Starts that national prefixes and carrier codes take somewhere ("0", "8" in KZ/RU, "1" in
# NANPA, "06" ...), and leading zeros (Italy keeps them).
STARTS = ("", "0", "00", "1", "8", "06", "9", "01")


def _numbers() -> Iterator[str]:
    rng = random.Random(20)
    for code in sorted(COUNTRY_CODE_TO_REGION_CODE):
        cc = str(code)
        for length in range(0, MAX_DIGITS - len(cc) + 1):
            for start in STARTS:
                if len(start) > length:
                    continue
                for _ in range(PER_LENGTH // 4 if start else PER_LENGTH):
                    rest = "".join(rng.choice("0123456789") for _ in range(length - len(start)))
                    yield f"+{cc}{start}{rest}"
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in range(PhoneNumberType.FIXED_LINE, PhoneNumberType.UNKNOWN):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            cc, nsn = str(example.country_code), phonenumbers.national_significant_number(example)
            prefix = phonenumbers.ndd_prefix_for_region(region, True) or "0"
            for national in (nsn, prefix + nsn, nsn[:-1], nsn + "5", "0" + nsn):
                yield f"+{cc}{national}"[: MAX_DIGITS + 1]
    yield from ("+0", "+00", "+1", "+12", "+123", "+999123456", "+0123456789", "+800",
                "+80012345678", "+87012345", "+3", "+38", "+383", "+3834")


NUMBERS = sorted(set(_numbers()))


def _library(norm: str) -> phonenumbers.PhoneNumber | int:
    """phonenumbers.parse's result, or its error type."""
    try:
        return phonenumbers.parse(norm, None)
    except NumberParseException as exc:
        return exc.error_type


def _ours(norm: str) -> phonenumbers.PhoneNumber | int:
    try:
        return parse_plus_digits(norm)
    except NumberParseException as exc:
        return exc.error_type


def test_the_numbers_cover_every_country_code_and_the_prefix_cases() -> None:
    assert len(NUMBERS) > 50_000
    parsed = [p for p in map(_library, NUMBERS) if not isinstance(p, int)]
    assert {p.country_code for p in parsed} == set(COUNTRY_CODE_TO_REGION_CODE)
    assert sum(1 for p in parsed if p.italian_leading_zero) > 100
    # The national prefix after the country code, stripped by parse ("+7 8 701...").
    assert any(len(phonenumbers.national_significant_number(p)) + len(str(p.country_code))
               < len(n) - 1 for n, p in zip(NUMBERS, map(_library, NUMBERS), strict=True)
               if not isinstance(p, int))


def test_parse_plus_digits_is_phonenumbers_parse() -> None:
    differ = [n for n in NUMBERS if _ours(n) != _library(n)]
    assert differ == []


def test_region_of_is_phonenumbers_region_code_for_number() -> None:
    shared: set[str | None] = set()
    for norm in NUMBERS:
        num = _library(norm)
        if isinstance(num, int):
            continue
        expected = phonenumbers.region_code_for_number(num)
        assert region_of(num) == expected, norm
        if len(COUNTRY_CODE_TO_REGION_CODE[num.country_code]) > 1:
            shared.add(expected)
    assert {"US", "CA", "KZ", "RU", "GB", "JE", None} <= shared  # codes several regions share


def test_number_type_is_phonenumbers_number_type() -> None:
    kinds: set[int] = set()
    for norm in NUMBERS:
        num = _library(norm)
        if isinstance(num, int):
            continue
        region = phonenumbers.region_code_for_number(num)
        if region is None:
            continue
        expected = phonenumbers.number_type(num)
        assert number_type(num, region) == expected, norm
        kinds.add(expected)
    assert {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE, PhoneNumberType.TOLL_FREE,
            PhoneNumberType.FIXED_LINE_OR_MOBILE, PhoneNumberType.UNKNOWN} <= kinds


_SMS = {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE, PhoneNumberType.FIXED_LINE}


def _reference(norm: str) -> Destination | ErrorCode:
    """What parse_normalised answers, from phonenumbers' public calls only."""
    try:
        num = phonenumbers.parse(norm, None)
    except NumberParseException:
        return ErrorCode.INVALID_NUMBER
    region = phonenumbers.region_code_for_number(num)
    kind = phonenumbers.number_type(num)
    if region is None or kind == PhoneNumberType.UNKNOWN:
        return ErrorCode.INVALID_NUMBER
    if kind not in _SMS:
        return ErrorCode.NOT_MOBILE
    return Destination(phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164),
                       region if region != "ZZ" else None,
                       PhoneNumberType.to_string(kind).lower())


def _answer(norm: str) -> Destination | ErrorCode:
    try:
        return parse_normalised.__wrapped__(norm)  # the work, not its cache
    except NumberError as exc:
        return exc.code


@pytest.mark.parametrize("part", range(4))
def test_parse_normalised_answers_as_phonenumbers_does(part: int) -> None:
    for norm in NUMBERS[part::4]:
        assert _answer(norm) == _reference(norm), norm


@settings(max_examples=3000, deadline=None)
@given(st.text("0123456789", min_size=1, max_size=MAX_DIGITS))
def test_any_digits(digits: str) -> None:
    assert _ours("+" + digits) == _library("+" + digits)
    assert _answer("+" + digits) == _reference("+" + digits)

"""Destination and sender address validation over `phonenumbers`. Pure functions, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache, lru_cache

import phonenumbers
from phonenumbers import (
    COUNTRY_CODE_TO_REGION_CODE,
    NumberParseException,
    PhoneMetadata,
    PhoneNumber,
    PhoneNumberDesc,
    PhoneNumberType,
    ValidationResult,
)
from phonenumbers.phonenumberutil import (  # the steps parse() and number_type() are made of
    _maybe_strip_national_prefix_carrier_code,
    _set_italian_leading_zeros_for_phone_number,
    _test_number_length,
)

from aggregator.model import ErrorCode, Sender, SenderKind


class NumberError(ValueError):
    """A destination refused: code is ErrorCode.INVALID_NUMBER or ErrorCode.NOT_MOBILE."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SenderError(ValueError):
    """A sender (source address) refused; the message names the rule broken."""

    code = ErrorCode.INVALID_SENDER

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(slots=True, frozen=True)
class Destination:
    e164: str  # "+38344123456"
    region: str | None  # "XK", "KZ", ...; None for non-geographic numbers
    number_type: str  # lower-case PhoneNumberType name: "mobile", "fixed_line_or_mobile", ...


_SEPARATORS = re.compile(r"[\s\-().]")
_PLUS_DIGITS = re.compile(r"\+[0-9]+")
# FIXED_LINE passes here: whether a landline may get SMS is a country rule, decided in one place
# (aggregator.policy.rules.check_landline, from the profile's landlines_supported).
_SMS_TYPES = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE,
                        PhoneNumberType.FIXED_LINE})
_LENGTH_REASONS = {
    ValidationResult.TOO_SHORT: "too short",
    ValidationResult.TOO_LONG: "too long",
    ValidationResult.INVALID_LENGTH: "the wrong length",
}


def _invalid(raw: str, why: str) -> NumberError:
    return NumberError(ErrorCode.INVALID_NUMBER, f"{raw!r} is not a valid number: {why}")


def parse_destination(raw: str, default_region: str | None = None) -> Destination:
    """Validate an international destination ("+<digits>" or "00<cc>...", separators allowed).
    With `default_region` (an account's default_country), digits without either are read as
    a national number of that country.

    Raises NumberError(INVALID_NUMBER) or NumberError(NOT_MOBILE).
    """
    # "+" and digits has no separator to take out (0.4 µs a message).
    norm = raw if raw[:1] == "+" and raw[1:].isdigit() else _SEPARATORS.sub("", raw)
    if norm.startswith("00"):
        norm = "+" + norm[2:]
    elif default_region is not None and norm.isascii() and norm.isdigit():
        norm = _national_to_e164(norm, default_region)
    return parse_normalised(norm)


@lru_cache(maxsize=8192)
def _national_to_e164(digits: str, region: str) -> str:
    """A national number of `region` ("044123456" in XK) as +E.164, for parse_normalised to
    validate."""
    if len(digits) > 17:
        raise _invalid(digits, "too long")
    try:
        num = phonenumbers.parse(digits, region)
    except NumberParseException:
        raise _invalid(digits, f"not a national number of {region}") from None
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


def is_region(code: str) -> bool:
    """An ISO 3166 alpha-2 code with a numbering plan (for default_country)."""
    return code in phonenumbers.SUPPORTED_REGIONS


# Length results for which phonenumbers.parse keeps the national prefix it could strip.
# Keyed on the normalised string so differently formatted inputs share an entry; only
# successes are cached (lru_cache does not cache raised exceptions). An entry is about 700 bytes:
# 65,536 of them made the daemon's memory climb by 45 MB over a soak with random numbers.
@lru_cache(maxsize=8192)
def parse_normalised(norm: str) -> Destination:
    if not norm:
        raise _invalid(norm, "it is empty")
    if not norm.startswith("+"):
        if norm.isdigit():
            raise _invalid(norm, "missing country code; use +<country code><number> (a "
                           "national number needs the account's default_country)")
        raise _invalid(norm, "not a phone number")
    if not _PLUS_DIGITS.fullmatch(norm):
        raise _invalid(norm, "not a phone number (only digits may follow '+')")
    if len(norm) > 17:  # E.164 allows 15 digits; cheap guard before phonenumbers
        raise _invalid(norm, "too long")
    plain = _plain_mobile(norm)
    if plain is not None:
        return plain
    try:
        num = parse_plus_digits(norm)
    except NumberParseException as exc:
        if exc.error_type == NumberParseException.INVALID_COUNTRY_CODE:
            raise _invalid(norm, "unknown country code") from None
        raise _invalid(norm, "not a phone number") from None
    region = region_of(num)
    # number_type is what is_valid_number decides on (a region for the country code and a type
    # other than UNKNOWN); asking once saves a quarter of a number's cost (65 -> 50 us here).
    kind = number_type(num, region) if region is not None else PhoneNumberType.UNKNOWN
    if kind == PhoneNumberType.UNKNOWN:
        reason = _LENGTH_REASONS.get(phonenumbers.is_possible_number_with_reason(num))
        where = f"for {region}" if region and region != "ZZ" else "for its country code"
        if reason:
            raise _invalid(norm, f"{reason} {where}")
        raise _invalid(norm, f"invalid {where}")
    e164 = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
    if kind not in _SMS_TYPES:
        name = PhoneNumberType.to_string(kind).lower().replace("_", "-")
        raise NumberError(ErrorCode.NOT_MOBILE, f"{e164} is a {name} number; it cannot receive SMS")
    return Destination(
        e164=e164,
        region=region if region and region != "ZZ" else None,
        number_type=PhoneNumberType.to_string(kind).lower(),
    )


# The lower-case type names a Destination carries, by PhoneNumberType value.
_TYPE_NAMES = {kind: PhoneNumberType.to_string(kind).lower() for kind in _SMS_TYPES}


@cache  # bounded: one entry per country calling code (about 250)
def _plain_plan(code: int) -> tuple[str, _TypePlan, re.Pattern[str] | None] | None:
    """For a calling code of one geographic region: the region, its plan and its compiled
    national_prefix_for_parsing (None: it has none); None for any other code."""
    regions = COUNTRY_CODE_TO_REGION_CODE.get(code)
    if regions is None or len(regions) != 1 or regions[0] in ("001", "ZZ"):
        return None
    metadata = _metadata_for_code(code)
    plan = _type_plan(code, regions[0])
    if metadata is None or plan is None:
        return None
    prefix = metadata.national_prefix_for_parsing
    return regions[0], plan, (re.compile(prefix) if prefix else None)


def _plain_mobile(norm: str) -> Destination | None:
    """parse_normalised's answer, for the commonest form, without building a PhoneNumber: a
    calling code of one region, a national number neither starting with 0 nor with a national
    prefix parse() could strip, of a type that gets SMS. Then the number is its own E.164
    form, and its type is _type_of over the plan. None for anything else (the full steps then
    decide, and say why a number is refused). XK +38344: 5.4 -> 3.2 µs a number
    (tests/bench_numbers.py); tests/unit/test_numbers_fast.py compares it with phonenumbers."""
    digits = norm[1:]
    if len(digits) < 3 or digits[0] == "0":
        return None
    for size in (1, 2, 3):
        code = int(digits[:size])
        if code in COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        return None
    found = _plain_plan(code)
    if found is None:
        return None
    region, plan, prefix = found
    national = digits[size:]
    if (not _MIN_NSN <= len(national) <= _MAX_NSN or national[0] == "0"
            or (prefix is not None and prefix.match(national))):
        return None
    name = _TYPE_NAMES.get(_type_of(national, plan))
    return None if name is None else Destination(e164=norm, region=region, number_type=name)


# parse() keeps a national prefix it could strip when the rest has one of these lengths.
_KEEPS_PREFIX = frozenset({ValidationResult.TOO_SHORT, ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
                           ValidationResult.INVALID_LENGTH})
_MIN_NSN, _MAX_NSN = 2, 17  # phonenumbers' bounds on a national significant number's digits


@cache  # bounded: one entry per country calling code (about 250)
def _metadata_for_code(code: int) -> PhoneMetadata | None:
    """The metadata parse() reads for numbers of a country calling code."""
    return PhoneMetadata.metadata_for_region_or_calling_code(
        code, phonenumbers.region_code_for_country_code(code))


def parse_plus_digits(norm: str) -> PhoneNumber:
    """phonenumbers.parse(norm, None), for `norm` "+" and ASCII digits (parse_normalised
    checks), without parse's work on other forms (RFC 3966, extensions, letters, punctuation,
    leading text): the same country code, national prefix stripping and leading zeros, in the
    same steps. Anything else (fewer than 3 digits, no known country code, a national number
    too short or too long) goes to phonenumbers.parse itself, for the same exception.
    tests/unit/test_numbers_fast.py compares both over numbers of every country code. With
    region_of and number_type below: parse_normalised 18 -> 6 µs a Kosovo number, 28 -> 8 a US
    one (tests/bench_numbers.py)."""
    digits = norm[1:]
    if len(digits) < 3 or digits[0] == "0":
        return phonenumbers.parse(norm, None)
    for size in (1, 2, 3):
        code = int(digits[:size])
        if code in COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        return phonenumbers.parse(norm, None)
    national = digits[size:]
    metadata = _metadata_for_code(code)
    if metadata is None or len(national) < _MIN_NSN:
        return phonenumbers.parse(norm, None)
    _, stripped, found = _maybe_strip_national_prefix_carrier_code(national, metadata)
    # Nothing stripped (most numbers): parse's length test could only keep what it has.
    if found and _test_number_length(stripped, metadata) not in _KEEPS_PREFIX:
        national = stripped
    if not _MIN_NSN <= len(national) <= _MAX_NSN:
        return phonenumbers.parse(norm, None)
    num = PhoneNumber(country_code=code)
    _set_italian_leading_zeros_for_phone_number(national, num)
    num.national_number = int(national)
    return num


# A PhoneNumberDesc as _is_number_matching_desc reads it: its possible lengths (None: any)
# and its compiled pattern; None for a desc that matches nothing.
_Desc = tuple[frozenset[int] | None, re.Pattern[str]] | None
# The types number_type() tries, in its order, before fixed line and mobile.
_SPECIAL_TYPES = ("premium_rate", "toll_free", "shared_cost", "voip", "personal_number", "pager",
                  "uan", "voicemail")


def _desc(desc: PhoneNumberDesc | None) -> _Desc:
    if desc is None or not desc.national_number_pattern:
        return None
    return (frozenset(desc.possible_length) or None), re.compile(desc.national_number_pattern)


def _matches(national: str, desc: _Desc) -> bool:
    """_is_number_matching_desc(national, desc): a match at the start that is not a full match
    counts as none, so fullmatch alone decides."""
    if desc is None:
        return False
    lengths, pattern = desc
    if lengths is not None and len(national) not in lengths:
        return False
    return pattern.fullmatch(national) is not None


@dataclass(slots=True, frozen=True)
class _TypePlan:
    """One numbering plan's descs, compiled once (phonenumbers looks each pattern up again in
    re's cache for every number: 11 of them for a mobile number)."""

    general: _Desc
    special: tuple[tuple[_Desc, int], ...]
    fixed_line: _Desc
    mobile: _Desc
    same_mobile_and_fixed_line: bool
    leading_digits: re.Pattern[str] | None  # what tells the regions of a shared code apart


@cache  # bounded: one entry per numbering plan (about 250)
def _type_plan(code: int, region: str) -> _TypePlan | None:
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, region)
    if metadata is None:
        return None
    return _TypePlan(
        general=_desc(metadata.general_desc),
        special=tuple((_desc(getattr(metadata, name)), getattr(PhoneNumberType, name.upper()))
                      for name in _SPECIAL_TYPES),
        fixed_line=_desc(metadata.fixed_line),
        mobile=_desc(metadata.mobile),
        same_mobile_and_fixed_line=bool(metadata.same_mobile_and_fixed_line_pattern),
        leading_digits=(re.compile(metadata.leading_digits)
                        if metadata.leading_digits is not None else None),
    )


def region_of(num: PhoneNumber) -> str | None:
    """phonenumbers.region_code_for_number(num), in its steps: for a code shared by several
    regions (+1: 25, +7, +44, ...) each region's leading digits, or else whether the number
    has a type there, over the plans compiled once (with it, parse_normalised of a US number:
    12 -> 8 µs)."""
    code = num.country_code
    regions = COUNTRY_CODE_TO_REGION_CODE.get(code) if code is not None else None
    if regions is None or code is None:
        return None
    if len(regions) == 1:
        return regions[0]
    national = phonenumbers.national_significant_number(num)
    for region in regions:
        plan = _type_plan(code, region)
        if plan is None:
            continue
        if plan.leading_digits is not None:
            if plan.leading_digits.match(national):
                return region
        elif _type_of(national, plan) != PhoneNumberType.UNKNOWN:
            return region
    return None


def number_type(num: PhoneNumber, region: str) -> int:
    """phonenumbers.number_type(num) for `num` of `region` (its region_code_for_number, which
    number_type would work out a second time: for +1 that tries up to 25 regions), in the
    same steps as its _number_type_helper over patterns compiled once per plan."""
    plan = _type_plan(num.country_code, region) if num.country_code is not None else None
    if plan is None:
        return PhoneNumberType.UNKNOWN
    return _type_of(phonenumbers.national_significant_number(num), plan)


def _type_of(national: str, plan: _TypePlan) -> int:
    """_number_type_helper(national, the plan's metadata)."""
    if not _matches(national, plan.general):
        return PhoneNumberType.UNKNOWN
    for desc, kind in plan.special:
        if _matches(national, desc):
            return kind
    if _matches(national, plan.fixed_line):
        if plan.same_mobile_and_fixed_line or _matches(national, plan.mobile):
            return PhoneNumberType.FIXED_LINE_OR_MOBILE
        return PhoneNumberType.FIXED_LINE
    if not plan.same_mobile_and_fixed_line and _matches(national, plan.mobile):
        return PhoneNumberType.MOBILE
    return PhoneNumberType.UNKNOWN


# Printable ASCII letters, digits, space and the punctuation operators commonly accept.
_ALNUM_ALLOWED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 .-_&'!")


@lru_cache(maxsize=4096)
def parse_sender(raw: str) -> Sender:
    """Classify and validate a sender: +E.164, 3-8 digit short code, or 1-11 char alphanumeric.

    Surrounding whitespace is ignored.
    """
    value = raw.strip()
    if not value:
        raise SenderError("sender is empty")
    if value.startswith("+"):
        if not _PLUS_DIGITS.fullmatch(value) or len(value) > 16:
            raise SenderError(f"sender {raw!r}: '+' must be followed by a 1-15 digit number")
        try:
            num = phonenumbers.parse(value, None)
        except NumberParseException:
            raise SenderError(f"sender {raw!r} is not a valid international number") from None
        if not phonenumbers.is_valid_number(num):
            raise SenderError(f"sender {raw!r} is not a valid international number")
        e164 = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
        return Sender(e164, SenderKind.INTERNATIONAL)
    if value.isascii() and value.isdigit():
        if 3 <= len(value) <= 8:
            return Sender(value, SenderKind.SHORTCODE)
        raise SenderError(
            f"digits-only sender {raw!r} has {len(value)} digits: a short code has 3-8; "
            "use +<country code><number> for a full number"
        )
    if len(value) > 11:
        raise SenderError(f"alphanumeric sender {raw!r} is longer than 11 characters")
    bad = next((c for c in value if c not in _ALNUM_ALLOWED), None)
    if bad is not None:
        raise SenderError(
            f"sender {raw!r} contains {bad!r}; allowed: A-Z a-z 0-9 space . - _ & ' !"
        )
    if not any(c.isalpha() for c in value):
        raise SenderError(f"alphanumeric sender {raw!r} must contain at least one letter")
    return Sender(value, SenderKind.ALPHANUMERIC)

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from aggregator.config import ConfigError
from aggregator.policy.profiles import (
    ContentRules,
    CountryProfile,
    Frequency,
    OptOut,
    ProfileError,
    Senders,
    Window,
    bundled_profiles,
    load_profiles,
    parse_profile,
)
from aggregator.policy.rules import (
    Allow,
    Defer,
    PolicyCode,
    PolicyInput,
    Reject,
    classify_mo,
    evaluate,
    next_window_opening,
)

ROOT = Path(__file__).resolve().parents[2]
COUNTRIES = ROOT / "config" / "countries"
BUNDLED = ROOT / "aggregator" / "policy" / "countries"

PROFILES = load_profiles(COUNTRIES)
XK = PROFILES["XK"]
KZ = PROFILES["KZ"]
BOTH = pytest.mark.parametrize("profile", [XK, KZ], ids=["XK", "KZ"])

# Noon local on a winter weekday: XK is UTC+1 (CET), KZ is UTC+5.
NOON = {
    "XK": datetime(2026, 1, 14, 11, 0, tzinfo=UTC),
    "KZ": datetime(2026, 1, 14, 7, 0, tzinfo=UTC),
}
ALLOW = Allow()


def msg(profile: CountryProfile | None = None, **changes: Any) -> PolicyInput:
    region = profile.region if profile is not None else "DE"
    fields: dict[str, Any] = {
        "region": region,
        "number_type": "mobile",
        "message_class": "marketing",
        "sender": "Shop",
        "sender_kind": "alphanumeric",
        "text": "Spring sale: 20% off all shoes this week at shop.example.",
        "account": "acme",
        "registered_senders": {"KZ": ["Shop"]},
        "opted_out": False,
    }
    fields.update(changes)
    return PolicyInput(**fields)


def at_local(profile: CountryProfile, *args: int) -> datetime:
    """A local wall time in the profile's zone, as a UTC instant."""
    y, mo, d, h, mi, s = (*args, 0, 0, 0)[:6]
    return datetime(y, mo, d, h, mi, s, tzinfo=profile.timezone).astimezone(UTC)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


def reject(verdict: object) -> Reject:
    assert isinstance(verdict, Reject), verdict
    return verdict


def custom(**changes: Any) -> CountryProfile:
    return dataclasses.replace(XK, **changes)


# --------------------------------------------------------------------------- profiles as data


def test_profiles_from_guides() -> None:
    assert sorted(PROFILES) == ["KZ", "XK"]
    assert XK.name == "Kosovo" and XK.timezone == ZoneInfo("Europe/Belgrade")
    assert KZ.name == "Kazakhstan" and KZ.timezone == ZoneInfo("Asia/Almaty")
    for profile in (XK, KZ):
        assert not profile.landlines_supported and not profile.two_way_supported
        assert not profile.senders.short_codes and profile.senders.long_codes
        assert profile.senders.alphanumeric
        assert profile.frequency == Frequency(max_per_month=4, min_interval_hours=24.0)
        assert "bit.ly" in profile.content.url_shorteners
        assert {c.name for c in profile.content.forbidden_categories} >= {
            "gambling", "adult", "cryptocurrency", "political"
        }
    assert not XK.senders.alphanumeric_registration_required
    assert KZ.senders.alphanumeric_registration_required
    assert XK.sending_windows.marketing == Window(time(9), time(20))
    assert KZ.sending_windows.marketing == Window(time(9), time(21))
    assert XK.optout.keywords[:3] == ("STOP", "NDALO", "PRESTANI")
    assert set(KZ.optout.keywords) == {"STOP", "СТОП", "ТОҚТА", "ТОКТА", "ТОҚТАТУ", "ТОКТАТУ",
                                       "ОТПИСАТЬСЯ"}
    assert XK.optout.confirmation and KZ.optout.confirmation


def test_kazakhstan_is_utc_plus_5_since_2024() -> None:
    # The guide says GMT+6; the country moved to a single UTC+5 zone on 2024-03-01.
    for name in ("Asia/Almaty", "Asia/Qostanay"):
        assert utc(2026, 6, 1).astimezone(ZoneInfo(name)).utcoffset() == timedelta(hours=5)


def test_bundled_copies_equal_config_countries() -> None:
    config_files = sorted(p.name for p in COUNTRIES.glob("*.toml"))
    bundled_files = sorted(p.name for p in BUNDLED.glob("*.toml"))
    assert config_files == bundled_files == ["KZ.toml", "XK.toml"]
    for name in config_files:
        assert (COUNTRIES / name).read_bytes() == (BUNDLED / name).read_bytes(), name
    assert bundled_profiles() == PROFILES


def test_schema_documents_every_key() -> None:
    schema = (COUNTRIES / "SCHEMA.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", schema, re.MULTILINE))
    keys = {f.name for f in dataclasses.fields(CountryProfile)} - {
        "source", "sending_windows", "senders", "optout", "content", "frequency"
    }
    for cls in (Senders, OptOut, ContentRules, Frequency):
        keys |= {f.name for f in dataclasses.fields(cls)}
    keys |= {"marketing", "marketing.start", "marketing.end"}
    assert keys <= documented, keys - documented


# --------------------------------------------------------------------------- no profile


def test_country_without_profile_passes() -> None:
    night = utc(2026, 1, 14, 2, 0)
    # A fixed line is refused without a profile too (test_landlines.py): one place decides.
    item = msg(None, number_type="fixed_line_or_mobile", sender_kind="shortcode", sender="12345",
               text="CASINO!!!! bit.ly/x", marketing_sent_last_30d=99)
    assert evaluate(None, item, night) == ALLOW
    assert evaluate(None, dataclasses.replace(item, region=None), night) == ALLOW


def test_opt_out_holds_without_profile() -> None:
    verdict = reject(evaluate(None, msg(None, opted_out=True), utc(2026, 1, 14, 12)))
    assert (verdict.status, verdict.code) == (403, "opted_out")


# --------------------------------------------------------------------------- landlines, senders


@BOTH
def test_landline_rejected(profile: CountryProfile) -> None:
    for message_class in ("marketing", "transactional"):
        item = msg(profile, number_type="fixed_line", message_class=message_class)
        verdict = reject(evaluate(profile, item, NOON[profile.region]))
        assert (verdict.status, verdict.code, verdict.rule) == (
            422, "not_mobile", "landlines_supported"
        )
    item = msg(profile, number_type="fixed_line_or_mobile")
    assert evaluate(profile, item, NOON[profile.region]) == ALLOW


def test_landline_allowed_where_supported() -> None:
    profile = custom(landlines_supported=True)
    assert evaluate(profile, msg(profile, number_type="fixed_line"), NOON["XK"]) == ALLOW


@BOTH
@pytest.mark.parametrize("message_class", ["marketing", "transactional"])
def test_short_codes_unsupported(profile: CountryProfile, message_class: str) -> None:
    item = msg(profile, sender="12345", sender_kind="shortcode", message_class=message_class)
    verdict = reject(evaluate(profile, item, NOON[profile.region]))
    assert (verdict.status, verdict.code, verdict.rule) == (
        422, "sender_type_unsupported", "senders.short_codes"
    )
    assert profile.name in verdict.message


@BOTH
def test_international_long_code_allowed(profile: CountryProfile) -> None:
    # A foreign long number passes; a domestic one (+383 to Kosovo, +7 7xx to Kazakhstan) is
    # refused: "domestic long codes not available" (issue 19 item 5, test_sender_types.py).
    item = msg(profile, sender="+4915123456789", sender_kind="international")
    assert evaluate(profile, item, NOON[profile.region]) == ALLOW
    domestic = {"XK": "+38344123456", "KZ": "+77011234567"}[profile.region]
    verdict = reject(evaluate(profile, msg(profile, sender=domestic,
                                           sender_kind="international"), NOON[profile.region]))
    assert (verdict.code, verdict.rule) == ("sender_type_unsupported",
                                            "senders.domestic_long_codes")


def test_long_codes_and_alphanumeric_can_be_switched_off() -> None:
    profile = custom(senders=Senders(long_codes=False, alphanumeric=False))
    verdict = reject(evaluate(profile, msg(profile, sender="+38344123456",
                                           sender_kind="international"), NOON["XK"]))
    assert (verdict.code, verdict.rule) == ("sender_type_unsupported", "senders.long_codes")
    verdict = reject(evaluate(profile, msg(profile), NOON["XK"]))
    assert (verdict.code, verdict.rule) == ("sender_type_unsupported", "senders.alphanumeric")


def test_alphanumeric_length_limit() -> None:
    profile = custom(senders=Senders(max_alphanumeric_length=6))
    verdict = reject(evaluate(profile, msg(profile, sender="LongShop"), NOON["XK"]))
    assert (verdict.status, verdict.code) == (422, "invalid_sender")
    assert evaluate(profile, msg(profile, sender="Shop12"), NOON["XK"]) == ALLOW


def test_xk_alphanumeric_needs_no_registration() -> None:
    item = msg(XK, sender="AnyBrand", registered_senders={})
    assert evaluate(XK, item, NOON["XK"]) == ALLOW


@pytest.mark.parametrize("message_class", ["marketing", "transactional"])
def test_kz_alphanumeric_must_be_registered(message_class: str) -> None:
    now = NOON["KZ"]
    assert evaluate(KZ, msg(KZ, message_class=message_class), now) == ALLOW
    for sender, registered in [
        ("Other", {"KZ": ["Shop"]}),
        ("shop", {"KZ": ["Shop"]}),  # case-sensitive
        ("Shop", {"XK": ["Shop"]}),  # registered for another region only
        ("Shop", {}),
    ]:
        item = msg(KZ, sender=sender, registered_senders=registered, message_class=message_class)
        verdict = reject(evaluate(KZ, item, now))
        assert (verdict.status, verdict.code) == (422, "sender_not_registered")
        assert verdict.rule == "senders.alphanumeric_registration_required"
        assert repr(sender) in verdict.message


# --------------------------------------------------------------------------- opt-out


@BOTH
def test_opted_out(profile: CountryProfile) -> None:
    now = NOON[profile.region]
    verdict = reject(evaluate(profile, msg(profile, opted_out=True), now))
    assert (verdict.status, verdict.code, verdict.rule) == (403, "opted_out", "optout")
    transactional = msg(profile, opted_out=True, message_class="transactional")
    assert evaluate(profile, transactional, now) == ALLOW
    blocked = dataclasses.replace(transactional, block_transactional_to_opted_out=True)
    verdict = reject(evaluate(profile, blocked, now))
    assert (verdict.status, verdict.code) == (403, "opted_out")


# --------------------------------------------------------------------------- content


@BOTH
@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("Win big at our CASINO tonight", "forbidden_category:gambling"),
        ("Place your bet now", "forbidden_category:gambling"),
        ("Buy Bitcoin with zero fees", "forbidden_category:cryptocurrency"),
        ("Hot xxx videos", "forbidden_category:adult"),
        ("Please vote  for Party X on Sunday", "forbidden_category:political"),
        ("BIG SALE TODAY ONLY IN ALL OUR STORES", "all_caps"),
        ("Huge sale today!!!!", "excessive_punctuation"),
        ("Huge sale today?!?!", "excessive_punctuation"),
        ("Huge sale today.... come", "excessive_punctuation"),
        ("Sale: bit.ly/abc123", "url_shortener"),
        ("Sale: https://t.co/abc123", "url_shortener"),
        ("Sale: HTTPS://TinyURL.com/abc", "url_shortener"),
        ("Sale: www.bit.ly/abc", "url_shortener"),
        ("Details at is.gd.", "url_shortener"),
    ],
)
def test_content_rules(profile: CountryProfile, text: str, rule: str) -> None:
    verdict = reject(evaluate(profile, msg(profile, text=text), NOON[profile.region]))
    assert (verdict.status, verdict.code, verdict.rule) == (422, "content_rejected", rule)
    assert rule in verdict.message


@BOTH
@pytest.mark.parametrize(
    "text",
    [
        "A better offer than ever: 20% off",  # "bet" only as a whole word
        "Alphabet soup, 20% off",
        "OK, SALE now",  # fewer than 10 letters: not all caps
        "NEW shoes: SALE in our Pristina store",  # mostly lower case
        "Huge sale today!!! Come by...",  # three is fine
        "Visit https://shop.example/sale or about.com",
        "Visit rabbit.ly and bit.lyrics.example",  # not shortener hosts
        "Text to: +383 44 123 456 (mobile)",
    ],
)
def test_content_allowed(profile: CountryProfile, text: str) -> None:
    assert evaluate(profile, msg(profile, text=text), NOON[profile.region]) == ALLOW


def test_first_listed_category_is_reported() -> None:
    # XK lists gambling before cryptocurrency, whatever the order in the text.
    verdict = reject(evaluate(XK, msg(XK, text="Bitcoin bonus at the casino"), NOON["XK"]))
    assert verdict.rule == "forbidden_category:gambling"
    assert "'casino'" in verdict.message


def test_kz_content_in_russian_and_kazakh() -> None:
    for text, rule in [
        ("Лучшее КАЗИНО города", "forbidden_category:gambling"),
        ("Купите биткоин сегодня", "forbidden_category:cryptocurrency"),
        ("Дауыс  беріңіз!", "forbidden_category:political"),
        ("БОЛЬШАЯ РАСПРОДАЖА ТОЛЬКО СЕГОДНЯ", "all_caps"),
    ]:
        verdict = reject(evaluate(KZ, msg(KZ, text=text), NOON["KZ"]))
        assert verdict.rule == rule, text
    assert evaluate(KZ, msg(KZ, text="Скидки 20% на обувь всю неделю"), NOON["KZ"]) == ALLOW


@BOTH
def test_content_rules_apply_to_marketing_only(profile: CountryProfile) -> None:
    # The style rules only; forbidden categories hold for every class (test_class_rules.py).
    item = msg(profile, message_class="transactional", text="PAYOUT CONFIRMED TODAY!!!! bit.ly/x")
    assert evaluate(profile, item, NOON[profile.region]) == ALLOW


# --------------------------------------------------------------------------- frequency


@BOTH
def test_frequency_caps(profile: CountryProfile) -> None:
    now = NOON[profile.region]
    assert evaluate(profile, msg(profile, marketing_sent_last_30d=3), now) == ALLOW
    verdict = reject(evaluate(profile, msg(profile, marketing_sent_last_30d=4), now))
    assert (verdict.status, verdict.code, verdict.rule) == (
        429, "frequency_capped", "frequency.max_per_month"
    )
    recent = msg(profile, marketing_sent_last_30d=1, last_marketing_at=now - timedelta(hours=23))
    verdict = reject(evaluate(profile, recent, now))
    assert (verdict.status, verdict.code, verdict.rule) == (
        429, "frequency_capped", "frequency.min_interval_hours"
    )
    assert "next allowed at" in verdict.message
    day_ago = dataclasses.replace(recent, last_marketing_at=now - timedelta(hours=24))
    assert evaluate(profile, day_ago, now) == ALLOW
    transactional = msg(profile, message_class="transactional", marketing_sent_last_30d=50,
                        last_marketing_at=now)
    assert evaluate(profile, transactional, now) == ALLOW


def test_no_frequency_caps_when_absent() -> None:
    profile = custom(frequency=Frequency())
    item = msg(profile, marketing_sent_last_30d=100, last_marketing_at=NOON["XK"])
    assert evaluate(profile, item, NOON["XK"]) == ALLOW


# --------------------------------------------------------------------------- quiet hours


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ((2026, 1, 14, 8, 59, 59), utc(2026, 1, 14, 8, 0)),
        ((2026, 1, 14, 9, 0), None),
        ((2026, 1, 14, 19, 59), None),
        ((2026, 1, 14, 19, 59, 59), None),
        ((2026, 1, 14, 20, 0), utc(2026, 1, 15, 8, 0)),
        ((2026, 1, 14, 23, 30), utc(2026, 1, 15, 8, 0)),
        ((2026, 1, 15, 0, 30), utc(2026, 1, 15, 8, 0)),
        ((2026, 7, 14, 8, 0), utc(2026, 7, 14, 7, 0)),  # summer: 09:00 CEST is 07:00 UTC
    ],
)
def test_xk_quiet_hours(local: tuple[int, ...], expected: datetime | None) -> None:
    verdict = evaluate(XK, msg(XK), at_local(XK, *local))
    assert verdict == (ALLOW if expected is None else Defer(expected))


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        ((2026, 1, 14, 8, 59), utc(2026, 1, 14, 4, 0)),
        ((2026, 1, 14, 8, 59, 59), utc(2026, 1, 14, 4, 0)),
        ((2026, 1, 14, 9, 0), None),
        ((2026, 1, 14, 20, 59, 59), None),
        ((2026, 1, 14, 21, 0), utc(2026, 1, 15, 4, 0)),
        ((2026, 1, 15, 0, 30), utc(2026, 1, 15, 4, 0)),  # 19:30 UTC the day before
    ],
)
def test_kz_quiet_hours(local: tuple[int, ...], expected: datetime | None) -> None:
    verdict = evaluate(KZ, msg(KZ), at_local(KZ, *local))
    assert verdict == (ALLOW if expected is None else Defer(expected))


def test_defer_is_utc() -> None:
    verdict = evaluate(KZ, msg(KZ), utc(2026, 1, 14, 20, 0))
    assert isinstance(verdict, Defer)
    assert verdict.until_utc.utcoffset() == timedelta(0)
    assert verdict.until_utc == utc(2026, 1, 15, 4, 0)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # Saturday 2026-03-28 20:30 CET -> Sunday 29th (clocks go forward) 09:00 CEST.
        (utc(2026, 3, 28, 19, 30), utc(2026, 3, 29, 7, 0)),
        # On the change day itself, before and after the 02:00 -> 03:00 jump.
        (utc(2026, 3, 29, 0, 30), utc(2026, 3, 29, 7, 0)),
        (utc(2026, 3, 29, 1, 30), utc(2026, 3, 29, 7, 0)),
        # Saturday 2026-10-24 20:30 CEST -> Sunday 25th (clocks go back) 09:00 CET.
        (utc(2026, 10, 24, 18, 30), utc(2026, 10, 25, 8, 0)),
        (utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 8, 0)),  # 02:30 CEST, first pass
        (utc(2026, 10, 25, 1, 30), utc(2026, 10, 25, 8, 0)),  # 02:30 CET, second pass
        # The evening of the change day: to Monday 09:00 in the new offset.
        (utc(2026, 3, 29, 18, 0), utc(2026, 3, 30, 7, 0)),  # 20:00 CEST
        (utc(2026, 10, 25, 19, 0), utc(2026, 10, 26, 8, 0)),  # 20:00 CET
    ],
)
def test_xk_dst_changes(now: datetime, expected: datetime) -> None:
    assert evaluate(XK, msg(XK), now) == Defer(expected)


def test_window_start_in_spring_forward_gap_opens_at_the_change() -> None:
    # 02:30 does not exist in Europe/Belgrade on 2026-03-29: 02:00 CET jumps to 03:00 CEST
    # (01:00 UTC). The window opens at that instant.
    window = Window(time(2, 30), time(5, 0))
    zone = ZoneInfo("Europe/Belgrade")
    assert next_window_opening(window, zone, utc(2026, 3, 28, 23, 0)) == utc(2026, 3, 29, 1, 0)
    profile = custom(sending_windows=dataclasses.replace(XK.sending_windows, marketing=window))
    assert evaluate(profile, msg(profile), utc(2026, 3, 29, 0, 59, 59)) == Defer(
        utc(2026, 3, 29, 1, 0)
    )
    assert evaluate(profile, msg(profile), utc(2026, 3, 29, 1, 0)) == ALLOW  # 03:00 CEST


def test_window_start_in_fall_back_overlap_opens_at_first_occurrence() -> None:
    # 02:30 happens twice on 2026-10-25: 00:30 UTC (CEST) and 01:30 UTC (CET).
    window = Window(time(2, 30), time(5, 0))
    zone = ZoneInfo("Europe/Belgrade")
    assert next_window_opening(window, zone, utc(2026, 10, 24, 23, 0)) == utc(2026, 10, 25, 0, 30)


def test_window_wrapping_midnight() -> None:
    window = Window(time(22), time(6))
    assert window.wraps and window.contains(time(23)) and window.contains(time(5, 59))
    assert not window.contains(time(6)) and not window.contains(time(12))
    profile = custom(sending_windows=dataclasses.replace(XK.sending_windows, marketing=window))
    # Winter, UTC+1.
    assert evaluate(profile, msg(profile), utc(2026, 1, 14, 11)) == Defer(utc(2026, 1, 14, 21))
    assert evaluate(profile, msg(profile), utc(2026, 1, 14, 22)) == ALLOW  # 23:00
    assert evaluate(profile, msg(profile), utc(2026, 1, 15, 4, 59)) == ALLOW  # 05:59
    assert evaluate(profile, msg(profile), utc(2026, 1, 15, 5)) == Defer(utc(2026, 1, 15, 21))


@BOTH
def test_transactional_never_deferred(profile: CountryProfile) -> None:
    for hour in range(24):
        now = utc(2026, 1, 14, hour, 30)
        assert evaluate(profile, msg(profile, message_class="transactional"), now) == ALLOW


def test_no_window_means_any_time() -> None:
    profile = custom(sending_windows=dataclasses.replace(XK.sending_windows, marketing=None))
    assert evaluate(profile, msg(profile), utc(2026, 1, 14, 2)) == ALLOW


# --------------------------------------------------------------------------- order, inputs


def test_rule_order() -> None:
    night = at_local(KZ, 2026, 1, 14, 23, 0)
    worst = msg(KZ, number_type="fixed_line", sender="Nope", opted_out=True,
                text="CASINO!!!!", marketing_sent_last_30d=9)
    expected: list[tuple[str, dict[str, Any]]] = [
        ("not_mobile", {"number_type": "mobile"}),
        ("sender_not_registered", {"sender": "Shop"}),
        ("opted_out", {"opted_out": False}),
        ("content_rejected", {"text": "Sale today"}),
        ("frequency_capped", {"marketing_sent_last_30d": 0}),
    ]
    item = worst
    for code, fix in expected:
        assert reject(evaluate(KZ, item, night)).code == code
        item = dataclasses.replace(item, **fix)
    assert evaluate(KZ, item, night) == Defer(utc(2026, 1, 15, 4, 0))


def test_codes_are_strings() -> None:
    assert PolicyCode.OPTED_OUT.value == "opted_out"
    verdict = reject(evaluate(XK, msg(XK, opted_out=True), NOON["XK"]))
    assert verdict.code == "opted_out" and isinstance(verdict.code, str)


def test_naive_times_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(XK, msg(XK), datetime(2026, 1, 14, 12))
    item = msg(XK, last_marketing_at=datetime(2026, 1, 13, 12))
    with pytest.raises(ValueError, match="last_marketing_at"):
        evaluate(XK, item, NOON["XK"])


def test_unknown_class_or_sender_kind_refused() -> None:
    with pytest.raises(ValueError, match="message_class"):
        evaluate(XK, msg(XK, message_class="promo"), NOON["XK"])
    with pytest.raises(ValueError, match="sender_kind"):
        evaluate(XK, msg(XK, sender_kind="numeric"), NOON["XK"])


# --------------------------------------------------------------------------- MO keywords


@pytest.mark.parametrize(
    ("profile", "text", "kind"),
    [
        (XK, "NDALO", "optout"),
        (XK, "ndalo", "optout"),
        (XK, " stop ", "optout"),
        (XK, "STOP\r\n", "optout"),
        (XK, "Prestani\t ", "optout"),
        (XK, "ПРЕСТАНИ", "optout"),
        (XK, "Stop please", "optout"),  # first word (issue 19 item 3)
        (XK, "S T O P", "other"),
        (XK, "HELP", "help"),
        (XK, "ndihmë", "help"),
        (XK, "Pomoć", "help"),
        (XK, "", "other"),
        (XK, "Thanks!", "other"),
        (KZ, "СТОП", "optout"),
        (KZ, "стоп", "optout"),
        (KZ, " Отписаться ", "optout"),
        (KZ, "тоқтату", "optout"),
        (KZ, "ТОҚТАТУ\n", "optout"),
        (KZ, "Stop", "optout"),
        (KZ, "стоп пожалуйста", "optout"),
        (KZ, "помощь", "help"),
        (KZ, "Көмек", "help"),
        (KZ, "NDALO", "other"),
        (None, "stop", "optout"),
        (None, "help", "help"),
        (None, "NDALO", "other"),
    ],
)
def test_classify_mo(profile: CountryProfile | None, text: str, kind: str) -> None:
    assert classify_mo(profile, text) == kind


# --------------------------------------------------------------------------- validation


def base() -> dict[str, Any]:
    return {"region": "XK", "name": "Kosovo", "timezone": "Europe/Belgrade"}


def problems(data: dict[str, Any], source: str = "XK.toml") -> list[str]:
    with pytest.raises(ProfileError) as info:
        parse_profile(data, source)
    return info.value.problems


def test_minimal_profile_takes_defaults() -> None:
    profile = parse_profile(base(), "XK.toml")
    assert profile.senders == Senders() and profile.frequency == Frequency()
    assert profile.sending_windows.marketing is None
    assert profile.optout.keywords == ("STOP",)


def test_validation_errors_name_file_key_and_problem() -> None:
    data = base() | {
        "timezone": "Mars/Olympus",
        "landlines_supported": "no",
        "bogus": 1,
        "sending_windows": {"marketing": {"start": "25:00", "end": "9am"}},
        "senders": {"short_code": False, "long_codes": "yes", "max_alphanumeric_length": 12},
        "optout": {"keywords": ["STOP", " NDALO", 3], "help_keywords": ["stop"]},
        "content": {
            "max_uppercase_ratio": 2,
            "max_repeated_punctuation": 0,
            "url_shorteners": ["Bit.ly"],
            "forbidden_categories": {"Gambling!": ["casino"], "adult": "xxx", "crypto": []},
        },
        "frequency": {"max_per_month": 0, "min_interval_hours": "1d"},
    }
    assert problems(data) == [
        "XK.toml: timezone: unknown IANA time zone 'Mars/Olympus'",
        "XK.toml: landlines_supported: must be true or false, got 'no'",
        'XK.toml: sending_windows.marketing.start: must be a time "HH:MM" from 00:00 to 23:59, '
        "got '25:00'",
        'XK.toml: sending_windows.marketing.end: must be a time "HH:MM" from 00:00 to 23:59, '
        "got '9am'",
        "XK.toml: senders.long_codes: must be true or false, got 'yes'",
        "XK.toml: senders.max_alphanumeric_length: must be an integer between 1 and 11, got 12",
        "XK.toml: senders.short_code: unknown key; did you mean 'short_codes'?",
        "XK.toml: optout.keywords[1]: must be non-empty without surrounding spaces, "
        "got ' NDALO'",
        "XK.toml: optout.keywords[2]: must be a string, got 3",
        "XK.toml: optout.help_keywords: keyword 'stop' is already listed in optout.keywords",
        "XK.toml: content.forbidden_categories.\"Gambling!\": category names use only a-z, 0-9 "
        "and _",
        "XK.toml: content.forbidden_categories.adult: must be an array of strings, got 'xxx'",
        "XK.toml: content.forbidden_categories.crypto: must list at least one keyword",
        "XK.toml: content.url_shorteners[0]: must be a lower-case domain like 'bit.ly', "
        "got 'Bit.ly'",
        "XK.toml: content.max_uppercase_ratio: must be a number between 0 and 1, got 2",
        "XK.toml: content.max_repeated_punctuation: must be an integer >= 1, got 0",
        "XK.toml: frequency.max_per_month: must be an integer >= 1, got 0",
        "XK.toml: frequency.min_interval_hours: must be a number >= 0, got '1d'",
        "XK.toml: bogus: unknown key",
    ]


def test_required_keys_and_region() -> None:
    assert problems({}) == [
        "XK.toml: region: required key is missing",
        "XK.toml: name: required key is missing",
        "XK.toml: timezone: required key is missing",
    ]
    assert problems(base() | {"region": "Kosovo", "name": " "}) == [
        "XK.toml: region: must be a region code phonenumbers knows (like 'XK'), got 'Kosovo'",
        "XK.toml: name: must not be empty",
    ]
    with pytest.raises(ProfileError) as info:
        parse_profile(base(), "KZ.toml", expected_region="KZ")
    assert info.value.problems == ["KZ.toml: region: must match the file name ('KZ'), got 'XK'"]


def test_window_problems() -> None:
    assert problems(base() | {"sending_windows": {"marketing": "09:00-20:00"}}) == [
        "XK.toml: sending_windows.marketing: must be a table ([sending_windows.marketing]), "
        "got '09:00-20:00'",
        "XK.toml: sending_windows.marketing.start: required key is missing",
        "XK.toml: sending_windows.marketing.end: required key is missing",
    ]
    assert problems(base() | {"sending_windows": {"marketing": {"start": "09:00",
                                                                "end": "09:00"}}}) == [
        "XK.toml: sending_windows.marketing.end: must differ from start (09:00); omit the "
        "window for any time",
    ]
    assert problems(base() | {"sending_windows": {"transactional": {"start": "09:00",
                                                                    "end": "20:00"}}}) == [
        "XK.toml: sending_windows.transactional: transactional messages are never deferred; "
        "remove this key",
    ]
    assert problems(base() | {"sending_windows": {"marketing": {"start": "9:00",
                                                                "end": "20:00", "tz": "x"}}}) == [
        'XK.toml: sending_windows.marketing.start: must be a time "HH:MM" from 00:00 to 23:59, '
        "got '9:00'",
        "XK.toml: sending_windows.marketing.tz: unknown key",
    ]


def test_toml_local_times_accepted() -> None:
    data = base() | {"sending_windows": {"marketing": {"start": time(22), "end": time(6)}}}
    assert parse_profile(data, "XK.toml").sending_windows.marketing == Window(time(22), time(6))


def test_load_profiles_reports_every_file(tmp_path: Path) -> None:
    (tmp_path / "XK.toml").write_text('region = "XK"\nname = "Kosovo"\ntimezone = "Nowhere"\n')
    (tmp_path / "KZ.toml").write_text('region = "KZ"\nname = "Kazakhstan\n')
    (tmp_path / "DE.toml").write_text('region = "AT"\nname = "x"\ntimezone = "Europe/Berlin"\n')
    (tmp_path / "README.md").write_text("not a profile")
    with pytest.raises(ProfileError) as info:
        load_profiles(tmp_path)
    assert info.value.problems == [
        f"{tmp_path / 'DE.toml'}: region: must match the file name ('DE'), got 'AT'",
        f"{tmp_path / 'KZ.toml'}: line 2, column 19: invalid TOML: Illegal character '\\n'",
        f"{tmp_path / 'XK.toml'}: timezone: unknown IANA time zone 'Nowhere'",
    ]
    assert isinstance(info.value, ConfigError)  # the CLI reports it like a config error
    assert str(info.value).count("\n") == 2


def test_load_profiles_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ProfileError) as info:
        load_profiles(tmp_path / "nope")
    assert info.value.problems[0].startswith(f"{tmp_path / 'nope'}: cannot read directory:")


def test_load_profiles_empty_directory(tmp_path: Path) -> None:
    assert load_profiles(tmp_path) == {}

"""Issue 19 item 8: calendar rules (public holidays per year, weekends) hold marketing back to
the next allowed day's window, in local time and across DST; the stricter profile carries the
Kazakh 10:00-18:00 best-practice window, no weekends and mandatory opt-out instructions."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from aggregator.policy.profiles import (
    Calendar,
    CountryProfile,
    ProfileError,
    bundled_profiles,
    load_profiles,
    parse_profile,
)
from aggregator.policy.rules import Allow, Defer, PolicyInput, Reject, evaluate

ROOT = Path(__file__).resolve().parents[2]
P = bundled_profiles()
STRICT = load_profiles(ROOT / "config" / "countries" / "strict")


def item(region: str, message_class: str = "marketing",
         text: str = "Spring sale; unsubscribe at shop.example/u"
         ) -> PolicyInput:
    return PolicyInput(region=region, number_type="mobile", message_class=message_class,
                       sender="Shop", sender_kind="alphanumeric", text=text, account="acme",
                       registered_senders={"KZ": ["Shop"]}, opted_out=False)


def local(profile: CountryProfile, *args: int) -> datetime:
    return datetime(*args, tzinfo=profile.timezone).astimezone(UTC)  # type: ignore[misc]


def deferred_to(profile: CountryProfile, now: datetime, **kw: str) -> datetime | None:
    verdict = evaluate(profile, item(profile.region, **kw), now)
    if isinstance(verdict, Defer):
        return verdict.until_utc
    assert verdict == Allow(), verdict
    return None


def test_holiday_data_per_year() -> None:
    xk, kz = P["XK"].calendar, P["KZ"].calendar
    assert xk.avoid_holidays and kz.avoid_holidays
    assert not xk.avoid_weekends and not kz.avoid_weekends
    assert {date(2026, 2, 17), date(2027, 2, 17), date(2026, 4, 13)} <= xk.holidays
    assert {date(2026, 3, 22), date(2026, 12, 16), date(2027, 5, 16)} <= kz.holidays


def test_kosovo_independence_day_edges() -> None:
    xk = P["XK"]
    # 23:59:59 the evening before: outside the 09:00-20:00 window anyway -> 18 Feb 09:00 (the
    # 17th is skipped).
    assert deferred_to(xk, local(xk, 2026, 2, 16, 23, 59, 59)) == local(xk, 2026, 2, 18, 9)
    assert deferred_to(xk, local(xk, 2026, 2, 17, 0, 0, 0)) == local(xk, 2026, 2, 18, 9)
    assert deferred_to(xk, local(xk, 2026, 2, 17, 12)) == local(xk, 2026, 2, 18, 9)
    assert deferred_to(xk, local(xk, 2026, 2, 17, 23, 59, 59)) == local(xk, 2026, 2, 18, 9)
    assert deferred_to(xk, local(xk, 2026, 2, 18, 9)) is None  # the first second allowed
    assert deferred_to(xk, local(xk, 2026, 2, 17, 12), message_class="transactional") is None


def test_consecutive_holidays_are_skipped() -> None:
    kz = P["KZ"]  # Nauryz: 21-23 March 2026
    assert deferred_to(kz, local(kz, 2026, 3, 20, 20, 59, 59)) is None
    assert deferred_to(kz, local(kz, 2026, 3, 20, 21)) == local(kz, 2026, 3, 24, 9)
    xk = P["XK"]  # New Year 1-2 January 2027
    assert deferred_to(xk, local(xk, 2026, 12, 31, 20)) == local(xk, 2027, 1, 3, 9)


def test_holiday_across_dst() -> None:
    # Catholic Easter Monday 2027 (29 March) follows the spring-forward night (28 March): the
    # next opening is 30 March 09:00 CEST (07:00 UTC), not CET.
    xk = P["XK"]
    until = deferred_to(xk, local(xk, 2027, 3, 28, 21))
    assert until == datetime(2027, 3, 30, 7, 0, tzinfo=UTC)


def test_strict_kazakhstan_window_and_weekends() -> None:
    kz = STRICT["KZ"]
    assert deferred_to(kz, local(kz, 2026, 1, 14, 9, 59, 59)) == local(kz, 2026, 1, 14, 10)
    assert deferred_to(kz, local(kz, 2026, 1, 14, 10), text="Sale; unsubscribe: shop.kz/x") is None
    assert deferred_to(kz, local(kz, 2026, 1, 14, 17, 59, 59),
                       text="Sale; unsubscribe: shop.kz/x") is None
    assert deferred_to(kz, local(kz, 2026, 1, 14, 18)) == local(kz, 2026, 1, 15, 10)
    # Friday 16 January 2026 after 18:00 -> Monday 19th 10:00 (the weekend is skipped).
    assert deferred_to(kz, local(kz, 2026, 1, 16, 18)) == local(kz, 2026, 1, 19, 10)
    assert deferred_to(kz, local(kz, 2026, 1, 17, 12), message_class="transactional") is None


@pytest.mark.parametrize("region", ["XK", "KZ"])
def test_strict_profiles_require_optout_instructions(region: str) -> None:
    profile = STRICT[region]
    now = local(profile, 2026, 1, 14, 12)
    verdict = evaluate(profile, item(region, text="Spring sale at our shop"), now)
    assert isinstance(verdict, Reject) and verdict.rule == "optout_instructions"
    ok = evaluate(profile, item(region, text="Spring sale. To opt out: shop.example/x"), now)
    assert ok == Allow()
    # The normal profiles do not require them; transactional texts never do.
    assert evaluate(P[region], item(region), now) == Allow()
    assert evaluate(profile, item(region, message_class="transactional"), now) == Allow()


def test_strict_profiles_differ_only_where_marked() -> None:
    for region in ("XK", "KZ"):
        normal, strict = P[region], STRICT[region]
        assert strict.senders == normal.senders
        assert dataclasses.replace(strict.optout, consent_required_for_marketing=False) == (
            normal.optout)
        assert strict.calendar.holidays == normal.calendar.holidays
        assert dataclasses.replace(strict.content, require_optout_instructions=False,
                                   optout_instructions=()) == normal.content


def test_calendar_validation() -> None:
    base = {"region": "XK", "name": "Kosovo", "timezone": "Europe/Belgrade"}
    with pytest.raises(ProfileError) as err:
        parse_profile({**base, "calendar": {
            "weekend": ["saturday", "caturday"], "avoid_weekend": True,
            "holidays": {"26": ["01-01"], "2026": ["02-30", "1-1"]}}}, "XK.toml")
    text = str(err.value)
    for part in ("calendar.weekend[1]", "calendar.avoid_weekend: unknown key",
                 "calendar.holidays.26", "calendar.holidays.2026[0]",
                 "calendar.holidays.2026[1]"):
        assert part in text, part
    with pytest.raises(ProfileError, match="cannot be every day"):
        parse_profile({**base, "calendar": {"avoid_weekends": True, "weekend": [
            "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]}},
            "XK.toml")
    assert Calendar().allows(date(2026, 2, 17))  # nothing avoided by default

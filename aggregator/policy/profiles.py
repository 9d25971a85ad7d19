"""Country profiles: one TOML file per country -> validated, immutable CountryProfile.

A profile is data only (see config/countries/SCHEMA.md); the rule engine in
``aggregator.policy.rules`` interprets it. Every problem in every file is collected before
raising, each as "FILE: key.path: problem", by the reader ``aggregator.config`` uses too
(``aggregator.tomlcheck.Reader``).

The only I/O here is reading the files (``load_profiles``, ``bundled_profiles``) and the
time-zone database lookup when a profile is parsed.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, time
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

from aggregator.config import ConfigError
from aggregator.tomlcheck import ABSENT as _ABSENT
from aggregator.tomlcheck import Reader, TomlFileError, decode_toml
from aggregator.tomlcheck import key_text as _key_text
from aggregator.tomlcheck import show as _show

__all__ = [
    "DEFAULT_URL_SHORTENERS",
    "Calendar",
    "ContentRules",
    "CountryProfile",
    "ForbiddenCategory",
    "Frequency",
    "OptOut",
    "ProfileError",
    "Senders",
    "SendingWindows",
    "Throughput",
    "Window",
    "bundled_profiles",
    "load_profiles",
    "parse_profile",
]

DEFAULT_URL_SHORTENERS: Final = (
    "bit.ly",
    "tinyurl.com",
    "goo.gl",
    "t.co",
    "ow.ly",
    "is.gd",
    "buff.ly",
)

_REGION_RE: Final = re.compile(r"[A-Z]{2}")
_TIME_RE: Final = re.compile(r"(?P<h>[0-9]{2}):(?P<m>[0-9]{2})")
_DOMAIN_RE: Final = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)+")
_CATEGORY_RE: Final = re.compile(r"[a-z0-9_]+")


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True, slots=True)
class Window:
    """A daily local-time window [start, end); start > end wraps midnight (22:00-06:00)."""

    start: time
    end: time

    @property
    def wraps(self) -> bool:
        return self.start > self.end

    def contains(self, local: time) -> bool:
        if self.wraps:
            return local >= self.start or local < self.end
        return self.start <= local < self.end


@dataclass(frozen=True, slots=True)
class SendingWindows:
    """Local-time windows per message class; None = any time. Transactional: never deferred."""

    marketing: Window | None = None


@dataclass(frozen=True, slots=True)
class Senders:
    alphanumeric: bool = True
    alphanumeric_registration_required: bool = False
    long_codes: bool = True
    short_codes: bool = True
    max_alphanumeric_length: int = 11
    # False: a long number of this country (domestic) is refused as sender; international long
    # numbers (other countries') still pass when long_codes is true.
    domestic_long_codes: bool = True


@dataclass(frozen=True, slots=True)
class OptOut:
    keywords: tuple[str, ...] = ("STOP",)
    help_keywords: tuple[str, ...] = ("HELP",)
    confirmation: str = ""
    help_text: str = ""
    # Marketing only to numbers with a consent recorded for the account (POST /v1/consents).
    consent_required_for_marketing: bool = False


@dataclass(frozen=True, slots=True)
class ForbiddenCategory:
    name: str
    keywords: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ContentRules:
    forbidden_categories: tuple[ForbiddenCategory, ...] = ()
    max_uppercase_ratio: float = 0.7
    all_caps_min_letters: int = 10
    max_repeated_punctuation: int = 3
    url_shorteners: tuple[str, ...] = DEFAULT_URL_SHORTENERS
    # Categories that need documents: refused unless the account is cleared for them here.
    documented_categories: tuple[ForbiddenCategory, ...] = ()
    # Marketing must say how to opt out: contain one of optout_instructions (case-insensitive).
    require_optout_instructions: bool = False
    optout_instructions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Frequency:
    """Marketing caps per recipient and account; None = no cap."""

    max_per_month: int | None = None
    min_interval_hours: float | None = None


WEEKDAYS: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
                   "sunday")


@dataclass(frozen=True, slots=True)
class Calendar:
    """Days marketing is held back on (deferred to the next allowed day's window)."""

    weekend: tuple[int, ...] = (5, 6)  # date.weekday() numbers: Saturday, Sunday
    avoid_weekends: bool = False
    avoid_holidays: bool = False
    holidays: frozenset[date] = frozenset()

    def allows(self, day: date) -> bool:
        if self.avoid_holidays and day in self.holidays:
            return False
        return not (self.avoid_weekends and day.weekday() in self.weekend)


@dataclass(frozen=True, slots=True)
class Throughput:
    """Country-wide sending rate over every provider (SMS parts); None = no limit."""

    max_per_second: int | None = None
    max_per_minute: int | None = None


@dataclass(frozen=True, slots=True)
class CountryProfile:
    region: str  # ISO 3166 code as phonenumbers reports it ("XK", "KZ")
    name: str
    timezone: ZoneInfo
    landlines_supported: bool = False
    two_way_supported: bool = False
    sending_windows: SendingWindows = SendingWindows()
    senders: Senders = Senders()
    optout: OptOut = OptOut()
    content: ContentRules = ContentRules()
    frequency: Frequency = Frequency()
    source: str = field(default="", compare=False)
    throughput: Throughput = Throughput()
    calendar: Calendar = Calendar()


class ProfileError(ConfigError):
    """Every problem found in the country profiles, each "FILE: key.path: problem"."""


def normalize_keyword(text: str) -> str:
    """The form keywords are compared in: NFKC, case-folded, trimmed."""
    return unicodedata.normalize("NFKC", text).strip().casefold()


# --------------------------------------------------------------------------- sections


def _parse_time(r: Reader, key: str) -> time | None:
    value, given = r.lookup(key)
    if not given:
        return None
    if isinstance(value, time):  # TOML local time: start = 09:00:00
        if value.tzinfo is not None:
            r.problem(key, "must be a local time without an offset")
            return None
        return value
    match = _TIME_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None or int(match["h"]) > 23 or int(match["m"]) > 59:
        r.problem(key, f'must be a time "HH:MM" from 00:00 to 23:59, got {_show(value)}')
        return None
    return time(int(match["h"]), int(match["m"]))


def _parse_window(parent: Reader, key: str) -> Window | None:
    if not parent.given(key):
        return None
    r = parent.table(key, Window)
    start, end = _parse_time(r, "start"), _parse_time(r, "end")
    r.finish()
    if start is None or end is None:
        return None
    if start == end:
        r.problem("end", f"must differ from start ({start:%H:%M}); omit the window for any time")
        return None
    return Window(start, end)


def _parse_windows(r: Reader) -> SendingWindows:
    if r.given("transactional"):
        r.problem("transactional", "transactional messages are never deferred; remove this key")
    return SendingWindows(marketing=_parse_window(r, "marketing"))


def _parse_senders(r: Reader) -> Senders:
    return Senders(
        alphanumeric=r.boolean("alphanumeric"),
        alphanumeric_registration_required=r.boolean("alphanumeric_registration_required"),
        long_codes=r.boolean("long_codes"),
        short_codes=r.boolean("short_codes"),
        max_alphanumeric_length=r.integer("max_alphanumeric_length", lo=1, hi=11,
                                          whole_range=True),
        domestic_long_codes=r.boolean("domestic_long_codes"),
    )


def _parse_optout(r: Reader) -> OptOut:
    keywords = r.string_list("keywords", trimmed=True)
    help_keywords = r.string_list("help_keywords", trimmed=True)
    seen: dict[str, str] = {}
    for key, words in (("keywords", keywords), ("help_keywords", help_keywords)):
        for word in words:
            norm = normalize_keyword(word)
            if norm in seen:
                r.problem(key, f"keyword {word!r} is already listed in optout.{seen[norm]}")
            else:
                seen[norm] = key
    if not keywords and r.given("keywords"):
        r.problem("keywords", "must list at least one opt-out keyword")
    return OptOut(
        keywords=keywords,
        help_keywords=help_keywords,
        confirmation=r.string("confirmation"),
        help_text=r.string("help_text"),
        consent_required_for_marketing=r.boolean("consent_required_for_marketing"),
    )


def _parse_categories(r: Reader, key: str = "forbidden_categories"
                      ) -> tuple[ForbiddenCategory, ...]:
    value = r.optional(key)
    if value is _ABSENT:
        return ()
    if not isinstance(value, Mapping):
        r.problem(key, f"must be a table, got {_show(value)}")
        return ()
    categories: list[ForbiddenCategory] = []
    base = r.where(key)
    for name, words in value.items():
        where = f"{base}.{_key_text(name)}"
        if not _CATEGORY_RE.fullmatch(name):
            r.problem(name, "category names use only a-z, 0-9 and _", at=where)
            continue
        keywords = r.strings(name, words, where, trimmed=True)
        if isinstance(words, list | tuple) and not words:
            r.problem(name, "must list at least one keyword", at=where)
        if keywords:
            categories.append(ForbiddenCategory(name, keywords))
    return tuple(categories)


def _parse_content(r: Reader) -> ContentRules:
    categories = _parse_categories(r)
    shorteners = r.string_list("url_shorteners", trimmed=True)
    for i, domain in enumerate(shorteners):
        if not _DOMAIN_RE.fullmatch(domain):
            r.problem("url_shorteners", f"must be a lower-case domain like 'bit.ly', got "
                      f"{_show(domain)}", at=r.item("url_shorteners", i))
    content = ContentRules(
        forbidden_categories=categories,
        documented_categories=_parse_categories(r, "documented_categories"),
        require_optout_instructions=r.boolean("require_optout_instructions"),
        optout_instructions=r.string_list("optout_instructions", trimmed=True),
        max_uppercase_ratio=r.number("max_uppercase_ratio", ge=0, le=1),
        all_caps_min_letters=r.integer("all_caps_min_letters", lo=1),
        max_repeated_punctuation=r.integer("max_repeated_punctuation", lo=1),
        url_shorteners=shorteners,
    )
    if content.require_optout_instructions and not content.optout_instructions:
        r.problem("optout_instructions",
                  "must list at least one phrase when require_optout_instructions is true")
    return content


def _parse_frequency(r: Reader) -> Frequency:
    return Frequency(  # no cap (None) unless given
        max_per_month=r.integer("max_per_month", lo=1) if r.given("max_per_month") else None,
        min_interval_hours=(r.number("min_interval_hours", ge=0)
                            if r.given("min_interval_hours") else None),
    )


_MONTH_DAY_RE: Final = re.compile(r"(?P<m>[0-9]{2})-(?P<d>[0-9]{2})")


def _parse_holidays(r: Reader) -> frozenset[date]:
    """[calendar.holidays]: year = ["MM-DD", ...] (data per year: movable feasts differ)."""
    value = r.optional("holidays")
    if value is _ABSENT:
        return frozenset()
    if not isinstance(value, Mapping):
        r.problem("holidays", f'must be a table like {{ 2026 = ["01-01"] }}, got {_show(value)}')
        return frozenset()
    days: set[date] = set()
    base = r.where("holidays")
    for year, items in value.items():
        where = f"{base}.{_key_text(year)}"
        if not (isinstance(year, str) and year.isdigit() and len(year) == 4):
            r.problem("holidays", "keys are years like 2026", at=where)
            continue
        for i, item in enumerate(r.strings(year, items, where, trimmed=True)):
            match = _MONTH_DAY_RE.fullmatch(item)
            try:
                if match is None:
                    raise ValueError
                days.add(date(int(year), int(match["m"]), int(match["d"])))
            except ValueError:
                r.problem("holidays", f'must be a date "MM-DD" of {year}, got {_show(item)}',
                          at=f"{where}[{i}]")
    return frozenset(days)


def _parse_weekend(r: Reader) -> tuple[int, ...]:
    """Day names -> date.weekday() numbers; absent: the default weekend."""
    value, given = r.lookup("weekend")
    if not given:
        return tuple(value)
    weekend: list[int] = []
    for i, name in enumerate(r.strings("weekend", value, r.where("weekend"), trimmed=True)):
        if name.lower() in WEEKDAYS:
            weekend.append(WEEKDAYS.index(name.lower()))
        else:
            r.problem("weekend", f"must be a day name like 'saturday', got {_show(name)}",
                      at=r.item("weekend", i))
    return tuple(sorted(set(weekend)))


def _parse_calendar(r: Reader) -> Calendar:
    calendar = Calendar(
        weekend=_parse_weekend(r),
        avoid_weekends=r.boolean("avoid_weekends"),
        avoid_holidays=r.boolean("avoid_holidays"),
        holidays=_parse_holidays(r),
    )
    if calendar.avoid_weekends and len(calendar.weekend) == len(WEEKDAYS):
        r.problem("weekend", "cannot be every day when avoid_weekends is true")
    return calendar


def _parse_throughput(r: Reader) -> Throughput:
    def limit(key: str, hi: int) -> int | None:  # no limit (None) unless given
        return r.integer(key, lo=1, hi=hi, whole_range=True) if r.given(key) else None

    return Throughput(max_per_second=limit("max_per_second", 100_000),
                      max_per_minute=limit("max_per_minute", 1_000_000))


def _parse_timezone(r: Reader) -> ZoneInfo | None:
    name = r.string("timezone")
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        r.problem("timezone", f"unknown IANA time zone {_show(name)}")
        return None


def _parse_region(r: Reader, expected: str | None) -> str:
    region = r.string("region")
    if not region:
        return region
    if not _REGION_RE.fullmatch(region) or region not in phonenumbers.SUPPORTED_REGIONS:
        r.problem("region", f"must be a region code phonenumbers knows (like 'XK'), got "
                  f"{_show(region)}")
    elif expected is not None and region != expected:
        r.problem("region", f"must match the file name ({expected!r}), got {_show(region)}")
    return region


def parse_profile(
    data: Mapping[str, Any], source: str, *, expected_region: str | None = None
) -> CountryProfile:
    """Validate one decoded profile; raises ProfileError listing every problem.

    ``expected_region`` (the file name's stem when loading a directory) must equal ``region``.
    """
    problems: list[str] = []
    top = Reader(data, "", source, problems, CountryProfile)
    region = _parse_region(top, expected_region)
    name = top.string("name")
    if isinstance(data.get("name"), str) and not name.strip():
        top.problem("name", "must not be empty")
    zone = _parse_timezone(top)
    landlines = top.boolean("landlines_supported")
    two_way = top.boolean("two_way_supported")
    windows = top.section("sending_windows", SendingWindows, _parse_windows)
    senders = top.section("senders", Senders, _parse_senders)
    optout = top.section("optout", OptOut, _parse_optout)
    content = top.section("content", ContentRules, _parse_content)
    frequency = top.section("frequency", Frequency, _parse_frequency)
    throughput = top.section("throughput", Throughput, _parse_throughput)
    calendar = top.section("calendar", Calendar, _parse_calendar)
    top.finish()
    if problems or zone is None:
        raise ProfileError(problems)
    return CountryProfile(
        region=region,
        name=name,
        timezone=zone,
        landlines_supported=landlines,
        two_way_supported=two_way,
        sending_windows=windows,
        senders=senders,
        optout=optout,
        content=content,
        frequency=frequency,
        source=source,
        throughput=throughput,
        calendar=calendar,
    )


# --------------------------------------------------------------------------- loading


def _decode(raw: bytes, source: str) -> dict[str, Any]:
    try:
        return decode_toml(raw, source)
    except TomlFileError as exc:
        raise ProfileError([str(exc)]) from None


def _load_all(files: Iterable[tuple[str, str, bytes]]) -> dict[str, CountryProfile]:
    """(source, stem, content) per file -> profiles by region; collects every file's problems."""
    problems: list[str] = []
    profiles: dict[str, CountryProfile] = {}
    for source, stem, raw in files:
        try:
            profile = parse_profile(_decode(raw, source), source, expected_region=stem)
        except ProfileError as exc:
            problems.extend(exc.problems)
            continue
        profiles[profile.region] = profile
    if problems:
        raise ProfileError(problems)
    return dict(sorted(profiles.items()))


def load_profiles(directory: str | Path) -> dict[str, CountryProfile]:
    """Every ``*.toml`` in directory (file name = region code), keyed by region."""
    base = Path(directory)
    try:
        paths = sorted(p for p in base.iterdir() if p.suffix == ".toml" and p.is_file())
    except OSError as exc:
        raise ProfileError([f"{base}: cannot read directory: {exc.strerror or exc}"]) from None

    def read(path: Path) -> tuple[str, str, bytes]:
        try:
            return str(path), path.stem, path.read_bytes()
        except OSError as exc:
            raise ProfileError([f"{path}: cannot read file: {exc.strerror or exc}"]) from None

    return _load_all(read(p) for p in paths)


def _bundled_dir() -> Traversable:
    return resources.files("aggregator.policy").joinpath("countries")


def profiles_for(countries: str | None) -> dict[str, CountryProfile]:
    """`[policy] countries`: that directory's profiles; None: the bundled ones."""
    return load_profiles(countries) if countries else bundled_profiles()


def bundled_profiles() -> dict[str, CountryProfile]:
    """The profiles shipped inside the package (aggregator/policy/countries/*.toml)."""
    entries: Sequence[Traversable] = sorted(
        (e for e in _bundled_dir().iterdir() if e.name.endswith(".toml") and e.is_file()),
        key=lambda e: e.name,
    )
    return _load_all(
        (f"aggregator/policy/countries/{e.name}", e.name.removesuffix(".toml"), e.read_bytes())
        for e in entries
    )

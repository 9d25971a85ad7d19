"""Country profiles: one TOML file per country -> validated, immutable CountryProfile.

A profile is data only (see config/countries/SCHEMA.md); the rule engine in
``aggregator.policy.rules`` interprets it. Every problem in every file is collected before
raising, each as "FILE: key.path: problem", like ``aggregator.config``.

The only I/O here is reading the files (``load_profiles``, ``bundled_profiles``) and the
time-zone database lookup when a profile is parsed.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
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
from aggregator.tomlcheck import is_number as _is_number
from aggregator.tomlcheck import key_text as _key_text
from aggregator.tomlcheck import show as _show
from aggregator.tomlcheck import toml_problem

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


# --------------------------------------------------------------------------- reader


class _Reader:
    """Problem-collecting access to one TOML table; getters never raise."""

    __slots__ = ("_asked", "_data", "path", "problems", "source")

    def __init__(self, data: Mapping[str, Any], path: str, source: str, problems: list[str]):
        self._data = data
        self.path = path
        self.source = source
        self.problems = problems
        self._asked: list[str] = []

    def where(self, key: str) -> str:
        return f"{self.path}.{_key_text(key)}" if self.path else _key_text(key)

    def problem(self, key: str, message: str, *, at: str | None = None) -> None:
        self.problems.append(f"{self.source}: {at or self.where(key)}: {message}")

    def get(self, key: str, *, required: bool = False) -> Any:
        self._asked.append(key)
        if key in self._data:
            return self._data[key]
        if required:
            self.problem(key, "required key is missing")
        return _ABSENT

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is _ABSENT:
            return default
        if not isinstance(value, bool):
            self.problem(key, f"must be true or false, got {_show(value)}")
            return default
        return value

    def integer(self, key: str, default: int | None, *, lo: int, hi: int | None = None) -> Any:
        value = self.get(key)
        if value is _ABSENT:
            return default
        top = f" between {lo} and {hi}" if hi is not None else f" >= {lo}"
        if not isinstance(value, int) or isinstance(value, bool):
            self.problem(key, f"must be an integer{top}, got {_show(value)}")
            return default
        if value < lo or (hi is not None and value > hi):
            self.problem(key, f"must be an integer{top}, got {value}")
            return default
        return value

    def number(
        self, key: str, default: float | None, *, lo: float, hi: float | None = None
    ) -> Any:
        value = self.get(key)
        if value is _ABSENT:
            return default
        top = f" between {lo:g} and {hi:g}" if hi is not None else f" >= {lo:g}"
        if not _is_number(value) or not math.isfinite(value):
            self.problem(key, f"must be a number{top}, got {_show(value)}")
            return default
        if value < lo or (hi is not None and value > hi):
            self.problem(key, f"must be a number{top}, got {_show(value)}")
            return default
        return float(value)

    def string(self, key: str, default: str, *, required: bool = False) -> str:
        value = self.get(key, required=required)
        if value is _ABSENT:
            return default
        if not isinstance(value, str):
            self.problem(key, f"must be a string, got {_show(value)}")
            return default
        return value

    def string_list(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """An array of non-empty, trimmed strings; item problems are reported as key[i]."""
        value = self.get(key)
        if value is _ABSENT:
            return default
        return _strings(self, key, value, self.where(key))

    def table(self, key: str) -> _Reader:
        """A sub-table reader; an absent table reads as empty (all defaults)."""
        value = self.get(key)
        if value is _ABSENT:
            value = {}
        elif not isinstance(value, Mapping):
            self.problem(key, f"must be a table ([{self.where(key)}]), got {_show(value)}")
            value = {}
        return _Reader(value, self.where(key), self.source, self.problems)

    def finish(self) -> None:
        for key in self._data:
            if key in self._asked:
                continue
            hint = difflib.get_close_matches(str(key), self._asked, n=1)
            message = "unknown key"
            if hint:
                message += f"; did you mean {hint[0]!r}?"
            self.problems.append(f"{self.source}: {self.where(str(key))}: {message}")


def _strings(r: _Reader, key: str, value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        r.problem(key, f"must be an array of strings, got {_show(value)}", at=where)
        return ()
    items: list[str] = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(item, str):
            r.problem(key, f"must be a string, got {_show(item)}", at=at)
        elif not item.strip() or item != item.strip():
            r.problem(key, f"must be non-empty without surrounding spaces, got {_show(item)}",
                      at=at)
        else:
            items.append(item)
    return tuple(items)


def normalize_keyword(text: str) -> str:
    """The form keywords are compared in: NFKC, case-folded, trimmed."""
    return unicodedata.normalize("NFKC", text).strip().casefold()


# --------------------------------------------------------------------------- sections


def _parse_time(r: _Reader, key: str) -> time | None:
    value = r.get(key, required=True)
    if value is _ABSENT:
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


def _parse_window(parent: _Reader, key: str) -> Window | None:
    if parent.get(key) is _ABSENT:
        return None
    r = parent.table(key)
    start, end = _parse_time(r, "start"), _parse_time(r, "end")
    r.finish()
    if start is None or end is None:
        return None
    if start == end:
        r.problem("end", f"must differ from start ({start:%H:%M}); omit the window for any time")
        return None
    return Window(start, end)


def _parse_windows(r: _Reader) -> SendingWindows:
    if r.get("transactional") is not _ABSENT:
        r.problem("transactional", "transactional messages are never deferred; remove this key")
    windows = SendingWindows(marketing=_parse_window(r, "marketing"))
    r.finish()
    return windows


def _parse_senders(r: _Reader) -> Senders:
    d = Senders()
    senders = Senders(
        alphanumeric=r.boolean("alphanumeric", d.alphanumeric),
        alphanumeric_registration_required=r.boolean(
            "alphanumeric_registration_required", d.alphanumeric_registration_required
        ),
        long_codes=r.boolean("long_codes", d.long_codes),
        short_codes=r.boolean("short_codes", d.short_codes),
        max_alphanumeric_length=r.integer(
            "max_alphanumeric_length", d.max_alphanumeric_length, lo=1, hi=11
        ),
        domestic_long_codes=r.boolean("domestic_long_codes", d.domestic_long_codes),
    )
    r.finish()
    return senders


def _parse_optout(r: _Reader) -> OptOut:
    d = OptOut()
    keywords = r.string_list("keywords", d.keywords)
    help_keywords = r.string_list("help_keywords", d.help_keywords)
    seen: dict[str, str] = {}
    for key, words in (("keywords", keywords), ("help_keywords", help_keywords)):
        for word in words:
            norm = normalize_keyword(word)
            if norm in seen:
                r.problem(key, f"keyword {word!r} is already listed in optout.{seen[norm]}")
            else:
                seen[norm] = key
    if not keywords and r.get("keywords") is not _ABSENT:
        r.problem("keywords", "must list at least one opt-out keyword")
    optout = OptOut(
        keywords=keywords,
        help_keywords=help_keywords,
        confirmation=r.string("confirmation", d.confirmation),
        help_text=r.string("help_text", d.help_text),
        consent_required_for_marketing=r.boolean("consent_required_for_marketing",
                                                 d.consent_required_for_marketing),
    )
    r.finish()
    return optout


def _parse_categories(r: _Reader, key: str = "forbidden_categories"
                      ) -> tuple[ForbiddenCategory, ...]:
    value = r.get(key)
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
        keywords = _strings(r, name, words, where)
        if isinstance(words, list | tuple) and not words:
            r.problem(name, "must list at least one keyword", at=where)
        if keywords:
            categories.append(ForbiddenCategory(name, keywords))
    return tuple(categories)


def _parse_content(r: _Reader) -> ContentRules:
    d = ContentRules()
    categories = _parse_categories(r)
    shorteners = r.string_list("url_shorteners", d.url_shorteners)
    for i, domain in enumerate(shorteners):
        if not _DOMAIN_RE.fullmatch(domain):
            r.problem("url_shorteners", f"must be a lower-case domain like 'bit.ly', got "
                      f"{_show(domain)}", at=f"{r.where('url_shorteners')}[{i}]")
    content = ContentRules(
        forbidden_categories=categories,
        documented_categories=_parse_categories(r, "documented_categories"),
        require_optout_instructions=r.boolean("require_optout_instructions",
                                              d.require_optout_instructions),
        optout_instructions=r.string_list("optout_instructions", d.optout_instructions),
        max_uppercase_ratio=r.number("max_uppercase_ratio", d.max_uppercase_ratio, lo=0, hi=1),
        all_caps_min_letters=r.integer("all_caps_min_letters", d.all_caps_min_letters, lo=1),
        max_repeated_punctuation=r.integer(
            "max_repeated_punctuation", d.max_repeated_punctuation, lo=1
        ),
        url_shorteners=shorteners,
    )
    if content.require_optout_instructions and not content.optout_instructions:
        r.problem("optout_instructions",
                  "must list at least one phrase when require_optout_instructions is true")
    r.finish()
    return content


def _parse_frequency(r: _Reader) -> Frequency:
    frequency = Frequency(
        max_per_month=r.integer("max_per_month", None, lo=1),
        min_interval_hours=r.number("min_interval_hours", None, lo=0),
    )
    r.finish()
    return frequency


_MONTH_DAY_RE: Final = re.compile(r"(?P<m>[0-9]{2})-(?P<d>[0-9]{2})")


def _parse_holidays(r: _Reader) -> frozenset[date]:
    """[calendar.holidays]: year = ["MM-DD", ...] (data per year: movable feasts differ)."""
    value = r.get("holidays")
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
        for i, item in enumerate(_strings(r, year, items, where)):
            match = _MONTH_DAY_RE.fullmatch(item)
            try:
                if match is None:
                    raise ValueError
                days.add(date(int(year), int(match["m"]), int(match["d"])))
            except ValueError:
                r.problem("holidays", f'must be a date "MM-DD" of {year}, got {_show(item)}',
                          at=f"{where}[{i}]")
    return frozenset(days)


def _parse_calendar(r: _Reader) -> Calendar:
    d = Calendar()
    names = r.string_list("weekend", tuple(WEEKDAYS[i] for i in d.weekend))
    weekend: list[int] = []
    for i, name in enumerate(names):
        if name.lower() in WEEKDAYS:
            weekend.append(WEEKDAYS.index(name.lower()))
        else:
            r.problem("weekend", f"must be a day name like 'saturday', got {_show(name)}",
                      at=f"{r.where('weekend')}[{i}]")
    calendar = Calendar(
        weekend=tuple(sorted(set(weekend))),
        avoid_weekends=r.boolean("avoid_weekends", d.avoid_weekends),
        avoid_holidays=r.boolean("avoid_holidays", d.avoid_holidays),
        holidays=_parse_holidays(r),
    )
    if calendar.avoid_weekends and len(calendar.weekend) == len(WEEKDAYS):
        r.problem("weekend", "cannot be every day when avoid_weekends is true")
    r.finish()
    return calendar


def _parse_throughput(r: _Reader) -> Throughput:
    throughput = Throughput(
        max_per_second=r.integer("max_per_second", None, lo=1, hi=100_000),
        max_per_minute=r.integer("max_per_minute", None, lo=1, hi=1_000_000),
    )
    r.finish()
    return throughput


def _parse_timezone(r: _Reader) -> ZoneInfo | None:
    name = r.string("timezone", "", required=True)
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        r.problem("timezone", f"unknown IANA time zone {_show(name)}")
        return None


def _parse_region(r: _Reader, expected: str | None) -> str:
    region = r.string("region", "", required=True)
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
    top = _Reader(data, "", source, problems)
    region = _parse_region(top, expected_region)
    name = top.string("name", "", required=True)
    if isinstance(data.get("name"), str) and not name.strip():
        top.problem("name", "must not be empty")
    zone = _parse_timezone(top)
    landlines = top.boolean("landlines_supported", False)
    two_way = top.boolean("two_way_supported", False)
    windows = _parse_windows(top.table("sending_windows"))
    senders = _parse_senders(top.table("senders"))
    optout = _parse_optout(top.table("optout"))
    content = _parse_content(top.table("content"))
    frequency = _parse_frequency(top.table("frequency"))
    throughput = _parse_throughput(top.table("throughput"))
    calendar = _parse_calendar(top.table("calendar"))
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
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError([f"{source}: byte {exc.start}: file is not valid UTF-8"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError([toml_problem(exc, source)]) from None


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

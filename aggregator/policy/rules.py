"""The country rule engine: a profile + one message + the caller's state -> a verdict.

Pure: no I/O, no clock (``now_utc`` is an argument), no store. State the rules need (has the
recipient opted out, how much marketing did they get lately) is looked up by the caller and
passed in ``PolicyInput``.

Rules run in this order; the first that fires decides:

1. no profile for the region: Allow, except landlines (rule 2, as not supported) and opt-out
   (rule 4), which hold in every country
2. landline (``number_type == "fixed_line"``) where ``landlines_supported`` is false: 422 not_mobile
3. sender: type not supported (422 sender_type_unsupported), alphanumeric too long
   (422 invalid_sender), alphanumeric not registered where registration is required
   (422 sender_not_registered)
4. opt-out: marketing to an opted-out recipient; transactional to one whose opt-out has scope
   "all", or any opt-out when the account sets block_transactional_to_opted_out: 403 opted_out
   (``optout_blocks``)
4b. marketing without a recorded consent where the profile requires one: 403 consent_required
5. every class: forbidden content categories, then documented categories the account is not
   cleared for (422 content_rejected)
6. marketing only: opt-out instructions when required, content style (all caps, punctuation,
   link shorteners: 422 content_rejected), frequency (429 frequency_capped), then quiet hours
   and the calendar (holidays, weekends): Defer until the next local window opening on an
   allowed day.
   Transactional is never deferred.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Final, Literal, TypeAlias
from zoneinfo import ZoneInfo

import phonenumbers

from aggregator.policy.profiles import (
    ContentRules,
    CountryProfile,
    ForbiddenCategory,
    Frequency,
    OptOut,
    Window,
)

__all__ = [
    "Allow",
    "Defer",
    "MoKind",
    "PolicyCode",
    "PolicyInput",
    "Reject",
    "Verdict",
    "check_landline",
    "classify_mo",
    "evaluate",
    "next_allowed_opening",
    "next_window_opening",
    "optout_blocks",
]

MARKETING: Final = "marketing"
TRANSACTIONAL: Final = "transactional"
_MESSAGE_CLASSES: Final = (TRANSACTIONAL, MARKETING)
_SENDER_KINDS: Final = ("alphanumeric", "international", "shortcode")
_BANGS: Final = frozenset("!?¡¿")


class PolicyCode(StrEnum):
    """Codes of policy rejections (API ``code``); NOT_MOBILE, INVALID_SENDER equal ErrorCode's."""

    NOT_MOBILE = "not_mobile"
    INVALID_SENDER = "invalid_sender"
    SENDER_NOT_REGISTERED = "sender_not_registered"
    SENDER_TYPE_UNSUPPORTED = "sender_type_unsupported"
    OPTED_OUT = "opted_out"
    CONTENT_REJECTED = "content_rejected"
    FREQUENCY_CAPPED = "frequency_capped"
    CONSENT_REQUIRED = "consent_required"


@dataclass(frozen=True, slots=True)
class Allow:
    pass


@dataclass(frozen=True, slots=True)
class Defer:
    """Hold the message until ``until_utc`` (tz-aware UTC), then evaluate it again."""

    until_utc: datetime


@dataclass(frozen=True, slots=True)
class Reject:
    status: int  # HTTP status
    code: str  # a PolicyCode value
    message: str  # for humans; names the rule
    rule: str | None = None  # the profile rule that fired: "senders.short_codes", "all_caps", ...


Verdict: TypeAlias = Allow | Defer | Reject
MoKind: TypeAlias = Literal["optout", "help", "other"]

ALLOW: Final = Allow()


# Not frozen: a frozen dataclass sets each of its 15 fields through object.__setattr__, and one
# is built per accepted message (1.9 -> 0.5 µs). Nothing changes one after it is made.
@dataclass(slots=True)
class PolicyInput:
    region: str | None
    number_type: str  # "mobile", "fixed_line", "fixed_line_or_mobile", ... (numbers.Destination)
    message_class: str  # "transactional" | "marketing"
    sender: str
    sender_kind: str  # "alphanumeric" | "international" | "shortcode" (model.SenderKind)
    text: str
    account: str
    registered_senders: Mapping[str, Sequence[str]]  # region -> sender IDs (account config)
    opted_out: bool  # the recipient opted out from this account (looked up by the caller)
    block_transactional_to_opted_out: bool = False
    marketing_sent_last_30d: int = 0  # marketing messages to this recipient in the last 30 days
    last_marketing_at: datetime | None = None  # tz-aware
    # region -> documented content categories the account is cleared for (account config)
    cleared_categories: Mapping[str, Sequence[str]] = field(default_factory=dict)
    has_consent: bool = True  # a marketing consent is on record (looked up when required)
    # The opt-out's scope when opted_out: "marketing" or "all" (store.base.OPTOUT_SCOPES).
    optout_scope: str = "marketing"


# --------------------------------------------------------------------------- entry points


def evaluate(profile: CountryProfile | None, item: PolicyInput, now_utc: datetime) -> Verdict:
    """Apply the country's rules to one message at ``now_utc`` (tz-aware)."""
    _require_aware("now_utc", now_utc)
    if item.message_class not in _MESSAGE_CLASSES:
        raise ValueError(f"unknown message_class {item.message_class!r}")
    if item.sender_kind not in _SENDER_KINDS:
        raise ValueError(f"unknown sender_kind {item.sender_kind!r}")
    if profile is None:
        # Opt-out is the recipient's choice, not a country rule: it holds everywhere. Landlines
        # take the default (not supported).
        return check_landline(None, item.number_type) or check_optout(item) or ALLOW
    rejected = (
        check_landline(profile, item.number_type)
        or _check_sender(profile, item)
        or check_optout(item)
        or _check_consent(profile, item)
    )
    if rejected is not None:
        return rejected
    # Banned content is banned outright by the guides, in every class (issue 19 item 1); so is
    # content that needs documents the account has not given (item 7).
    rejected = _check_banned(profile.content, item.text) or _check_documented(profile, item)
    if rejected is not None:
        return rejected
    if item.message_class != MARKETING:
        return ALLOW
    rejected = _check_content(profile.content, item.text) or check_frequency(
        profile.frequency, item, now_utc
    )
    if rejected is not None:
        return rejected
    window = profile.sending_windows.marketing
    local = now_utc.astimezone(profile.timezone)
    in_window = window is None or window.contains(local.time().replace(tzinfo=None))
    if in_window and profile.calendar.allows(local.date()):
        return ALLOW
    return Defer(next_allowed_opening(profile, now_utc))


def classify_mo(profile: CountryProfile | None, text: str) -> MoKind:
    """A mobile-originated text: an opt-out keyword, a help keyword, or anything else.

    A keyword matches as the first word(s) of the message, case-insensitively (NFKC, Unicode
    case folding), whatever punctuation or whitespace surrounds it: "Stop please", "Ndalo!",
    " stop. " all match STOP; "Stopping", "S T O P" do not. Without a profile the defaults
    STOP / HELP apply.
    """
    optout = profile.optout if profile is not None else OptOut()
    words = tuple(_words(unicodedata.normalize("NFKC", text)))
    if not words:
        return "other"
    if _starts_with_keyword(words, _keyword_words(optout.keywords)):
        return "optout"
    if _starts_with_keyword(words, _keyword_words(optout.help_keywords)):
        return "help"
    return "other"


@lru_cache(maxsize=256)
def _keyword_words(keywords: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """Each keyword as its case-folded words (a keyword may have several: "opt out")."""
    split = (tuple(_words(unicodedata.normalize("NFKC", k))) for k in keywords)
    return tuple(w for w in split if w)


def _starts_with_keyword(words: tuple[str, ...], keywords: tuple[tuple[str, ...], ...]) -> bool:
    return any(words[: len(k)] == k for k in keywords)


def next_window_opening(window: Window, zone: ZoneInfo, now_utc: datetime) -> datetime:
    """The first opening of ``window`` (local wall time in ``zone``) after ``now_utc``, in UTC.

    A start time that does not exist that day (spring-forward gap) opens at the first instant
    the local clock shows a later time, i.e. at the transition. An ambiguous start time
    (fall-back) opens at its first occurrence.
    """
    _require_aware("now_utc", now_utc)
    local = now_utc.astimezone(zone).replace(tzinfo=None)
    opening = datetime.combine(local.date(), window.start)
    if opening <= local:
        opening += timedelta(days=1)  # naive: the same wall time on the next calendar day
    return _wall_to_utc(opening, zone)


def next_allowed_opening(profile: CountryProfile, now_utc: datetime) -> datetime:
    """The first marketing window opening after ``now_utc`` on a day the profile's calendar
    allows (not a holiday / weekend it avoids); local midnight when there is no window."""
    zone = profile.timezone
    window = profile.sending_windows.marketing
    at = now_utc
    for _ in range(800):  # two years of days: a calendar cannot hold everything back
        if window is not None:
            opening = next_window_opening(window, zone, at)
        else:
            day = at.astimezone(zone).date() + timedelta(days=1)
            opening = _wall_to_utc(datetime.combine(day, datetime.min.time()), zone)
        if profile.calendar.allows(opening.astimezone(zone).date()):
            return opening
        at = opening
    raise ValueError(f"{profile.region}: the calendar allows no day in two years")


# --------------------------------------------------------------------------- rules


def check_landline(profile: CountryProfile | None, number_type: str) -> Reject | None:
    """The one place that decides whether a fixed-line number may get SMS: the profile's
    ``landlines_supported``; without a profile, not (numbers.py lets fixed lines through)."""
    if number_type != "fixed_line":
        return None
    if profile is None:
        return Reject(422, PolicyCode.NOT_MOBILE,
                      "the number is a fixed-line number; it cannot receive SMS",
                      "landlines_supported")
    if not profile.landlines_supported:
        return Reject(
            422,
            PolicyCode.NOT_MOBILE,
            f"SMS to landlines is not supported in {profile.name} ({profile.region})",
            "landlines_supported",
        )
    return None


def _unsupported(profile: CountryProfile, what: str, rule: str) -> Reject:
    return Reject(
        422,
        PolicyCode.SENDER_TYPE_UNSUPPORTED,
        f"{what} senders are not supported in {profile.name} ({profile.region})",
        rule,
    )


def _check_sender(profile: CountryProfile, item: PolicyInput) -> Reject | None:
    senders = profile.senders
    if item.sender_kind == "shortcode" and not senders.short_codes:
        return _unsupported(profile, "short code", "senders.short_codes")
    if item.sender_kind == "international" and not senders.long_codes:
        return _unsupported(profile, "long number", "senders.long_codes")
    if (item.sender_kind == "international" and not senders.domestic_long_codes
            and _number_region(item.sender) == profile.region):
        return _unsupported(profile, f"domestic long number ({item.sender})",
                            "senders.domestic_long_codes")
    if item.sender_kind != "alphanumeric":
        return None
    if not senders.alphanumeric:
        return _unsupported(profile, "alphanumeric", "senders.alphanumeric")
    if len(item.sender) > senders.max_alphanumeric_length:
        return Reject(
            422,
            PolicyCode.INVALID_SENDER,
            f"alphanumeric sender {item.sender!r} is longer than "
            f"{senders.max_alphanumeric_length} characters allowed in {profile.name}",
            "senders.max_alphanumeric_length",
        )
    if senders.alphanumeric_registration_required:
        registered = item.registered_senders.get(profile.region, ())
        if item.sender not in registered:
            return Reject(
                422,
                PolicyCode.SENDER_NOT_REGISTERED,
                f"alphanumeric sender {item.sender!r} is not registered for account "
                f"{item.account!r} in {profile.name} ({profile.region}); "
                "registered sender IDs are required there",
                "senders.alphanumeric_registration_required",
            )
    return None


def optout_blocks(scope: str | None, message_class: str,
                  block_transactional_to_opted_out: bool) -> bool:
    """Whether an opt-out of `scope` (None: none) stops a message of `message_class`: "all"
    stops every class; "marketing" stops marketing, and transactional only where the account
    sets block_transactional_to_opted_out (which makes every opt-out an "all" one)."""
    if scope is None:
        return False
    return (scope == "all" or message_class == MARKETING or block_transactional_to_opted_out)


def check_optout(item: PolicyInput) -> Reject | None:
    scope = item.optout_scope if item.opted_out else None
    if optout_blocks(scope, item.message_class, item.block_transactional_to_opted_out):
        of = "all" if scope == "all" else item.message_class
        return Reject(
            403,
            PolicyCode.OPTED_OUT,
            f"the recipient has opted out of {of} messages from account {item.account!r}",
            "optout",
        )
    return None


def _check_consent(profile: CountryProfile, item: PolicyInput) -> Reject | None:
    if (item.message_class != MARKETING or item.has_consent
            or not profile.optout.consent_required_for_marketing):
        return None
    return Reject(
        403,
        PolicyCode.CONSENT_REQUIRED,
        f"marketing to {profile.name} needs the recipient's recorded consent; account "
        f"{item.account!r} has none for this number (record it with POST /v1/consents)",
        "optout.consent_required_for_marketing",
    )


def _content_rejected(rule: str, detail: str) -> Reject:
    return Reject(
        422,
        PolicyCode.CONTENT_REJECTED,
        f"marketing text rejected by content rule {rule}: {detail}",
        rule,
    )


def _check_banned(rules: ContentRules, text: str) -> Reject | None:
    """Forbidden categories: every message class."""
    if not rules.forbidden_categories:
        return None
    return _category_match(rules.forbidden_categories, text, "forbidden", lambda name: "")


def _check_documented(profile: CountryProfile, item: PolicyInput) -> Reject | None:
    """Categories that need documents (KZ financial, healthcare): every class, unless the
    account is cleared for the category in this country."""
    categories = profile.content.documented_categories
    if not categories:
        return None
    cleared = set(item.cleared_categories.get(profile.region, ()))
    # Not cleared for any: the profile's own tuple, whose keyword index _index_of keeps.
    pending = tuple(c for c in categories if c.name not in cleared) if cleared else categories
    if not pending:
        return None
    return _category_match(pending, item.text, "documented", lambda name: (
        f"; {name} messages to {profile.name} need documents: account {item.account!r} is not "
        f"cleared for them"))


def _category_match(categories: tuple[ForbiddenCategory, ...], text: str, kind: str,
                    why: Callable[[str], str]) -> Reject | None:
    """The rejection by rule ``{kind}_category:NAME`` of the first category one of whose
    keywords the text contains (``why(NAME)`` appended to the message), or None."""
    found = _forbidden_match(_index_of(categories),
                             _words(unicodedata.normalize("NFKC", text)))
    if found is None:
        return None
    name, keyword = found
    rule = f"{kind}_category:{name}"
    return Reject(422, PolicyCode.CONTENT_REJECTED,
                  f"text rejected by content rule {rule}: contains {keyword!r}{why(name)}", rule)


def _check_optout_instructions(rules: ContentRules, text: str) -> Reject | None:
    """Marketing to a country without two-way SMS must say how to opt out (profile flag)."""
    if not rules.require_optout_instructions:
        return None
    folded = unicodedata.normalize("NFKC", text).casefold()
    if any(unicodedata.normalize("NFKC", m).casefold() in folded
           for m in rules.optout_instructions):
        return None
    return _content_rejected(
        "optout_instructions",
        "marketing texts here must say how to opt out (one of: "
        + ", ".join(repr(m) for m in rules.optout_instructions[:5]) + ")",
    )


def _check_content(rules: ContentRules, text: str) -> Reject | None:
    """The carrier-filtering style rules: marketing only."""
    rejected = _check_optout_instructions(rules, text)
    if rejected is not None:
        return rejected
    norm = unicodedata.normalize("NFKC", text)
    cased = [c for c in text if c.isupper() or c.islower()]
    if len(cased) >= rules.all_caps_min_letters:
        ratio = sum(c.isupper() for c in cased) / len(cased)
        if ratio > rules.max_uppercase_ratio:
            return _content_rejected(
                "all_caps",
                f"{ratio:.0%} of letters are upper case (at most "
                f"{rules.max_uppercase_ratio:.0%} allowed)",
            )
    run = _punctuation_run(text, rules.max_repeated_punctuation)
    if run:
        return _content_rejected(
            "excessive_punctuation",
            f"{run!r} repeats punctuation more than {rules.max_repeated_punctuation} times",
        )
    lowered = norm.lower()
    if any(domain in lowered for domain in rules.url_shorteners):  # cheap pre-check
        match = _shortener_pattern(rules.url_shorteners).search(norm)
        if match:
            return _content_rejected("url_shortener", f"link shortener {match.group(0)!r}")
    return None


def check_frequency(frequency: Frequency, item: PolicyInput, now_utc: datetime) -> Reject | None:
    cap = frequency.max_per_month
    if cap is not None and item.marketing_sent_last_30d >= cap:
        return Reject(
            429,
            PolicyCode.FREQUENCY_CAPPED,
            f"the recipient already got {item.marketing_sent_last_30d} marketing messages "
            f"in the last 30 days (at most {cap} allowed)",
            "frequency.max_per_month",
        )
    hours = frequency.min_interval_hours
    last = item.last_marketing_at
    if hours is not None and last is not None:
        _require_aware("last_marketing_at", last)
        allowed_at = last + timedelta(hours=hours)
        if now_utc < allowed_at:
            return Reject(
                429,
                PolicyCode.FREQUENCY_CAPPED,
                f"marketing messages to one recipient must be {hours:g} hours apart; "
                f"next allowed at {allowed_at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}",
                "frequency.min_interval_hours",
            )
    return None


# --------------------------------------------------------------------------- helpers


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")


def _local_wall(instant_s: int, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(instant_s, UTC).astimezone(zone).replace(tzinfo=None)


def _wall_to_utc(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first UTC instant at which the local clock in ``zone`` shows ``wall`` or later."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)  # earlier one when ambiguous
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # ``wall`` falls in a gap. fold=0 used the offset before the transition (an instant after
    # it), fold=1 the offset after (an instant before it): bisect for the transition, in whole
    # seconds (zone transitions are on whole seconds).
    lo = int(wall.replace(tzinfo=zone, fold=1).astimezone(UTC).timestamp())
    hi = int(first.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _local_wall(mid, zone) >= wall:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


@lru_cache(maxsize=16)
def _run_pattern(limit: int) -> re.Pattern[str]:
    """Candidates: any character repeated more than ``limit`` times, or a long !/? mix."""
    return re.compile(rf"(.)\1{{{limit},}}|[{''.join(sorted(_BANGS))}]{{{limit + 1},}}", re.DOTALL)


def _punctuation_run(text: str, limit: int) -> str:
    """The first run of punctuation longer than ``limit`` ("" if none).

    A run is one punctuation character (Unicode category P*) repeated ("....", "----") or any
    mix of ! and ? ("?!?!").
    """
    for match in _run_pattern(limit).finditer(text):
        if unicodedata.category(match.group(0)[0]).startswith("P"):
            return match.group(0)
    return ""


_WORD_RE: Final = re.compile(r"\w+")

# first word of a keyword -> (all its words, category position, category name, keyword)
_KeywordIndex: TypeAlias = Mapping[str, tuple[tuple[tuple[str, ...], int, str, str], ...]]


def _words(text: str) -> list[str]:
    """Case-folded words (runs of letters, digits and _) of an NFKC-normalised text."""
    return _WORD_RE.findall(text.casefold())


@lru_cache(maxsize=64)
def _keyword_index(categories: tuple[ForbiddenCategory, ...]) -> _KeywordIndex:
    index: dict[str, list[tuple[tuple[str, ...], int, str, str]]] = {}
    for position, category in enumerate(categories):
        for keyword in category.keywords:
            words = tuple(_words(unicodedata.normalize("NFKC", keyword)))
            if words:
                index.setdefault(words[0], []).append((words, position, category.name, keyword))
    return {first: tuple(entries) for first, entries in index.items()}


# The index of a categories tuple by its identity: a profile's tuple is the same object for
# every message, and _keyword_index's cache would hash every category and keyword again
# (1.5 -> 0.1 µs a message). Each entry holds its tuple, so its id is not reused while kept.
_INDEX_BY_ID: dict[int, tuple[tuple[ForbiddenCategory, ...], _KeywordIndex]] = {}
_INDEX_BY_ID_MAX = 64


def _index_of(categories: tuple[ForbiddenCategory, ...]) -> _KeywordIndex:
    kept = _INDEX_BY_ID.get(id(categories))
    if kept is not None and kept[0] is categories:
        return kept[1]
    index = _keyword_index(categories)
    if len(_INDEX_BY_ID) >= _INDEX_BY_ID_MAX:
        _INDEX_BY_ID.clear()
    _INDEX_BY_ID[id(categories)] = (categories, index)
    return index


def _forbidden_match(index: _KeywordIndex, words: Sequence[str]) -> tuple[str, str] | None:
    """(category, keyword) of the first listed category with a keyword among ``words``.

    A keyword matches whole words: "bet" matches "Bet!" but not "better"; "vote for" matches
    "vote  for" (any separation between its words).
    """
    best: tuple[int, str, str] | None = None
    for i, word in enumerate(words):
        for seq, position, name, keyword in index.get(word, ()):
            if (best is None or position < best[0]) and tuple(words[i : i + len(seq)]) == seq:
                best = (position, name, keyword)
    return None if best is None else (best[1], best[2])


@lru_cache(maxsize=1024)
def _number_region(e164: str) -> str | None:
    """The region of a +E.164 sender ("+38344123456" -> "XK", "+77011234567" -> "KZ")."""
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(e164, None))
    except phonenumbers.NumberParseException:
        return None


@lru_cache(maxsize=64)
def _shortener_pattern(domains: tuple[str, ...]) -> re.Pattern[str]:
    """A shortener host (or a subdomain of one) not followed by more host name."""
    alternatives = "|".join(re.escape(d) for d in sorted(domains, key=len, reverse=True))
    return re.compile(rf"(?<![\w.-])(?:[\w-]+\.)*(?:{alternatives})(?!\.?[\w-])", re.IGNORECASE)


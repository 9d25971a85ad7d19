"""Profile files for `smsagg-sim smsc --profile FILE`: several simulated SMSCs in one process.

A TOML file with one `[[smsc]]` table per SMSC: `name` (unique), `port` (0 picks a free one)
and any SmscProfile field by its own name, times in seconds:

    [[smsc]]
    name = "A"
    port = 2776
    max_tps = 50
    disconnect_every = 10.0
    roaming_delay = 2.0
    replies = { "+38344123456" = "NDALO" }    # MO reply from this number to every message
    [smsc.handsets]                             # number or prefix = behaviour (longest prefix)
    "+38338" = "invalid"                        # deliver, unreachable, roaming or invalid
    "+38344999" = { behaviour = "roaming", reply = "STOP", reply_delay = 1.5 }

Read by the daemon's TOML reader (aggregator.tomlcheck.Reader): every problem in the file is
collected, each naming the file, the entry and the key (ProfileError, a ValueError).
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, NamedTuple, Union, get_args, get_origin, get_type_hints

from aggregator.tomlcheck import ABSENT, Reader, TomlFileError, read_toml, show
from simulator.handsets import HandsetBook
from simulator.smsc import SmscProfile

_HANDSET_KEYS = ("handsets", "replies")  # tables, parsed together into SmscProfile.handsets
_HANDSET_TABLE_KEYS = ("behaviour", "reply", "reply_delay")
_PROFILE_TYPES: dict[str, Any] = get_type_hints(SmscProfile)
_GETTERS: dict[type, str] = {bool: "boolean", int: "integer", float: "number", str: "string"}


class ProfileError(ValueError):
    """A profile file that cannot be used; each line names the file, entry and key."""


class SmscSpec(NamedTuple):
    name: str
    port: int
    profile: SmscProfile


class _SmscReader(Reader):
    """The shared reader in the simulator's wording, which its users know:
    "FILE: [[smsc]] #2 ('B'): key 'max_tps': expected a number, got 'fast'"."""

    __slots__ = ()

    def where(self, key: str) -> str:
        return f"{self.path}: key {key!r}"

    def wrong(self, what: str, shown: str) -> str:
        return f"expected {what}, got {shown}"

    def missing(self, key: str) -> None:
        self.bad.add(key)
        self.note(f"key {key!r} is required")

    def unknown(self, key: str) -> None:
        self.note(f"unknown key {key!r} (known keys: {', '.join(dict.fromkeys(self.asked))})")


def load_profiles(path: str | Path) -> list[SmscSpec]:
    """Read and validate a profile file. Raises ProfileError."""
    try:
        data = read_toml(path)
    except TomlFileError as exc:
        raise ProfileError(str(exc)) from None
    return parse_profiles(data, str(path))


def parse_profiles(data: Mapping[str, Any], source: str) -> list[SmscSpec]:
    """Validate decoded TOML; `source` (the file name) prefixes every error."""
    problems: list[str] = []
    for key in data:
        if key != "smsc":
            problems.append(f"{source}: unknown top-level key {key!r} (expected [[smsc]])")
    entries = data.get("smsc")
    if not isinstance(entries, list) or not entries:
        problems.append(f"{source}: needs at least one [[smsc]] table")
        entries = []
    specs: list[SmscSpec] = []
    names: set[str] = set()
    ports: set[int] = set()
    for index, entry in enumerate(entries, start=1):
        where = f"[[smsc]] #{index}"
        if not isinstance(entry, Mapping):
            problems.append(f"{source}: {where}: must be a table")
            continue
        if isinstance(entry.get("name"), str):
            where += f" ({entry['name']!r})"
        r = _SmscReader(entry, where, source, problems, SmscProfile)
        spec = _parse_entry(r)
        r.finish()
        if spec is None:
            continue
        if spec.name in names:
            r.problem("name", f"{spec.name!r} is used twice")
        if spec.port != 0 and spec.port in ports:
            r.problem("port", f"{spec.port} is used twice")
        names.add(spec.name)
        ports.add(spec.port)
        specs.append(spec)
    if problems:
        raise ProfileError("\n".join(problems))
    return specs


def _parse_entry(r: _SmscReader) -> SmscSpec | None:
    """The entry's SMSC, or None when a key is bad (reported)."""
    name, given = r.lookup("name")
    if given and (not isinstance(name, str) or not name):
        r.problem("name", r.wrong("a non-empty string", show(name)))
    port, given = r.lookup("port")
    if given and (not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535):
        r.problem("port", r.wrong("an integer 0..65535", show(port)))
    values: dict[str, Any] = {}
    for f in fields(SmscProfile):
        if f.name == "handsets":
            if any([r.given(key) for key in _HANDSET_KEYS]):  # a list: both asked, both known
                values["handsets"] = _parse_handsets(r)
        elif r.given(f.name):
            values[f.name] = getattr(r, _GETTERS[_toml_type(f.name)])(f.name)
            if r.ok(f.name):  # alone first, so that a range error names its key
                _profile(r, {f.name: values[f.name]}, f.name)
    if r.bad:
        return None
    profile = _profile(r, values, None)  # a rule over several keys; the message names them
    return SmscSpec(name, port, profile) if profile is not None else None


def _profile(r: _SmscReader, values: dict[str, Any], key: str | None) -> SmscProfile | None:
    """SmscProfile(**values), or None with its ValueError reported (at ``key`` if given)."""
    try:
        return SmscProfile(**values)
    except ValueError as exc:
        if key is None:
            r.note(str(exc))
        else:
            r.problem(key, str(exc))
        return None


def _toml_type(key: str) -> type:
    """The one TOML type of an SmscProfile field (float for `float | None`)."""
    annotation = _PROFILE_TYPES[key]
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = (t for t in get_args(annotation) if t is not type(None))
    assert isinstance(annotation, type)
    return annotation


def _parse_handsets(r: _SmscReader) -> HandsetBook:
    """`handsets` (number or prefix = behaviour, or a table of behaviour, reply, reply_delay)
    and `replies` (number or prefix = reply text), merged into one book."""
    book = HandsetBook()
    for table_key in _HANDSET_KEYS:
        table = r.optional(table_key)
        if table is ABSENT:
            continue
        if not isinstance(table, Mapping):
            what = "behaviour" if table_key == "handsets" else "text"
            r.problem(table_key, r.wrong(f"a table of number = {what}", show(table)))
            continue
        for number, value in table.items():
            at = f"{r.where(table_key)}: {number!r}"
            problem: str | None = None
            try:
                if table_key == "replies":
                    problem = _set_reply(book, number, value, None)
                elif isinstance(value, Mapping):
                    _set_handset(book, number, _SmscReader(value, at, r.source, r.problems))
                elif isinstance(value, str):
                    book.set_behaviour(number, value)
                else:
                    known = ", ".join(_HANDSET_TABLE_KEYS)
                    problem = r.wrong(f"a behaviour string or a table ({known})", show(value))
            except ValueError as exc:
                problem = str(exc)
            if problem:
                r.problem(table_key, problem, at=at)
    return book


def _set_handset(book: HandsetBook, number: str, h: _SmscReader) -> None:
    """One `{ behaviour, reply, reply_delay }` table; its problems are reported through h."""
    behaviour = h.string("behaviour") if h.given("behaviour") else "deliver"
    reply = h.optional("reply")
    delay = h.number("reply_delay") if h.given("reply_delay") else None
    h.finish()
    if h.bad:
        return
    book.set_behaviour(number, behaviour)  # ValueError: reported by the caller
    if reply is not ABSENT:
        problem = _set_reply(book, number, reply, delay)
        if problem:
            h.note(problem)
    elif delay is not None:
        h.note("key 'reply_delay' needs a 'reply'")


def _set_reply(book: HandsetBook, number: str, text: Any, delay: float | None) -> str | None:
    """The reply set, or what is wrong with it."""
    if not isinstance(text, str) or not text:
        return f"expected a non-empty reply text, got {show(text)}"
    book.set_reply(number, text, delay)
    return None


__all__ = ["ProfileError", "SmscSpec", "load_profiles", "parse_profiles"]

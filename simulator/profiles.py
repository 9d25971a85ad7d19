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

Errors name the file, the entry and the key (ProfileError, a ValueError).
"""

from __future__ import annotations

import tomllib
import types
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, NamedTuple, Union, get_args, get_origin, get_type_hints

from simulator.handsets import HandsetBook
from simulator.smsc import SmscProfile

_ENTRY_KEYS = ("name", "port")
_HANDSET_KEYS = ("handsets", "replies")  # tables, parsed together into SmscProfile.handsets
_HANDSET_TABLE_KEYS = ("behaviour", "reply", "reply_delay")
_PROFILE_TYPES: dict[str, Any] = get_type_hints(SmscProfile)
_PROFILE_KEYS = tuple(f.name for f in fields(SmscProfile))
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file, entry and key."""


class SmscSpec(NamedTuple):
    name: str
    port: int
    profile: SmscProfile


def load_profiles(path: str | Path) -> list[SmscSpec]:
    """Read and validate a profile file. Raises ProfileError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: invalid TOML: {exc}") from exc
    return parse_profiles(data, str(path))


def parse_profiles(data: Mapping[str, Any], source: str) -> list[SmscSpec]:
    """Validate decoded TOML; `source` (the file name) prefixes every error."""
    for key in data:
        if key != "smsc":
            raise ProfileError(f"{source}: unknown top-level key {key!r} (expected [[smsc]])")
    entries = data.get("smsc")
    if not isinstance(entries, list) or not entries:
        raise ProfileError(f"{source}: needs at least one [[smsc]] table")
    specs: list[SmscSpec] = []
    names: set[str] = set()
    ports: set[int] = set()
    for index, entry in enumerate(entries, start=1):
        where = f"{source}: [[smsc]] #{index}"
        if not isinstance(entry, dict):
            raise ProfileError(f"{where}: must be a table")
        name = entry.get("name")
        if isinstance(name, str):
            where += f" ({name!r})"
        spec = _parse_entry(entry, where)
        if spec.name in names:
            raise ProfileError(f"{where}: key 'name': {spec.name!r} is used twice")
        if spec.port != 0 and spec.port in ports:
            raise ProfileError(f"{where}: key 'port': {spec.port} is used twice")
        names.add(spec.name)
        ports.add(spec.port)
        specs.append(spec)
    return specs


def _parse_entry(entry: dict[str, Any], where: str) -> SmscSpec:
    for key in entry:
        if key not in _ENTRY_KEYS and key not in _PROFILE_KEYS and key not in _HANDSET_KEYS:
            known = ", ".join((*_ENTRY_KEYS, *_PROFILE_KEYS, "replies"))
            raise ProfileError(f"{where}: unknown key {key!r} (known keys: {known})")
    for key in _ENTRY_KEYS:
        if key not in entry:
            raise ProfileError(f"{where}: key {key!r} is required")
    name = entry["name"]
    if not isinstance(name, str) or not name:
        raise ProfileError(f"{where}: key 'name': expected a non-empty string, got {name!r}")
    port = entry["port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ProfileError(f"{where}: key 'port': expected an integer 0..65535, got {port!r}")
    values: dict[str, Any] = {}
    if any(key in entry for key in _HANDSET_KEYS):
        values["handsets"] = _parse_handsets(entry, where)
    for key, value in entry.items():
        if key in _ENTRY_KEYS or key in _HANDSET_KEYS:
            continue
        values[key] = _convert(value, _PROFILE_TYPES[key], f"{where}: key {key!r}")
        try:  # alone first, so that a range error names its key
            SmscProfile(**{key: values[key]})
        except ValueError as exc:
            raise ProfileError(f"{where}: key {key!r}: {exc}") from exc
    try:
        profile = SmscProfile(**values)
    except ValueError as exc:  # a rule over several keys; the message names them
        raise ProfileError(f"{where}: {exc}") from exc
    return SmscSpec(name, port, profile)


def _parse_handsets(entry: dict[str, Any], where: str) -> HandsetBook:
    """`handsets` (number or prefix = behaviour, or a table of behaviour, reply, reply_delay)
    and `replies` (number or prefix = reply text), merged into one book."""
    book = HandsetBook()
    for table_key in _HANDSET_KEYS:
        table = entry.get(table_key, {})
        if not isinstance(table, dict):
            raise ProfileError(f"{where}: key {table_key!r}: expected a table of number = "
                               f"{'behaviour' if table_key == 'handsets' else 'text'}, "
                               f"got {table!r}")
        for number, value in table.items():
            at = f"{where}: key {table_key!r}: {number!r}"
            try:
                if table_key == "replies":
                    _set_reply(book, number, value, None, at)
                elif isinstance(value, dict):
                    _set_handset_table(book, number, value, at)
                elif isinstance(value, str):
                    book.set_behaviour(number, value)
                else:
                    raise ProfileError(f"{at}: expected a behaviour string or a table "
                                       f"({', '.join(_HANDSET_TABLE_KEYS)}), got {value!r}")
            except ProfileError:
                raise
            except ValueError as exc:
                raise ProfileError(f"{at}: {exc}") from exc
    return book


def _set_handset_table(book: HandsetBook, number: str, value: dict[str, Any], at: str) -> None:
    for key in value:
        if key not in _HANDSET_TABLE_KEYS:
            raise ProfileError(f"{at}: unknown key {key!r} "
                               f"(known keys: {', '.join(_HANDSET_TABLE_KEYS)})")
    behaviour = value.get("behaviour", "deliver")
    if not isinstance(behaviour, str):
        raise ProfileError(f"{at}: key 'behaviour': expected a string, got {behaviour!r}")
    book.set_behaviour(number, behaviour)
    delay = None
    if "reply_delay" in value:
        delay = _convert(value["reply_delay"], float, f"{at}: key 'reply_delay'")
    if "reply" in value:
        _set_reply(book, number, value["reply"], delay, at)
    elif delay is not None:
        raise ProfileError(f"{at}: key 'reply_delay' needs a 'reply'")


def _set_reply(book: HandsetBook, number: str, text: Any, delay: float | None, at: str) -> None:
    if not isinstance(text, str) or not text:
        raise ProfileError(f"{at}: expected a non-empty reply text, got {text!r}")
    book.set_reply(number, text, delay)


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """The TOML value as the field's type (int accepted for float), or ProfileError."""
    if get_origin(annotation) in (Union, types.UnionType):
        candidates = [t for t in get_args(annotation) if t is not type(None)]
    else:
        candidates = [annotation]
    for kind in candidates:
        if kind is bool and isinstance(value, bool):
            return value
        if isinstance(value, bool):
            continue
        if kind is int and isinstance(value, int):
            return value
        if kind is float and isinstance(value, int | float):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
    wanted = " or ".join(_TYPE_NAMES.get(t, getattr(t, "__name__", str(t))) for t in candidates)
    raise ProfileError(f"{where}: expected {wanted}, got {value!r}")


__all__ = ["ProfileError", "SmscSpec", "load_profiles", "parse_profiles"]

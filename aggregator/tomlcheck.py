"""Small pieces shared by the TOML validators (config.py, policy/profiles.py): how a value or a
key is shown in a problem message, and where a TOML syntax error is."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from typing import Final

BARE_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]+")
_TOML_POS_RE: Final = re.compile(r"^(?P<msg>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)$")


class Absent:
    """Sentinel type for "no value" (distinct from None, which TOML cannot express anyway)."""

    __slots__ = ()


ABSENT: Final = Absent()


def key_text(key: str) -> str:
    return key if BARE_KEY_RE.fullmatch(key) else f'"{key}"'


def join_key(path: str, key: str) -> str:
    return f"{path}.{key_text(key)}" if path else key_text(key)


def kind(value: object) -> str:
    """TOML-flavoured type name, used instead of the value where the value may be secret."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    return f"a {type(value).__name__}"  # TOML dates and times


def show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, int | float):
        return repr(value)
    return kind(value)


def is_number(value: object) -> bool:
    # bool is an int subclass, but `binds = true` is a mistake, not 1.
    return isinstance(value, int | float) and not isinstance(value, bool)


def toml_problem(exc: tomllib.TOMLDecodeError, source: str) -> str:
    """'FILE: line L, column C: invalid TOML: ...' (Python 3.11 has the position only in the
    message, not as attributes)."""
    message = str(exc)
    match = _TOML_POS_RE.match(message)
    if match:
        where = f"line {match['line']}, column {match['col']}"
        message = match["msg"]
    else:
        where = "end of file" if message.endswith("(at end of document)") else "TOML"
        message = message.removesuffix(" (at end of document)")
    return f"{source}: {where}: invalid TOML: {message}"

"""The one TOML validator: ``Reader``, typed and problem-collecting access to a table, used for
the daemon's configuration (config.py), the country profiles (policy/profiles.py) and the
simulator's SMSC profiles (simulator/profiles.py); plus how a value or a key is shown in a
problem message, and reading a file into a TOML document with a problem that names the file."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

BARE_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]+")
_TOML_POS_RE: Final = re.compile(r"^(?P<msg>.*) \(at line (?P<line>\d+), column (?P<col>\d+)\)$")

_T = TypeVar("_T")


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


# --------------------------------------------------------------------------- files


class TomlFileError(Exception):
    """A file that cannot be read as a TOML document; str() is "FILE: where: problem"."""


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


def decode_toml(raw: bytes | str, source: str) -> dict[str, Any]:
    """The document in ``raw`` (bytes must be UTF-8, as TOML is by definition)."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TomlFileError(f"{source}: byte {exc.start}: file is not valid UTF-8") from None
    try:
        return tomllib.loads(raw)
    except tomllib.TOMLDecodeError as exc:
        raise TomlFileError(toml_problem(exc, source)) from None


def read_toml(path: str | Path) -> dict[str, Any]:
    """The document in the file at ``path``; TomlFileError naming the file otherwise."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise TomlFileError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    return decode_toml(raw, str(path))


# --------------------------------------------------------------------------- reader


class Reader:
    """Typed, problem-collecting access to one TOML table.

    Getters never raise: a bad value is reported and a placeholder of the right type is
    returned, so parsing continues and every problem is collected. The reader is the schema:
    keys nobody asks for are reported as unknown by ``finish``, and with ``defaults_from`` (a
    dataclass) a key without a default is required; defaults are trusted, not validated.
    ``bad`` lets cross-field checks skip keys already reported, avoiding follow-on noise.

    A problem reads "FILE: key.path: must be ..., got ...". How it names its place and words a
    wrong value is in ``where``, ``wrong``, ``missing`` and ``unknown`` alone, which the
    simulator's profiles override for their own wording.
    """

    __slots__ = ("_data", "_defaults", "_noun", "asked", "bad", "path", "problems", "source")

    def __init__(
        self,
        data: Mapping[str, Any],
        path: str,
        source: str,
        problems: list[str],
        defaults_from: type[Any] | None = None,
        noun: str = "key",
    ) -> None:
        self._data = data
        self.path = path
        self.source = source
        self.problems = problems
        self._defaults: dict[str, Any] = {}
        if defaults_from is not None:
            for f in dataclasses.fields(defaults_from):
                if f.default is not dataclasses.MISSING:
                    self._defaults[f.name] = f.default
        self._noun = noun
        self.asked: list[str] = []  # the keys read so far: the known ones
        self.bad: set[str] = set()

    # -- wording

    def where(self, key: str) -> str:
        return join_key(self.path, key)

    def item(self, key: str, index: int) -> str:
        return f"{self.where(key)}[{index}]"

    def wrong(self, what: str, shown: str) -> str:
        """The message for a value that is not ``what`` ("an integer >= 1")."""
        return f"must be {what}, got {shown}"

    def missing(self, key: str) -> None:
        self.problem(key, "required key is missing")

    def unknown(self, key: str) -> None:
        hint = difflib.get_close_matches(key, self.asked, n=1)
        message = f"unknown {self._noun}"
        if hint:
            message += f"; did you mean {hint[0]!r}?"
        self.problem(key, message)

    # -- problems

    def problem(self, key: str, message: str, *, at: str | None = None) -> None:
        self.bad.add(key)
        self.problems.append(f"{self.source}: {at or self.where(key)}: {message}")

    def note(self, message: str) -> None:
        """A problem of the table as a whole."""
        self.problems.append(f"{self.source}: {self.path}: {message}")

    def ok(self, *keys: str) -> bool:
        return self.bad.isdisjoint(keys)

    # -- raw access

    def optional(self, key: str) -> Any:
        """The file's value or ABSENT, without defaults or a missing-key report."""
        self.asked.append(key)
        return self._data.get(key, ABSENT)

    def given(self, key: str) -> bool:
        """Whether the file has the key (which counts as asked for)."""
        return self.optional(key) is not ABSENT

    def lookup(self, key: str) -> tuple[Any, bool]:
        """(value, given): the file's value, else the default, else ABSENT.

        A missing required key is reported here; ``given`` is False for defaults.
        """
        self.asked.append(key)
        if key in self._data:
            return self._data[key], True
        if key in self._defaults:
            return self._defaults[key], False
        self.missing(key)
        return ABSENT, False

    # -- typed getters

    def integer(
        self, key: str, *, lo: int | None = None, hi: int | None = None, whole_range: bool = False
    ) -> int:
        """An integer within [lo, hi]; a value out of range is told the bound it crosses, or
        both with ``whole_range``."""
        value, given = self.lookup(key)
        if not given:
            return value if isinstance(value, int) else 0
        if not is_number(value) or not isinstance(value, int):
            self.problem(key, self.wrong(f"an integer{_range_text(lo, hi)}", show(value)))
            return 0
        low = lo is not None and value < lo
        if low or (hi is not None and value > hi):
            bound = (_range_text(lo, hi) if whole_range
                     else _range_text(lo, None) if low else _range_text(None, hi))
            self.problem(key, self.wrong(f"an integer{bound}", str(value)))
        return value

    def number(
        self,
        key: str,
        *,
        gt: float | None = None,
        ge: float | None = None,
        le: float | None = None,
    ) -> float:
        """A finite number > gt (or >= ge) and <= le; an integer is taken as a float."""
        value, given = self.lookup(key)
        if not given:
            return float(value) if is_number(value) else 0.0
        bound = _bound_text(gt, ge, le)
        if not is_number(value):
            self.problem(key, self.wrong(f"a number{bound}", show(value)))
            return 0.0
        number = float(value)
        if not math.isfinite(number):
            self.problem(key, self.wrong("a finite number", show(value)))
        elif ((gt is not None and number <= gt) or (ge is not None and number < ge)
              or (le is not None and number > le)):
            self.problem(key, self.wrong(f"a number{bound}", show(value)))
        return number

    def boolean(self, key: str) -> bool:
        value, given = self.lookup(key)
        if given and not isinstance(value, bool):
            self.problem(key, self.wrong("true or false", show(value)))
            return False
        return value if isinstance(value, bool) else False

    def string(
        self,
        key: str,
        *,
        choices: Sequence[str] = (),
        nonempty: bool = False,
        smpp_max: int | None = None,
        secret: bool = False,
    ) -> str:
        """A string; ``secret`` values are never echoed, only their type or length."""
        value, given = self.lookup(key)
        if not given:
            return value if isinstance(value, str) else ""
        if not isinstance(value, str):
            self.problem(key, self.wrong("a string", kind(value) if secret else show(value)))
            return ""
        text: str = value
        if choices and text not in choices:
            options = ", ".join(repr(c) for c in choices)
            self.problem(key, self.wrong(f"one of {options}", show(text)))
        elif nonempty and not text:
            self.problem(key, "must not be empty")
        elif smpp_max is not None and not text.isascii():
            self.problem(key, "must contain only ASCII characters (SMPP C-octet string)")
        elif smpp_max is not None and len(text) > smpp_max:
            self.problem(
                key,
                f"must be at most {smpp_max} characters (SMPP limit), got {len(text)}",
            )
        return text

    def string_list(
        self, key: str, *, nonempty: bool = False, trimmed: bool = False
    ) -> tuple[str, ...]:
        """An array of strings (see ``strings``); ``nonempty``: at least one."""
        value, given = self.lookup(key)
        if not given:
            return tuple(value) if isinstance(value, tuple) else ()
        if nonempty and isinstance(value, list | tuple) and not value:
            self.problem(key, "must not be empty")
        return self.strings(key, value, self.where(key), trimmed=trimmed)

    def strings(
        self, key: str, value: object, at: str, *, trimmed: bool = False
    ) -> tuple[str, ...]:
        """``value`` (found at ``at``) as an array of strings, item problems reported as
        at[i]; ``trimmed``: each non-empty without surrounding spaces."""
        if not isinstance(value, list | tuple):
            self.problem(key, self.wrong("an array of strings", show(value)), at=at)
            return ()
        items: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.problem(key, self.wrong("a string", show(item)), at=f"{at}[{i}]")
            elif trimmed and (not item.strip() or item != item.strip()):
                self.problem(key, self.wrong("non-empty without surrounding spaces", show(item)),
                             at=f"{at}[{i}]")
            else:
                items.append(item)
        return tuple(items)

    # -- tables

    def table(self, key: str, defaults_from: type[Any] | None = None) -> Reader:
        """A reader of the sub-table ``key``; an absent table reads as empty (all defaults)."""
        value = self.optional(key)
        if value is ABSENT:
            value = {}
        elif not isinstance(value, Mapping):
            self.problem(key, self.wrong(f"a table ([{self.where(key)}])", show(value)))
            value = {}
        return type(self)(value, self.where(key), self.source, self.problems, defaults_from)

    def section(self, key: str, cls: type[_T], parse: Callable[[Reader], _T]) -> _T:
        """``parse`` of the optional sub-table ``key`` (defaults: the dataclass ``cls``),
        then its unknown keys reported."""
        reader = self.table(key, cls)
        result = parse(reader)
        reader.finish()
        return result

    def finish(self) -> None:
        """Report keys present in the table that nobody asked for."""
        for key in self._data:
            if key in self.asked:
                continue
            if not isinstance(key, str):  # only reachable from Python callers
                self.note(f"key {key!r} is not a string")
            else:
                self.unknown(key)


def _range_text(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f" between {lo} and {hi}"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


def _bound_text(gt: float | None, ge: float | None, le: float | None) -> str:
    low = f" > {gt:g}" if gt is not None else f" >= {ge:g}" if ge is not None else ""
    if le is None:
        return low
    if ge is not None:
        return f" between {ge:g} and {le:g}"
    return f"{low} and <= {le:g}" if low else f" <= {le:g}"

"""Simulated handsets: what happens to a message sent to a number, and whether it answers.

A `HandsetBook` maps destination numbers, or prefixes of them, to a `Handset`; `lookup` picks
the longest matching prefix (a full number is just the longest prefix) or the book's default.
Numbers are digits as they appear in submit_sm destination_addr; a leading '+' is dropped, in
keys and in looked-up numbers alike. The SMSC (simulator.smsc) acts on the behaviour:

- "deliver": a DELIVRD receipt after the profile's receipt_delay (the default handset);
- "unreachable": an UNDELIV receipt (err:001), no reply;
- "roaming": DELIVRD, later: after receipt_delay + the profile's roaming_delay;
- "invalid": the submit_sm is answered ESME_RINVDSTADR (0x0B) at once, no receipt.

A handset with `reply` answers each message it receives (once per message; the last part of a
concatenated one) with a mobile-originated deliver_sm, `reply_delay` seconds after delivery.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Literal

Behaviour = Literal["deliver", "unreachable", "roaming", "invalid"]
BEHAVIOURS: tuple[Behaviour, ...] = ("deliver", "unreachable", "roaming", "invalid")


@dataclass(slots=True, frozen=True)
class Handset:
    behaviour: Behaviour = "deliver"
    reply: str | None = None  # text of the MO reply to every message received, e.g. "STOP"
    reply_delay: float = 0.0  # seconds after delivery before the reply is sent

    def __post_init__(self) -> None:
        if self.behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {', '.join(BEHAVIOURS)}, "
                             f"not {self.behaviour!r}")
        if self.reply is not None and not self.reply:
            raise ValueError("reply must not be empty")
        if self.reply_delay < 0:
            raise ValueError("reply_delay must not be negative")


def parse_behaviour(text: str) -> Behaviour:
    """`text` as a Behaviour, or ValueError naming the allowed ones."""
    if text not in BEHAVIOURS:
        raise ValueError(f"unknown behaviour {text!r} (one of: {', '.join(BEHAVIOURS)})")
    return text


def normalise_number(number: str) -> str:
    """A number or prefix as a key: without a leading '+'; ValueError unless digits."""
    digits = number[1:] if number.startswith("+") else number
    if not digits.isdecimal() or not digits.isascii():
        raise ValueError(f"not a number or prefix (digits, optional leading '+'): {number!r}")
    return digits


class HandsetBook:
    """Numbers and prefixes to handsets; anything else gets `default` (deliver, no reply)."""

    __slots__ = ("_entries", "default")

    def __init__(
        self, entries: Mapping[str, Handset] | None = None, default: Handset | None = None
    ) -> None:
        self.default = default if default is not None else Handset()
        self._entries: dict[str, Handset] = {}
        for key, handset in (entries or {}).items():
            self[key] = handset

    def set_behaviour(self, number_or_prefix: str, behaviour: str) -> None:
        """Set the behaviour of this key's handset, keeping any reply it has."""
        key = normalise_number(number_or_prefix)
        current = self._entries.get(key, Handset())
        self._entries[key] = replace(current, behaviour=parse_behaviour(behaviour))

    def set_reply(self, number_or_prefix: str, text: str, delay: float | None = None) -> None:
        """Make this key's handset reply `text` (after `delay`), keeping its behaviour."""
        key = normalise_number(number_or_prefix)
        current = self._entries.get(key, Handset())
        if delay is None:
            delay = current.reply_delay
        self._entries[key] = replace(current, reply=text, reply_delay=delay)

    def __setitem__(self, number_or_prefix: str, handset: Handset) -> None:
        self._entries[normalise_number(number_or_prefix)] = handset

    def __getitem__(self, number_or_prefix: str) -> Handset:
        """The entry for exactly this key (KeyError if none); see lookup for matching."""
        return self._entries[normalise_number(number_or_prefix)]

    def __contains__(self, number_or_prefix: object) -> bool:
        if not isinstance(number_or_prefix, str):
            return False
        try:
            return normalise_number(number_or_prefix) in self._entries
        except ValueError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self) -> list[tuple[str, Handset]]:
        return list(self._entries.items())

    def lookup(self, number: str) -> Handset:
        """The handset of the longest key that `number` starts with, else the default."""
        if not self._entries:
            return self.default
        digits = number[1:] if number.startswith("+") else number
        entries = self._entries
        for end in range(len(digits), 0, -1):
            handset = entries.get(digits[:end])
            if handset is not None:
                return handset
        return self.default

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HandsetBook):
            return NotImplemented
        return self._entries == other._entries and self.default == other.default

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"HandsetBook({self._entries!r}, default={self.default!r})"


__all__ = [
    "BEHAVIOURS", "Behaviour", "Handset", "HandsetBook", "normalise_number", "parse_behaviour",
]

"""The messages a load sends: destinations and a text of a given number of segments."""

from __future__ import annotations

import random

from aggregator.model import Encoding
from aggregator.text import GSM7_PART, GSM7_SINGLE, count_segments


def segment_text(text: str, segments: int) -> str:
    """`text` repeated (space-separated) to fill exactly `segments` GSM-7 segments."""
    if not text:
        text = "x"
    target = GSM7_SINGLE if segments == 1 else GSM7_PART * segments
    unit = text + " "
    out = (unit * (target // len(unit) + 1))[:target].rstrip(" ")
    while count_segments(out, Encoding.GSM7) > segments:  # extension characters count twice
        out = out[:-1]
    while out.endswith(" "):
        out = out[:-1]
    return out


class Destinations:
    """Random numbers: the prefix and `digits` random digits (no leading zero)."""

    def __init__(self, prefix: str, digits: int, rng: random.Random) -> None:
        self._prefix = prefix
        self._low = 10 ** (digits - 1) if digits > 1 else 0
        self._high = 10**digits
        self._rng = rng

    def next(self) -> str:
        return f"{self._prefix}{self._rng.randrange(self._low, self._high)}"

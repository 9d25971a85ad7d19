"""Log lines that an attacker can trigger at will (refused binds, refused connections, bad
credentials) go through a limiter: at most one line per key (source address and event) and
window, with the number of lines held back since the previous one."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from aggregator import metrics


@dataclass(slots=True)
class _Key:
    next_at: float
    held: int = 0


class LogLimiter:
    """``allow(key)`` is None when the line must be held back (it is counted), else how many
    lines of that key were held back since the last one written. At most ``max_keys`` keys are
    tracked (the least recently written is forgotten first), so memory stays bounded."""

    __slots__ = ("_clock", "_keys", "max_keys", "window")

    def __init__(self, window: float = 10.0, *, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window <= 0 or max_keys < 1:
            raise ValueError("window and max_keys must be positive")
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._keys: OrderedDict[Hashable, _Key] = OrderedDict()

    def allow(self, key: Hashable, event: str = "") -> int | None:
        now = self._clock()
        entry = self._keys.get(key)
        if entry is not None and now < entry.next_at:
            entry.held += 1
            metrics.log_lines_suppressed.labels(event or "other").inc()
            return None
        held = entry.held if entry is not None else 0
        self._keys[key] = _Key(now + self.window)
        self._keys.move_to_end(key)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return held

"""An exact in-memory copy of the SQLite store's opt-outs, for the check every accept makes.

A point read on the event loop's own connection cost about 28 µs of CPU per accept at 1,000
msg/s: the writer commits between two reads, so each read starts a read transaction on a changed
WAL, which drops the connection's page cache and reads the pages again. The copy answers in about
1 µs (its metric included) while it is current.

Current means: no group of the writer process that writes opt-outs (writes.OPTOUT_WRITES) has
begun since the copy was read. The writer process is the only one that writes the database
while the daemon runs, and it counts those groups in a shared 8-byte file (optout_count.py) next
to its socket, like a sequence lock: odd while such a group runs, even again after its commit
and before any answer leaves. A reader compares that number with the one its copy was read at:
equal, the copy is the table; otherwise it reads SQLite, as before, and reads the whole copy
again in a thread once enough reads have missed to pay for it. A copy is read between two
looks at the number that agree (and are even), so it holds exactly the table at that number.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Literal

from aggregator import metrics
from aggregator.log import get_logger
from aggregator.store.optout_count import Generation

log = get_logger("smsagg.store")

MAX_ROWS = 50_000  # a bigger table is not copied (memory): every check reads SQLite
MISSES_BEFORE_COPY = 16  # reads a stale copy sends to SQLite before it is read again
MISSES_PER_ROW = 1 / 64  # ... and as many more per row it holds: a copy costs ~1/64 of a read a row


Rows = list[tuple[str, str, str]]  # (account, number, scope)


class OptoutView:
    """The copy, with `load(limit)` reading up to `limit` rows of the table in one statement
    (one read transaction), off the event loop."""

    def __init__(self, generation: Generation, load: Callable[[int], Awaitable[Rows]]) -> None:
        self._generation = generation
        self._load = load
        self._scopes: dict[tuple[str, str], str] = {}
        self._at = -1  # the generation the copy holds; -1: none
        self._misses = 0  # reads sent to SQLite since the copy stopped being current
        self._wanted = MISSES_BEFORE_COPY  # misses that start a new copy
        self._copying: asyncio.Task[None] | None = None
        self._views = metrics.store_optout_view.labels("view")
        self._reads = metrics.store_optout_view.labels("read")

    @property
    def current(self) -> bool:
        return self._at == self._generation.value

    def scope(self, account: str, number: str) -> str | Literal[False] | None:
        """The opt-out's scope, None without one, or False: not current, read SQLite."""
        if self._at == self._generation.value:
            self._views.inc()
            return self._scopes.get((account, number))
        self._missed()
        return False

    def scopes(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str] | None:
        """Which of `keys` opted out (with the scope); None: read SQLite."""
        if self._at != self._generation.value:
            # Counted as a miss like scope()'s: a daemon whose ingress workers make every
            # accept checks only here, and would otherwise never read its copy.
            self._missed()
            return None
        self._views.inc()
        found = self._scopes
        return {key: found[key] for key in keys if key in found}

    def _missed(self) -> None:
        self._reads.inc()
        self._misses += 1
        if self._misses >= self._wanted and self._copying is None:
            self._copying = asyncio.get_running_loop().create_task(self._copy())

    async def _copy(self) -> None:
        try:
            before = self._generation.value
            if before & 1:  # a group that writes opt-outs is running: later
                return
            rows = await self._load(MAX_ROWS + 1)
            if self._generation.value != before:  # it changed while read: maybe not whole
                return
            if len(rows) > MAX_ROWS:  # too big to hold: read SQLite, try again much later
                self._scopes, self._at = {}, -1
                self._wanted = self._misses * 4
                log.info("store_optout_view_too_big", rows=f"more than {MAX_ROWS}")
                return
            self._scopes = {(a, n): scope for a, n, scope in rows}
            self._at = before
            self._wanted = MISSES_BEFORE_COPY + int(len(rows) * MISSES_PER_ROW)
            metrics.store_optout_view.labels("rebuild").inc()
            log.debug("store_optout_view_read", rows=len(rows), generation=before)
        except Exception as exc:  # reads go to SQLite meanwhile; the next miss tries again
            log.warning("store_optout_view_failed", error=str(exc))
        finally:
            self._misses = 0
            self._copying = None

    async def close(self) -> None:
        task, self._copying = self._copying, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self._generation.close()

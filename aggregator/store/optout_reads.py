"""The accept path's opt-out read, done by an ingress worker on its own SQLite connection.

Every accept reads the recipient's opt-out (policy/gate.py). In an ingress worker that read went
to the daemon over the RPC link: a round trip per message that woke the daemon's event loop and
the worker's twice more. WAL lets any number of processes read beside the writer, so a worker
opens the database itself and asks the daemon only when its read cannot run at once (busy: a WAL
recovery) or the database cannot be opened. The rows it reads are the daemon's: every opt-out is
written by the store's writer process, whichever process was asked.

Scenario f with one worker (1,000 msg/s): see docs/performance.md.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote

from aggregator import metrics
from aggregator.log import get_logger

log = get_logger("smsagg.optouts")

_SCOPE = "SELECT scope FROM optouts WHERE account = ? AND number = ?"


class OptoutsBusy(Exception):
    """The read cannot run now; ask the daemon instead."""


class LocalOptouts:
    """Primary-key reads of opt-outs on this process's own read connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._read = metrics.optout_local_reads.labels("read")
        self._busy = metrics.optout_local_reads.labels("busy")

    @classmethod
    def open(cls, path: str) -> LocalOptouts | None:
        """A reader of the database at `path`; None (logged) when it cannot be opened as it is:
        it is never created here."""
        uri = f"file:{quote(str(Path(path).resolve()))}?mode=rw"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None,
                                   check_same_thread=False, timeout=0.0)
            conn.execute(_SCOPE, ("", "")).fetchall()  # the table is there
        except sqlite3.Error as exc:
            log.warning("optout_local_reads_off", path=path, error=str(exc),
                        why="opt-outs are read through the daemon")
            return None
        log.info("optout_local_reads_on", path=path)
        return cls(conn)

    def scope(self, account: str, number: str) -> str | None:
        """The number's opt-out scope, None without one; OptoutsBusy when the read cannot run
        at once."""
        try:
            rows = self._conn.execute(_SCOPE, (account, number)).fetchall()  # all: ends the read
        except sqlite3.Error as exc:
            self._busy.inc()
            raise OptoutsBusy(str(exc)) from None
        self._read.inc()
        return str(rows[0][0]) if rows else None

    def close(self) -> None:
        self._conn.close()

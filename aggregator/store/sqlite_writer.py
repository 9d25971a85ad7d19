"""The SQLite store's client of its writer process (writer_process.py): starts it (the daemon)
or joins one already running (an ingress worker), sends it writes as wire.py calls and resolves
each one's future once its group has committed; keeps the figures readiness reads."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from aggregator import metrics
from aggregator.frames import frame
from aggregator.link import Calls, Link
from aggregator.log import get_logger
from aggregator.store.base import WRITE_FAILURE_WINDOW, StoreBusy, StoreError
from aggregator.store.optout_count import Generation, generation_path
from aggregator.store.writer_process import GATHER_S
from aggregator.store.writes import OPS, TOOLS, WriteFigures
from aggregator.wire import Answers, Done, OpenFailed, Ready, Signature, Stop, Wire, signature

log = get_logger("smsagg.store")

PROCESS_START_TIMEOUT = 30.0  # seconds for the writer process to open the database
PROCESS_STOP_TIMEOUT = 30.0  # seconds for it to answer what is queued and exit


# The writer operations that carry a loop turn's calls of one Store operation are timed under
# that operation's name, as PostgreSQL's are (one `op` label per operation on both backends).
STORE_OPERATION = {"accept_each": "accept", "record_submitted_many": "record_submitted",
                   "claim_due_next": "claim_due"}


class WriterClient:
    """One link to the writer process. `on_commit` gets each group commit's seconds (a
    metric); `on_lost` hears why, if the process ends while the store is open (nothing can be
    written any more); `on_pending` hears how the ingress workers' writes changed the pending
    counts, per account, and the earliest due time of the waiting messages they stored."""

    def __init__(self, path: str, *, busy_timeout: float, commit_batch: int,
                 max_writes_queued: int, commit_gather: float = GATHER_S,
                 on_commit: Callable[[float], None] | None = None,
                 on_lost: Callable[[str], None] | None = None,
                 on_pending: Callable[[dict[str, int], float | None], None] | None = None
                 ) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.commit_batch = commit_batch
        self.commit_gather = commit_gather  # seconds; writer_process.GATHER_S says why
        self.max_writes_queued = max_writes_queued
        self._on_commit = on_commit
        self._on_lost = on_lost
        self._on_pending = on_pending
        self.figures = WriteFigures()  # as the writer process's last answer gave them
        self.proc: subprocess.Popen[bytes] | None = None  # None when joined
        self._link: Link | None = None
        self._calls = Calls()  # by id; the link sends a turn's calls in one write
        # Per operation name: how its calls travel, and its time's histogram.
        self._ops: dict[str, tuple[Signature, Any]] = {}
        self._started: asyncio.Future[None] | None = None
        self._round: asyncio.Future[None] | None = None  # resolved by the next answers
        self._lost: str | None = None  # why the writer process is gone
        self._closed = True
        self._queued = 0  # writes sent and not yet answered
        self.address: str | None = None  # where ingress workers reach the writer process
        self._dir: str | None = None

    @property
    def writes_queued(self) -> int:
        """Writes sent to the writer and not yet answered (bounded by max_writes_queued)."""
        return self._queued

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer process on the (migrated) database and wait until it is ready."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        self._dir = tempfile.mkdtemp(prefix="smsagg-writer-")  # mode 0700: ours only
        address = os.path.join(self._dir, "writer.sock")
        Generation(generation_path(address), create=True).close()  # for the process to map
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "aggregator.store.writer_process", str(theirs.fileno()),
                 self.path, repr(self.busy_timeout), str(self.commit_batch),
                 repr(self.commit_gather), address],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        self._started = loop.create_future()
        self._closed = False
        _, self._link = await loop.connect_accepted_socket(lambda: Link(self), ours)
        try:
            await asyncio.wait_for(asyncio.shield(self._started), PROCESS_START_TIMEOUT)
        except BaseException:
            await self.close()
            raise
        self.address = address

    async def join(self, address: str) -> None:
        """Connect to a running writer process (an ingress worker's store): it answers with
        Answers; the daemon that started it migrated the database."""
        loop = asyncio.get_running_loop()
        try:
            _, self._link = await loop.create_unix_connection(lambda: Link(self), address)
        except OSError as exc:
            raise StoreError(f"cannot reach the store writer at {address}: {exc}") from exc
        self._closed = False

    async def close(self) -> None:
        """Started: stop the process after it answered every write sent before. Joined: leave
        the daemon's writer running."""
        self._closed = True
        proc, link = self.proc, self._link
        if link is not None and proc is not None:
            link.send(frame(Stop()))  # after every call already sent: they are answered first
        if proc is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(proc.wait), PROCESS_STOP_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        if link is not None:
            link.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    # ---- from the writer -------------------------------------------------------------------

    def frame_received(self, link: Link, obj: Wire) -> None:
        """Ready, OpenFailed, or one round's Done (Answers, when joined)."""
        if isinstance(obj, Answers):
            self._answered(obj)
            return
        if isinstance(obj, Ready | OpenFailed):
            if self._started is not None and not self._started.done():
                if isinstance(obj, Ready):
                    self._started.set_result(None)
                else:
                    self._started.set_exception(StoreError(obj.error))
            return
        if not isinstance(obj, Done):
            raise StoreError(f"unexpected message from the writer: {type(obj).__name__}")
        self.figures = obj.figures
        if (obj.pending or obj.due is not None) and self._on_pending is not None:
            self._on_pending(obj.pending, obj.due)
        if self._on_commit is not None:
            for seconds in obj.durations:
                with contextlib.suppress(Exception):
                    self._on_commit(seconds)
        self._answered(obj)

    def _answered(self, obj: Answers | Done) -> None:
        """Resolve the answered calls, and observe each write's time, queued to committed
        (beside PostgreSQL's, by backend), here rather than in a done-callback per future:
        one clock read per frame and no loop callback per write."""
        now = time.monotonic()
        for answer in obj.answers:
            outcome = self._calls.answer(answer)
            if outcome is None:
                continue
            (timer, started, weight), ok = outcome
            self._queued -= weight
            if ok:
                timer.observe(now - started)
        self._next_round()

    def _next_round(self) -> None:
        waiting, self._round = self._round, None
        if waiting is not None and not waiting.done():
            waiting.set_result(None)

    def round_done(self, longest: float) -> asyncio.Future[None]:
        """Resolves when the writer next answers (its round of groups in progress is done;
        the ingress workers' groups count, the writer tells the daemon of each), or after
        `longest` seconds when nothing comes (a quiet writer)."""
        loop = asyncio.get_running_loop()
        if self._lost is not None:
            done: asyncio.Future[None] = loop.create_future()
            done.set_result(None)
            return done
        if self._round is None:
            self._round = loop.create_future()
            loop.call_later(longest, self._next_round)
        return self._round

    def link_lost(self, link: Link) -> None:
        code = self.proc.poll() if self.proc is not None else None
        self._lost = f"the store writer process exited (code {code})"
        if not self._closed:
            log.error("store_writer_lost", exit_code=code)
            if self._on_lost is not None:
                self._on_lost(self._lost)
        self.figures.failed(self._lost)
        if self._started is not None and not self._started.done():
            self._started.set_exception(StoreError(self._lost))
        self._queued = 0  # every call fails below
        self._next_round()
        lost = self._lost
        self._calls.fail_all(lambda: StoreError(lost))

    # ---- writes ----------------------------------------------------------------------------

    def write_failure(self) -> str | None:
        """The last write error while writes are failing (the last group failed, within
        WRITE_FAILURE_WINDOW seconds); None when the store takes writes. For readiness."""
        if self._lost is not None:
            return self._lost
        f = self.figures
        error, at = f.last_write_error, f.last_write_error_at
        if error is None or at <= f.last_write_ok_at:
            return None
        return error if time.monotonic() - at < WRITE_FAILURE_WINDOW else None

    def submit(self, name: str, *args: Any, weight: int = 1) -> asyncio.Future[Any]:
        """Send the write `name` (an operation of writes.OPS, or a tool of writes.TOOLS) with
        its arguments; the future resolves after its group committed. `weight`: the writes it
        counts as in writes_queued (the calls a gathered operation carries)."""
        if self._closed or self._link is None:
            raise StoreError("store is closed")
        if self._lost is not None:
            raise StoreError(self._lost)
        if self._queued >= self.max_writes_queued:
            raise StoreBusy("too many writes queued for the store")
        known = self._ops.get(name)
        if known is None:
            fn = OPS.get(name) or TOOLS.get(name)
            if fn is None:
                raise StoreError(f"no store operation {name!r}")
            known = self._ops[name] = (
                signature(fn),
                metrics.store_operation_seconds.labels("sqlite", STORE_OPERATION.get(name, name)))
        sig, timer = known
        future = self._calls.send(self._link, name, args, sig,
                                  (timer, time.monotonic(), weight))
        self._queued += weight
        return future

"""An ingress worker's link to its daemon: status and metrics, never the store.

A worker stores on its own (store/factory.open_worker_store: the SQLite writer process's socket
and a WAL reader, or a PostgreSQL pool), so a 202 from a worker means what it means from the
daemon and the daemon's event loop is not on the way. What it still asks the daemon, over a
Unix socket in a directory only the daemon's user can open, are wire.DAEMON_CALLS: its status
report (its metrics in, the daemon's pending counts out, every STATUS_EVERY), the merged
metrics, readiness, and that it is serving."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from typing import Any

from aggregator.frames import frame
from aggregator.link import Calls, Link
from aggregator.log import get_logger
from aggregator.store.base import StoreError
from aggregator.wire import DAEMON_CALLS, Answers, Call, Signature, Wire, answer, failed

log = get_logger("smsagg.rpc")

STATUS_EVERY = 0.5  # seconds between a worker's status calls (its metrics, the pending count)
# Status calls per metrics report: the text every 2 s, the counts every 0.5. A report is the
# whole registry's exposition (about 1 ms of CPU), 2 % of a worker's samples at 1,000 msg/s
# when every call carried one. A scrape through a worker reports first (`report`).
REPORT_EVERY = 4


class WorkerServer:
    """In the daemon: answers the workers' DAEMON_CALLS and keeps their metrics reports."""

    def __init__(self, pending: Callable[[], tuple[int, dict[str, int]]],
                 ready: Callable[[], tuple[bool, list[str]]],
                 exposition: Callable[[], str]) -> None:
        self._pending = pending
        self._ready = ready
        self._exposition = exposition  # every process's metrics, summed
        self._server: asyncio.AbstractServer | None = None
        self._reports: dict[Link, str] = {}  # each connected worker's metrics text
        self._serving: set[Link] = set()  # workers listening on the port

    @property
    def workers(self) -> int:
        """Workers connected and listening on the HTTP port."""
        return len(self._serving)

    def worker_metrics(self) -> list[str]:
        return [text for text in self._reports.values() if text]

    async def start(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(self._connected, path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._reports):
            link.close()

    def _connected(self) -> Link:
        link = Link(self)
        self._reports[link] = ""
        return link

    def link_lost(self, link: Link) -> None:
        self._reports.pop(link, None)
        self._serving.discard(link)

    def frame_received(self, link: Link, obj: Wire) -> None:
        if not isinstance(obj, Call):
            raise StoreError(f"unexpected message from a worker: {type(obj).__name__}")
        try:
            sig = DAEMON_CALLS.get(obj.op)
            if sig is None:
                raise StoreError(f"{obj.op!r} is not served to workers (they store directly)")
            args = sig.args.decode(obj.args)
            result: Any = None
            if obj.op == "status":  # the worker's metrics in, the pending counts out
                # Not after it disconnected (no stale figures); "": no new report this time.
                if link in self._reports and args[0]:
                    self._reports[link] = args[0]
                result = self._pending()
            elif obj.op == "metrics":
                result = self._exposition()
            elif obj.op == "ready":
                result = self._ready()
            elif obj.op == "serving":  # the worker's HTTP site is up
                self._serving.add(link)
            reply = answer(obj.id, result)
        except Exception as exc:
            reply = failed(obj.id, exc)
        link.send(frame(Answers([reply])))


class DaemonClient:
    """In a worker: its calls to the daemon. `on_status` hears the daemon's pending counts;
    a lost connection fails every call with StoreError (503) and sets `lost`."""

    def __init__(self, on_status: Callable[[int, dict[str, int]], None]) -> None:
        self._link = Link(self)
        self._calls = Calls()
        self._on_status = on_status
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._status_task: asyncio.Task[None] | None = None
        self._report: Callable[[], str] = lambda: ""

    @classmethod
    async def connect(cls, path: str, report: Callable[[], str],
                      on_status: Callable[[int, dict[str, int]], None]) -> DaemonClient:
        client = cls(on_status)
        client._report = report
        await asyncio.get_running_loop().create_unix_connection(lambda: client._link, path)
        client._status_task = asyncio.create_task(client._status(report))
        return client

    async def close(self) -> None:
        if self._status_task is not None:
            self._status_task.cancel()
            await asyncio.gather(self._status_task, return_exceptions=True)
        self._link.close()

    async def call(self, name: str, *args: Any) -> Any:
        if self.lost.done():
            raise StoreError("the daemon is gone")
        sig = DAEMON_CALLS.get(name)
        if sig is None:
            raise StoreError(f"{name!r} is not a call the daemon serves")
        return await self.call_unchecked(name, sig, *args)

    async def call_unchecked(self, name: str, sig: Signature, *args: Any) -> Any:
        """`name` sent with `args` encoded by `sig`, whether the daemon serves it or not: what
        a worker of another version would send (tests of the daemon's refusal)."""
        return await self._calls.send(self._link, name, args, sig)

    def frame_received(self, link: Link, obj: Wire) -> None:
        if not isinstance(obj, Answers):
            raise StoreError(f"unexpected message from the daemon: {type(obj).__name__}")
        for reply in obj.answers:
            self._calls.answer(reply)

    def link_lost(self, link: Link) -> None:
        self._calls.fail_all(lambda: StoreError("lost the connection to the daemon"))
        if not self.lost.done():
            self.lost.set_result(None)

    async def report(self) -> None:
        """A status call with this worker's metrics now (before a scrape it serves)."""
        pending, by_account = await self.call("status", self._report())
        self._on_status(pending, by_account)

    async def _status(self, report: Callable[[], str]) -> None:
        for calls in itertools.count():
            if self.lost.done():
                return
            with contextlib.suppress(StoreError):
                text = report() if calls % REPORT_EVERY == 0 else ""
                pending, by_account = await self.call("status", text)
                self._on_status(pending, by_account)
            await asyncio.sleep(STATUS_EVERY)

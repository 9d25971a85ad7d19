"""The store, reached from ingress worker processes over a UNIX socket.

Only the daemon's process writes the SQLite file: a second writing process gets "database is
locked" under load. Ingress workers parse and validate HTTP requests on the other cores and
call the store methods below through the daemon, whose answer comes after its commit, so a 202
from a worker means what it means in-process. Frames are a 4-byte length and a pickle, on a
socket in a directory only the daemon's user can open (pickle trusts its peer)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aggregator.frames import frame
from aggregator.link import Calls, Link
from aggregator.log import get_logger
from aggregator.model import Message
from aggregator.store.base import AcceptResult, Store, StoreError
from aggregator.store.sqlite import accept_result, marketing_rows, message_row
from aggregator.store.writes import WAITING

log = get_logger("smsagg.rpc")

# Store methods a worker may call; anything else is refused.
STORE_METHODS = frozenset({
    "accept", "accept_many", "is_opted_out", "marketing_history", "get_message",
    "list_optouts", "add_optout", "remove_optout", "list_messages", "cancel",
})
# Consent records and opt-out removals (issue 19 item 6).
STORE_METHODS = STORE_METHODS | frozenset({
    "add_consent", "has_consent", "list_consents", "remove_optout_logged",
    "list_optout_removals",
})
# Per-type opt-outs: the accept path reads an opt-out's scope.
STORE_METHODS = STORE_METHODS | frozenset({"optout_scope"})
STATUS_EVERY = 0.5  # seconds between a worker's status calls (its metrics, the pending count)
class StoreServer:
    """In the daemon: answers the workers' store calls and collects their status reports."""

    def __init__(self, store: Store, on_accepted: Callable[[], None],
                 ready: Callable[[], tuple[bool, list[str]]],
                 exposition: Callable[[], str]) -> None:
        self._store = store
        self._on_accepted = on_accepted
        self._ready = ready
        self._exposition = exposition  # every process's metrics, summed
        self._server: asyncio.AbstractServer | None = None
        self._reports: dict[Link, str] = {}  # each connected worker's metrics text
        self._serving: set[Link] = set()  # workers listening on the port
        self._tasks: set[asyncio.Task[None]] = set()

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
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _connected(self) -> Link:
        link = Link(self)
        self._reports[link] = ""
        return link

    def link_lost(self, link: Link) -> None:
        self._reports.pop(link, None)
        self._serving.discard(link)

    def frame_received(self, link: Link, obj: Any) -> None:
        rid, name, args, kwargs = obj
        if name in STORE_METHODS:  # the store answers after its commit: in a task
            task = asyncio.create_task(self._call(link, rid, name, args, kwargs))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        try:
            if name == "status":  # the worker's metrics in, the pending counts out
                if link in self._reports:  # not after it disconnected: no stale figures
                    self._reports[link] = str(args[0])
                result: Any = (self._store.pending, dict(self._store.pending_by_account))
            elif name == "metrics":
                result = self._exposition()
            elif name == "ready":
                result = self._ready()
            elif name == "serving":  # the worker's HTTP site is up
                self._serving.add(link)
                result = None
            elif name == "writer_address":  # where to send accepts, if a writer process runs
                result = self._store.writer_address
            else:
                raise StoreError(f"store method {name!r} is not served to workers")
        except Exception as exc:
            self._answer(link, rid, False, exc)
        else:
            self._answer(link, rid, True, result)

    async def _call(self, link: Link, rid: int, name: str, args: Sequence[Any],
                    kwargs: dict[str, Any]) -> None:
        try:
            result = await getattr(self._store, name)(*args, **kwargs)
        except Exception as exc:
            self._answer(link, rid, False, exc)
            return
        if name in ("accept", "accept_many"):
            self._on_accepted()
        self._answer(link, rid, True, result)

    @staticmethod
    def _answer(link: Link, rid: int, ok: bool, result: Any) -> None:
        try:
            data = frame((rid, ok, result))
        except Exception as exc:  # an answer that does not pickle still gets an answer
            data = frame((rid, False, StoreError(f"{type(exc).__name__}: {exc}")))
        link.send(data)


class RemoteStore:
    """In a worker: the store methods the HTTP API and the accept path use, done by the
    daemon. A lost connection fails every call with StoreError (503) and sets `lost`."""

    def __init__(self) -> None:
        self._link = Link(self)
        self._calls = Calls()
        self.pending = 0
        # From the daemon every STATUS_EVERY, plus this worker's own accepts in between.
        self.pending_by_account: dict[str, int] = {}
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._status_task: asyncio.Task[None] | None = None
        self._writer: _WriterLink | None = None

    @classmethod
    async def connect(cls, path: str, report: Callable[[], str]) -> RemoteStore:
        store = cls()
        loop = asyncio.get_running_loop()
        await loop.create_unix_connection(lambda: store._link, path)
        address = await store.call("writer_address")
        if address is not None:
            # Accepts go straight to the store's writer process: the daemon's busy event loop
            # is not on their way. It tells the daemon how many messages they added.
            writer = _WriterLink(store)
            await loop.create_unix_connection(lambda: writer.link, address)
            store._writer = writer
        store._status_task = asyncio.create_task(store._status(report))
        return store

    async def close(self) -> None:
        if self._status_task is not None:
            self._status_task.cancel()
            await asyncio.gather(self._status_task, return_exceptions=True)
        if self._writer is not None:
            self._writer.link.close()
        self._link.close()

    async def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.lost.done():
            raise StoreError("the daemon is gone")
        return await self._calls.send(self._link, lambda rid: (rid, name, args, kwargs))

    def frame_received(self, link: Link, obj: Any) -> None:
        self._calls.answer(*obj)

    def link_lost(self, link: Link) -> None:
        self._calls.fail_all(lambda: StoreError("lost the connection to the daemon"))
        if not self.lost.done():
            self.lost.set_result(None)

    async def _status(self, report: Callable[[], str]) -> None:
        while not self.lost.done():
            with contextlib.suppress(StoreError):
                self.pending, self.pending_by_account = await self.call("status", report())
            await asyncio.sleep(STATUS_EVERY)

    # ---- the Store methods the HTTP API, the accept path and the policy gate use ----------

    async def accept(self, message: Message, idempotency_key: str | None) -> AcceptResult:
        if self._writer is not None:
            result = accept_result(
                message, await self._writer.call("accept", message_row(message), idempotency_key))
        else:
            result = await self.call("accept", message, idempotency_key)
        if result.created and result.message.status in WAITING:
            self._count(message.account, 1)
        return result

    async def accept_many(self, messages: Sequence[Message]) -> None:
        if self._writer is not None:
            await self._writer.call("accept_many", [message_row(m) for m in messages],
                                    marketing_rows(messages))
        else:
            await self.call("accept_many", list(messages))
        for m in messages:
            if m.status in WAITING:
                self._count(m.account, 1)

    def _count(self, account: str, n: int) -> None:
        """Counted here until the next status answer brings the daemon's count."""
        self.pending_by_account[account] = self.pending_by_account.get(account, 0) + n

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        if name not in STORE_METHODS:
            raise AttributeError(name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self.call(name, *args, **kwargs)

        return call


class _WriterLink:
    """A worker's connection to the store's writer process: accepts, answered after commit.
    Losing it is losing the daemon (the writer ends with it): the worker stops."""

    def __init__(self, store: RemoteStore) -> None:
        self._store = store
        self.link = Link(self)
        self._calls = Calls()

    async def call(self, name: str, *args: Any) -> Any:
        if self._store.lost.done():
            raise StoreError("the daemon is gone")
        return await self._calls.send(self.link, lambda rid: (rid, name, args))

    def frame_received(self, link: Link, obj: Any) -> None:
        for answer in obj[1]:  # ("answers", [(id, ok, result), ...])
            self._calls.answer(*answer)

    def link_lost(self, link: Link) -> None:
        self._calls.fail_all(lambda: StoreError("lost the connection to the store writer"))
        self._store.link_lost(link)

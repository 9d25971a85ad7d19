"""Calls made in one event-loop turn, sent to the store's writer as one operation.

The dispatcher records each submitted message with its own call; at 1,000 msg/s a loop turn
makes one to a few of them. Sent as one `record_submitted_many`, they share one frame, one
call id, one answer and one future on the writer link, and one decode and one operation in the
writer process. Each caller still awaits the group's commit: nothing is acknowledged before it.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from aggregator import metrics
from aggregator.log import get_logger
from aggregator.store.base import StoreError
from aggregator.wire import OperationFailed

log = get_logger("smsagg.store")

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    """`coalescer(item)` gives a future of that item's result. The items asked for in one loop
    turn go to `send` together, at the end of the turn, as one list; `send` returns a future of
    their results in the same order. An error fails every caller of that group, unless there
    is a `single` way and the operation failed on its own data (wire.OperationFailed, not a
    fault of the store such as a locked or full database): then each item is sent again
    alone, so that one bad item fails only its own caller."""

    def __init__(self, op: str, send: Callable[[list[Item]], asyncio.Future[list[Result]]],
                 single: Callable[[Item], asyncio.Future[Result]] | None = None) -> None:
        self.op = op  # the writer operation's name (the metric's label)
        self._send = send
        self._single = single
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] | None = None
        # Looked up once: on Python 3.11 get_running_loop() is a getpid() system call, and this
        # runs for every accepted message (about 1 of the worker's 1.2 getpid calls a request).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._calls = metrics.store_coalesced_calls.labels(op)
        self._ops = metrics.store_coalesced_ops.labels(op)

    @property
    def waiting(self) -> int:
        """Calls asked for in this loop turn, not yet sent."""
        return 0 if self._waiting is None else len(self._waiting)

    def flush(self) -> None:
        """Send what this loop turn gathered now (before the store closes)."""
        if self._waiting:
            self._flush()

    def __call__(self, item: Item) -> asyncio.Future[Result]:
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        if self._waiting is None:
            self._waiting = []
            loop.call_soon(self._flush)
        future: asyncio.Future[Result] = loop.create_future()
        self._waiting.append((item, future))
        return future

    def _flush(self) -> None:
        waiting, self._waiting = self._waiting or [], None
        if not waiting:  # flush() sent them already
            return
        self._calls.inc(len(waiting))
        self._ops.inc()
        try:
            whole = self._send([item for item, _ in waiting])
        except Exception as exc:  # not sent (closed, too many writes queued): all fail
            _fail(waiting, exc)
            return
        whole.add_done_callback(lambda done: self._fan_out(waiting, done))

    def _fan_out(self, waiting: list[tuple[Item, asyncio.Future[Result]]],
                 whole: asyncio.Future[list[Result]]) -> None:
        exc = None if whole.cancelled() else whole.exception()
        if exc is not None and self._single is not None and len(waiting) > 1 \
                and isinstance(exc, OperationFailed):
            log.debug("store_coalesced_alone", op=self.op, calls=len(waiting), error=str(exc))
            for item, future in waiting:
                if not future.done():
                    _chain(self._single, item, future)
            return
        _fan_out(self.op, waiting, whole)


def _chain(single: Callable[[Any], asyncio.Future[Any]], item: Any,
           future: asyncio.Future[Any]) -> None:
    """`item` sent alone, its outcome to `future`."""
    try:
        alone = single(item)
    except Exception as exc:
        future.set_exception(exc)
        return

    def done(alone: asyncio.Future[Any]) -> None:
        if future.done():
            return
        if alone.cancelled():
            future.cancel()
        elif (error := alone.exception()) is not None:
            future.set_exception(error)
        else:
            future.set_result(alone.result())

    alone.add_done_callback(done)


def _fan_out(op: str, waiting: list[tuple[Any, asyncio.Future[Any]]],
             whole: asyncio.Future[list[Any]]) -> None:
    if whole.cancelled():
        for _, future in waiting:
            future.cancel()
        return
    exc = whole.exception()
    if exc is not None:
        log.debug("store_coalesced_failed", op=op, calls=len(waiting), error=str(exc))
        _fail(waiting, exc)
        return
    results = whole.result()
    if len(results) != len(waiting):  # a broken peer: never hand a caller another's result
        _fail(waiting, StoreError(f"{op}: {len(results)} results for {len(waiting)} calls"))
        return
    for (_, future), result in zip(waiting, results, strict=True):
        if not future.done():  # a caller cancelled meanwhile (the drain deadline)
            future.set_result(result)


def _fail(waiting: list[tuple[Any, asyncio.Future[Any]]], exc: BaseException) -> None:
    """Each caller raises its own copy: one exception raised in many tasks would collect all
    their tracebacks."""
    for _, future in waiting:
        if not future.done():
            future.set_exception(copy.copy(exc))

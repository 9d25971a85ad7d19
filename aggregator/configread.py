"""Read the configuration file for a reload (SIGHUP) on a thread of its own, with a deadline.

Not on the event loop's default executor: the store's reads use that pool, and a path that
blocks (a FIFO with no writer, a hung network mount) would hold one of its threads for ever,
starve the store after a few SIGHUPs, and hold the exit (the pool is joined at shutdown). The
thread here is a daemon thread: a read that never returns costs that one thread and does not
delay exit. While one is still blocked, further reads are refused instead of piling up."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

from aggregator.config import Config, load_config_or_default

CONFIG_READ_TIMEOUT = 5.0  # seconds
T = TypeVar("T")


class ConfigReadTimeout(Exception):
    """The file was not read within the deadline (or an earlier read is still blocked)."""


_busy = threading.Lock()  # held by the one reading thread, for as long as it runs


async def read_off_pool(read: Callable[[], T], timeout: float) -> T:
    """``read()`` on a new daemon thread; ConfigReadTimeout after ``timeout`` seconds or when
    a previous read has not returned yet. Exceptions of ``read`` are raised here."""
    if not _busy.acquire(blocking=False):
        raise ConfigReadTimeout("a previous read of the file has not returned yet")
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.done():  # timed out meanwhile
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = read(), None
        except BaseException as exc:  # handed to the awaiting task
            result, error = None, exc
        finally:
            _busy.release()
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="config-read", daemon=True).start()
    try:
        return await asyncio.wait_for(asyncio.shield(done), timeout)
    except TimeoutError:
        raise ConfigReadTimeout(f"the file was not read within {timeout:g} s") from None


async def load_config_off_pool(path: str | None,
                               timeout: float = CONFIG_READ_TIMEOUT) -> Config:
    """load_config_or_default(path) with a deadline, off the default executor."""
    return await read_off_pool(lambda: load_config_or_default(path), timeout)

"""A queue fair between keys (accounts): first in, first out within a key, round robin between
keys. A provider's segments wait in one while its window is full, so that one account's
backlog in front of a slow provider does not hold another account's message behind it."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """The deque operations ProviderPool uses (append, [0], popleft, len, iteration), in
    round-robin order: after an item is taken, its key goes to the back of the rotation."""

    __slots__ = ("_key", "_len", "_queues")

    def __init__(self, key: Callable[[T], str], items: Iterable[T] = ()) -> None:
        self._key = key
        # Keys with items waiting, in rotation order: the first one is served next.
        self._queues: dict[str, deque[T]] = {}
        self._len = 0
        for item in items:
            self.append(item)

    def append(self, item: T) -> None:
        key = self._key(item)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(item)
        self._len += 1

    def __getitem__(self, index: int) -> T:
        """Only [0]: the item popleft() takes next."""
        if index != 0 or not self._len:
            raise IndexError(index)
        return next(iter(self._queues.values()))[0]

    def popleft(self) -> T:
        if not self._len:
            raise IndexError("pop from an empty FairQueue")
        key, queue = next(iter(self._queues.items()))
        item = queue.popleft()
        self._len -= 1
        del self._queues[key]
        if queue:  # to the back of the rotation
            self._queues[key] = queue
        return item

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[T]:
        """Every item, key by key (not in the order they will be taken)."""
        for queue in self._queues.values():
            yield from queue

    @property
    def keys(self) -> int:
        """Keys with items waiting."""
        return len(self._queues)


class FairGate:
    """Lets waiters through one per token of `try_take` (a token bucket's: 0.0 when a token
    was taken, else the seconds until there is one), round robin between keys: a route's rate
    limit shared fairly between the accounts waiting for it, not first come first served."""

    __slots__ = ("_timer", "_try_take", "_waiting")

    def __init__(self, try_take: Callable[[], float]) -> None:
        self._try_take = try_take
        self._waiting: FairQueue[tuple[str, asyncio.Future[None]]] = FairQueue(_key_of)
        self._timer: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def enter(self, key: str) -> asyncio.Future[None] | None:
        """None: a token was there, go on; else a future to await, done at this key's turn
        (cancelling it gives up the place)."""
        if not self._waiting and self._try_take() <= 0:
            return None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, future))
        if self._timer is None:  # else the timer's turn serves it
            self._pump()
        return future

    def _pump(self) -> None:
        self._timer = None
        waiting = self._waiting
        while waiting:
            future = waiting[0][1]
            if future.done():
                waiting.popleft()
                continue
            wait = self._try_take()
            if wait > 0:
                self._timer = asyncio.get_running_loop().call_later(wait, self._pump)
                return
            waiting.popleft()
            future.set_result(None)


def _key_of(item: tuple[str, asyncio.Future[None]]) -> str:
    return item[0]

"""The asyncio end of a socket carrying frames (frames.py) of wire.py messages: the store's
writer process as the daemon and the ingress workers see it, and a worker's link to the
daemon (ingress/rpc.py)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any, Protocol, cast

from aggregator.frames import LEN, frame, split
from aggregator.log import get_logger
from aggregator.wire import Answer, Signature, Wire, call, fault_error

log = get_logger("smsagg.link")


class LinkOwner(Protocol):
    """What a link reports to: the StoreServer (one link per worker) or a RemoteStore."""

    def frame_received(self, link: Link, obj: Wire) -> None: ...

    def link_lost(self, link: Link) -> None: ...


class Link(asyncio.Protocol):
    """One end of the socket: every whole frame in a read is handled in that turn, and the
    frames sent in one loop turn leave in one write. A stream reader cost two `readexactly`
    calls per frame, and a write per answer was a syscall per accepted message."""

    def __init__(self, owner: LinkOwner) -> None:
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._partial = bytearray()  # the start of a frame not yet whole
        self._need = 0  # bytes _partial must hold before a frame in it is whole
        self._out: list[bytes] = []

    @property
    def buffered(self) -> int:
        """Bytes held of a frame not yet whole (0 between frames)."""
        return len(self._partial)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._out.clear()
        self._owner.link_lost(self)

    def data_received(self, data: bytes) -> None:
        if self._partial:
            self._partial += data
            if len(self._partial) < self._need:  # a big frame arriving in pieces: no parse
                return
            data = bytes(self._partial)
            self._partial.clear()
        frames, pos, error = split(data)
        try:
            for obj in frames:
                self._owner.frame_received(self, obj)
            if error is not None:
                raise error
        except Exception as exc:  # a malformed frame: the peer is broken; drop it
            log.error("bad_frame", error=repr(exc))
            self.close()
            return
        if pos < len(data):
            self._partial += data[pos:]
            self._need = LEN.size
            if len(self._partial) >= LEN.size:
                self._need += LEN.unpack_from(self._partial)[0]

    def send(self, frame: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(frame)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(out)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Calls:
    """Calls sent over a link and waiting for their answers, by call id."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[asyncio.Future[Any], Signature, Any]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def send(self, link: Link, op: str, args: tuple[Any, ...],
             sig: Signature, tag: Any = None) -> asyncio.Future[Any]:
        """Send the call `op(*args)` over `link`; the future gets its result, decoded as `sig`
        says. The frame is made first, so arguments that do not encode raise here and leave
        nothing waiting. `tag`: the caller's, given back by answer()."""
        rid = next(self._ids)
        data = frame(call(rid, op, sig.complete(args)))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = (future, sig, tag)
        link.send(data)
        return future

    def answer(self, answer: Answer) -> tuple[Any, bool] | None:
        """Resolve the call `answer` is for: its tag and whether it succeeded; None for a call
        not waited for."""
        waiting = self._waiting.pop(answer.id, None)
        if waiting is None:
            return None
        future, sig, tag = waiting
        if future.done():  # cancelled by its caller
            return tag, False
        if answer.fault is not None:
            future.set_exception(fault_error(answer.fault))
            return tag, False
        try:
            future.set_result(sig.result.decode(answer.result))
        except Exception as exc:  # a result not of the declared type: the peer is broken
            future.set_exception(exc)
            return tag, False
        return tag, True

    def fail_all(self, error: Callable[[], Exception]) -> None:
        for future, _, _ in self._waiting.values():
            if not future.done():
                future.set_exception(error())
        self._waiting.clear()

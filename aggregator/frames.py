"""Length-prefixed frames over a stream socket: a 4-byte length, then one message of wire.py
(MessagePack).

`frame` makes one; `FrameReader` takes whole ones out of a blocking socket's bytes (the store's
writer process); `link.Link` is the asyncio end. A frame longer than MAX_FRAME, or one that is
not a wire message, is an error: the peer is broken and is dropped. The sockets are still only
ones our own process made, or one only the daemon's user can open. No asyncio here: the writer
process starts faster without it."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from aggregator.wire import DECODER, ENCODER, Wire

LEN = struct.Struct("!I")
MAX_FRAME = 64 * 1024 * 1024


def frame(msg: Wire) -> bytes:
    buf = bytearray(LEN.size)
    ENCODER.encode_into(msg, buf, LEN.size)
    size = len(buf) - LEN.size
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes")
    LEN.pack_into(buf, 0, size)
    return bytes(buf)


def split(data: bytes, decode: Callable[[memoryview], Any] = DECODER.decode
          ) -> tuple[list[Wire], int, Exception | None]:
    """The whole frames at the start of `data`, the bytes they took, and the error that
    stopped the parse, if one did (a frame too big, or not a wire message: the peer is
    broken). Immutable bytes: a message's Raw fields are views of them, not copies.
    `decode` is wire.py's; tests/bench_frames.py passes another to compare framings."""
    out: list[Wire] = []
    pos, size = 0, len(data)
    view = memoryview(data)
    try:
        while size - pos >= LEN.size:
            (length,) = LEN.unpack_from(view, pos)
            if length > MAX_FRAME:
                raise ValueError(f"frame of {length} bytes")
            end = pos + LEN.size + length
            if end > size:
                break
            out.append(decode(view[pos + LEN.size:end]))
            pos = end
    except Exception as exc:
        return out, pos, exc
    return out, pos, None


class FrameReader:
    """Whole frames out of the bytes a blocking socket gives, in order."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need = LEN.size  # bytes _buf must hold before a frame in it is whole

    def feed(self, data: bytes | bytearray | memoryview) -> list[Wire]:
        """The frames `data` completes (copied: the caller may reuse its buffer)."""
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:  # a big frame arriving in pieces: no parse
                return []
            whole = bytes(self._buf)
            self._buf.clear()
        else:  # the usual read: whole frames, copied once
            whole = bytes(data)
        out, pos, error = split(whole)
        if error is not None:
            raise error
        self._buf += memoryview(whole)[pos:]
        self._need = LEN.size
        if len(self._buf) >= LEN.size:
            self._need += LEN.unpack_from(self._buf)[0]
        return out

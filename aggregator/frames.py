"""Length-prefixed pickle frames over a stream socket: a 4-byte length, then a pickle.

`frame` makes one; `FrameReader` takes whole ones out of a blocking socket's bytes (the store's
writer process); `link.Link` is the asyncio end. Pickle trusts its peer: only sockets our own
process made, or one only the daemon's user can open, carry frames. No asyncio here: the writer
process starts faster without it."""

from __future__ import annotations

import pickle
import struct
from typing import Any

LEN = struct.Struct("!I")
MAX_FRAME = 64 * 1024 * 1024


def frame(obj: object) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return LEN.pack(len(data)) + data


def split(data: bytes | bytearray) -> tuple[list[Any], int, Exception | None]:
    """The whole frames at the start of `data`, the bytes they took, and the error that
    stopped the parse, if one did (a frame too big, or not a pickle: the peer is broken)."""
    out: list[Any] = []
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
            out.append(pickle.loads(view[pos + LEN.size:end]))
            pos = end
    except Exception as exc:
        return out, pos, exc
    finally:
        view.release()
    return out, pos, None


class FrameReader:
    """Whole frames out of the bytes a blocking socket gives, in order."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        out, pos, error = split(self._buf)
        if error is not None:
            raise error
        del self._buf[:pos]
        return out

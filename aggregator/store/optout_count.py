"""The count of the store writer's groups that write opt-outs, shared through an 8-byte file
beside its socket (optout_view.py reads it). Standard library only: the writer process
imports it, and starts and stays small without the daemon's modules."""

from __future__ import annotations

import contextlib
import mmap
import os
import struct

GENERATION_FILE = "optouts.gen"  # in the writer's directory, beside its socket
_COUNT = struct.Struct("=Q")


class Generation:
    """The shared count of opt-out writing groups (see the module docstring)."""

    def __init__(self, path: str, *, create: bool = False) -> None:
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, _COUNT.size)
            self._map = mmap.mmap(fd, _COUNT.size)
        finally:
            os.close(fd)

    @property
    def value(self) -> int:
        value: int = _COUNT.unpack_from(self._map)[0]
        return value

    def begin(self) -> None:
        """A group that writes opt-outs starts (odd: readers read SQLite)."""
        _COUNT.pack_into(self._map, 0, self.value | 1)

    def end(self) -> None:
        """It is committed (or rolled back), before any of its answers is sent."""
        _COUNT.pack_into(self._map, 0, (self.value | 1) + 1)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._map.close()


def generation_path(writer_address: str) -> str:
    return os.path.join(os.path.dirname(writer_address), GENERATION_FILE)

"""The count of the store writer's groups that write opt-outs, shared through an 8-byte file
beside its socket (optout_view.py reads it). Standard library only: the writer process
imports it, and starts and stays small without the daemon's modules."""

from __future__ import annotations

import contextlib
import mmap
import os

GENERATION_FILE = "optouts.gen"  # in the writer's directory, beside its socket
_SIZE = 8


class Generation:
    """The shared count of opt-out writing groups (see the module docstring)."""

    def __init__(self, path: str, *, create: bool = False) -> None:
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, _SIZE)
            self._map = mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)
        # One aligned 8-byte word: an index read, half the cost of struct.unpack_from.
        self._word = memoryview(self._map).cast("Q")

    @property
    def value(self) -> int:
        return int(self._word[0])

    def begin(self) -> None:
        """A group that writes opt-outs starts (odd: readers read SQLite)."""
        self._word[0] = self._word[0] | 1

    def end(self) -> None:
        """It is committed (or rolled back), before any of its answers is sent."""
        self._word[0] = (self._word[0] | 1) + 1

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._word.release()
            self._map.close()


def generation_path(writer_address: str) -> str:
    return os.path.join(os.path.dirname(writer_address), GENERATION_FILE)

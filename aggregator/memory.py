"""Give freed heap memory back to the operating system. glibc keeps freed blocks below its mmap
threshold (128 KiB; parts held for reassembly are up to 64 KiB) in the process heap, so after a
flood of them expires the daemon's RSS would stay at its peak; malloc_trim returns it."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

_trim: Callable[[int], int] | None = None
_loaded = False


def _malloc_trim() -> Callable[[int], int] | None:
    global _trim, _loaded
    if not _loaded:
        _loaded = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _trim = libc.malloc_trim
        except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
            _trim = None
    return _trim


def give_back() -> bool:
    """Return free heap memory to the OS; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True

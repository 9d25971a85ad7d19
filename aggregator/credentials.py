"""The one form in which API keys and SMPP passwords are kept: their SHA-256 digests.

Its own module so that the configuration (which derives digests) and ``aggregator.auth``
(which compares them) both import it without importing each other both ways."""

from __future__ import annotations

import hashlib
from typing import Final

__all__ = ["DIGEST_SIZE", "digest"]

DIGEST_SIZE: Final = 32


def digest(secret: str) -> bytes:
    """SHA-256 of the UTF-8 secret: the only form in which keys and passwords are kept."""
    return hashlib.sha256(secret.encode("utf-8")).digest()

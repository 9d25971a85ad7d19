"""UTC time formatting for the API, callbacks and SMPP receipts. Stored times are epoch seconds."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def iso_utc(ts: float | None) -> str | None:
    """ISO 8601 in UTC with milliseconds and a 'Z', or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def smpp_date(ts: float) -> str:
    """YYMMDDhhmm in UTC: the submit date / done date of a receipt's text (SMPP 3.4 appendix B)."""
    return time.strftime("%y%m%d%H%M", time.gmtime(ts))

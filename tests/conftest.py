from __future__ import annotations

from aggregator.log import setup_logging

# Per-message events are debug; keep test output to what explains a failure.
setup_logging("info", "console")

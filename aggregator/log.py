"""structlog set-up: one JSON object per line on stdout, or console output for humans.

One processor guarantees what reaches the log: phone numbers masked (unless log_numbers),
message text and secrets dropped, whatever a call site passed."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

NUMBER_KEYS = frozenset({"to", "number", "destination", "msisdn", "recipient"})
REDACTED_KEYS = frozenset({"text", "password", "api_key", "secret", "authorization", "body"})

_show_numbers = False


def mask_number(e164: str) -> str:
    """+38344123456 -> +38344***456, so logs identify a route, not a person."""
    if _show_numbers:
        return e164
    if len(e164) < 9:
        return "***"
    return f"{e164[:6]}***{e164[-3:]}"


def _guard(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in REDACTED_KEYS.intersection(event):
        event[key] = "[redacted]"
    for key in NUMBER_KEYS.intersection(event):
        value = event[key]
        if isinstance(value, str):
            event[key] = mask_number(value)
    return event


def setup_logging(level: str = "info", fmt: str = "json", log_numbers: bool = False) -> None:
    global _show_numbers
    _show_numbers = log_numbers
    renderer: structlog.types.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _guard,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    # Lazy: the logger is built on first use, after setup_logging() has run.
    return structlog.get_logger(component=name)  # type: ignore[no-any-return]

"""structlog set-up: one JSON object per line on stdout, or console output for humans.

One processor guarantees what reaches the log: phone numbers masked (unless log_numbers),
message text and secrets dropped, whatever a call site passed."""

from __future__ import annotations

import logging
import sys
import traceback
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


class _LibraryGuard(logging.Handler):
    """Takes the records of libraries' stdlib loggers (aiohttp). Their text can quote what a
    peer sent (aiohttp's "Got more than 8190 bytes when reading: b'Bearer <api key>...'"), so
    only the message template, the exception's type and where it was raised are kept, as one
    structlog line per kind and window (a peer can cause them at will)."""

    def __init__(self) -> None:
        super().__init__()
        from aggregator.loglimit import LogLimiter  # it imports metrics: not at module load

        self._limit = LogLimiter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            exc = record.exc_info[1] if record.exc_info else None
            error = type(exc).__name__ if exc is not None else ""
            held = self._limit.allow((record.name, str(record.msg), error), "library")
            if held is None:
                return
            fields: dict[str, Any] = {"logger": record.name, "template": str(record.msg)[:200],
                                      "suppressed": held}
            if exc is not None:
                fields["error"] = error
                frames = traceback.extract_tb(exc.__traceback__)
                if frames:
                    fields["where"] = f"{frames[-1].filename}:{frames[-1].lineno}"
            structlog.get_logger(component="library").log(record.levelno, "library_log",
                                                          **fields)
        except Exception:  # a log line must never take the caller down
            self.handleError(record)


def _guard_libraries() -> None:
    logger = logging.getLogger("aiohttp")
    logger.handlers[:] = [_LibraryGuard()]
    logger.propagate = False  # not also to the root logger's last-resort stderr output
    logger.setLevel(logging.WARNING)


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
    _guard_libraries()


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    # Lazy: the logger is built on first use, after setup_logging() has run.
    return structlog.get_logger(component=name)  # type: ignore[no-any-return]

"""structlog set-up: one JSON object per line on stdout, or console output for humans."""

from __future__ import annotations

import logging
import sys

import structlog


def setup_logging(level: str = "info", fmt: str = "json") -> None:
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
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )


def mask_number(e164: str, show: bool = False) -> str:
    """+38344123456 -> +38344***456, so logs identify a route, not a person."""
    if show or len(e164) < 9:
        return e164 if show else "***"
    return f"{e164[:6]}***{e164[-3:]}"


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]

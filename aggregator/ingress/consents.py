"""The consent-record and opt-out-removal endpoints (issue 19 item 6):

- POST /v1/consents {"number", "scope": "marketing" | "all", "source", "consented_at"?}: record a
  recipient's consent (time, source, scope); 201 with the record.
- GET /v1/consents[?number=]: the account's consent records.
- GET /v1/optouts/removals[?number=]: opt-outs removed, with when they were made and when and by
  whom they were removed (DELETE /v1/optouts/{number}[?by=NAME] records it)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from aggregator import metrics
from aggregator.log import get_logger
from aggregator.model import ApiError, ErrorCode
from aggregator.store.base import Store
from aggregator.timefmt import iso_utc

log = get_logger("smsagg.consents")

SCOPES = ("marketing", "all")
MAX_SOURCE = 200
MAX_BY = 64
LIST_LIMIT = 1000
_FIELDS = frozenset({"number", "scope", "source", "consented_at"})


def _bad(message: str) -> ApiError:
    metrics.messages_rejected.labels(ErrorCode.BAD_REQUEST.value).inc()
    return ApiError(400, ErrorCode.BAD_REQUEST, message)


def _storable(text: str) -> bool:
    """False for a str with lone surrogates, which SQLite cannot store as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_instant(raw: object, now: float) -> float:
    """An ISO 8601 time with an offset ("2026-03-01T10:00:00Z"), not in the future."""
    if not isinstance(raw, str):
        raise _bad("field 'consented_at' must be an ISO 8601 time string")
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise _bad("field 'consented_at' must be an ISO 8601 time like "
                   "2026-03-01T10:00:00Z") from None
    if when.tzinfo is None:
        raise _bad("field 'consented_at' needs a UTC offset or 'Z'")
    try:  # year 1 with a +hh:mm offset, or 9999 with -hh:mm, is out of range in UTC
        ts = when.astimezone(UTC).timestamp()
    except OverflowError:
        raise _bad("field 'consented_at' is out of range") from None
    if ts > now + 60:
        raise _bad("field 'consented_at' is in the future")
    if ts < 0:  # before 1970: no consent is that old, and it could not be shown back
        raise _bad("field 'consented_at' is before 1970")
    return ts


def removed_by(request: web.Request) -> str:
    """Who removed an opt-out: "api", or "api:NAME" with ?by=NAME (an operator or system)."""
    by = request.query.get("by")
    if by is None:
        return "api"
    if not by or len(by) > MAX_BY or not by.isprintable():
        raise _bad(f"query 'by' must be 1-{MAX_BY} printable characters")
    return f"api:{by}"


class ConsentApi:
    def __init__(self, store: Store, account: Callable[[web.Request], str],
                 json_body: Callable[[web.Request], Awaitable[Any]],
                 number: Callable[[object], str],
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._account = account
        self._json_body = json_body
        self._number = number
        self._clock = clock

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/consents", self.post_consent)
        app.router.add_get("/v1/consents", self.get_consents)
        app.router.add_get("/v1/optouts/removals", self.get_removals)

    async def post_consent(self, request: web.Request) -> web.Response:
        account = self._account(request)
        body = await self._json_body(request)
        if not isinstance(body, dict):
            raise _bad("body must be a JSON object")
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            raise _bad(f"unknown field '{unknown[0]}'")
        number = self._number(body.get("number"))
        scope = body.get("scope", "marketing")
        if scope not in SCOPES:
            raise _bad("field 'scope' must be 'marketing' or 'all'")
        source = body.get("source")
        if not isinstance(source, str) or not source.strip() or len(source) > MAX_SOURCE:
            raise _bad(f"field 'source' is required: where the consent was given (1-"
                       f"{MAX_SOURCE} characters, e.g. 'web form /signup')")
        if not _storable(source):  # JSON "\ud800": valid JSON, not storable as UTF-8
            raise _bad("field 'source' contains an unpaired surrogate")
        now = self._clock()
        consented_at = parse_instant(body["consented_at"], now) if (
            body.get("consented_at") is not None) else now
        consent_id = await self._store.add_consent(account, number, scope, source,
                                                   consented_at, now)
        metrics.consents_recorded.labels(scope).inc()
        log.info("consent_recorded", account=account, scope=scope)
        return web.json_response({"id": consent_id, "number": number, "scope": scope,
                                  "source": source, "consented_at": iso_utc(consented_at),
                                  "recorded_at": iso_utc(now)}, status=201)

    async def get_consents(self, request: web.Request) -> web.Response:
        account = self._account(request)
        raw = request.query.get("number")
        rows = await self._store.list_consents(
            account, self._number(raw) if raw is not None else None, LIST_LIMIT)
        return web.json_response({"consents": [
            {"id": i, "number": n, "scope": scope, "source": src, "consented_at": iso_utc(at),
             "recorded_at": iso_utc(rec)} for i, n, scope, src, at, rec in rows]})

    async def get_removals(self, request: web.Request) -> web.Response:
        account = self._account(request)
        raw = request.query.get("number")
        rows = await self._store.list_optout_removals(
            account, self._number(raw) if raw is not None else None, LIST_LIMIT)
        return web.json_response({"removals": [
            {"number": n, "opted_out_at": iso_utc(at), "source": src,
             "removed_at": iso_utc(rem), "removed_by": by, "scope": scope}
            for n, at, src, rem, by, scope in rows]})

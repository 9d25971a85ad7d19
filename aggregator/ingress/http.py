"""The HTTP API (aiohttp): submit and look up messages, health, readiness and metrics."""

from __future__ import annotations

import inspect
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from functools import cache
from importlib.resources import files
from typing import Any
from urllib.parse import urlsplit

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aggregator import metrics
from aggregator.auth import Authenticator, FailedLogins, RateLimit, retry_after
from aggregator.config import AccountConfig
from aggregator.ingress.accept import Acceptor, SubmitInput
from aggregator.ingress.connections import ConnectionGuard
from aggregator.ingress.consents import ConsentApi, removed_by
from aggregator.ingress.fastpost import FastRequest, render
from aggregator.log import get_logger
from aggregator.model import ApiError, ErrorCode, Message, MessageStatus
from aggregator.notify.callback_guard import CallbackPolicy
from aggregator.numbers import NumberError, parse_destination
from aggregator.policy.replies import confirm_api_optout
from aggregator.store.base import OPTOUT_ALL, OPTOUT_SCOPES, MessageFilter, Store, StoreError
from aggregator.timefmt import iso_utc

log = get_logger("smsagg.http")

MAX_REFERENCE = 128
MAX_URL = 2048
MAX_IDEMPOTENCY_KEY = 128
MAX_TEXT = 10_000  # characters; the segment limit is the real bound
MAX_BATCH = 1000

_FIELDS: dict[str, tuple[type, bool]] = {  # name: (type, required)
    "to": (str, True),
    "from": (str, True),
    "text": (str, True),
    "callback_url": (str, False),
    "reference": (str, False),
    "transliterate": (bool, False),
    "class": (str, False),
    "validity": (int, False),
    "send_at": (str, False),
}
MESSAGE_CLASSES = ("transactional", "marketing")
MAX_VALIDITY = 7 * 24 * 3600
LIST_LIMIT = 100  # GET /v1/messages: default page size
MAX_LIST_LIMIT = 1000
_LIST_PARAMS = frozenset({"status", "to", "reference", "since", "until", "limit", "cursor"})
# A message id as this API gives them out: 32 hex characters, or decimal digits for accounts
# with message_id_format = "decimal" (a cursor is the id of a page's last message).
_MESSAGE_ID = re.compile(r"[0-9a-f]{32}|[0-9]{1,19}")


def parse_time(name: str, raw: str) -> float:
    """An ISO 8601 time with a zone (Z or +hh:mm) as epoch seconds; ApiError(400) otherwise."""
    try:
        when = datetime.fromisoformat(raw)
        when.timestamp()  # out of range once moved to UTC (year 1 with a +hh:mm zone)
    except (ValueError, OverflowError):
        raise ApiError(400, ErrorCode.BAD_REQUEST,
                       f"'{name}' must be an ISO 8601 time such as 2026-11-23T14:31:00Z") from None
    if when.tzinfo is None:
        raise ApiError(400, ErrorCode.BAD_REQUEST,
                       f"'{name}' needs a time zone: Z or +hh:mm") from None
    return when.timestamp()


def error_response(status: int, code: ErrorCode | str, message: str,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"error": {"code": str(code), "message": message}}, status=status, headers=headers
    )


# msgspec's JSON decoder first: 1.6 -> 0.2 µs for a single-message body. What it accepts it
# decodes as json.loads does; everything it refuses (NaN, lone surrogates, a BOM, UTF-16,
# 1e400, nesting, bad bytes) goes to json.loads, whose answer (or error) stands.
_DECODE = msgspec.json.Decoder().decode


def _json_loads(raw: bytes) -> Any:
    try:
        return _DECODE(raw)
    except (msgspec.DecodeError, RecursionError):
        pass
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # Recursion: nested too deep
        metrics.messages_rejected.labels(ErrorCode.BAD_REQUEST.value).inc()
        raise ApiError(400, ErrorCode.BAD_REQUEST, "body is not valid JSON") from None


def _error_body(code: ErrorCode | str, message: str) -> bytes:
    """error_response()'s body."""
    return json.dumps({"error": {"code": str(code), "message": message}}).encode()


_RETRY = (("Retry-After", "1"),)
# _submit()'s payload as json.dumps() writes it (ids are hex or decimal digits, status and
# encoding plain words): 3.1 -> 0.4 µs a request.
_ACCEPTED = b'{"id": "%s", "status": "%s", "segments": %d, "encoding": "%s"}'
_RENDERED = frozenset({"Content-Type", "Content-Length", "Date", "Server"})  # render() sets them


def _too_many_requests(code: str, message: str, wait: float) -> web.HTTPTooManyRequests:
    """429 in the API's error shape, with Retry-After in whole seconds (at least 1)."""
    return web.HTTPTooManyRequests(
        text=json.dumps({"error": {"code": code, "message": message}}),
        content_type="application/json",
        headers={"Retry-After": str(retry_after(wait))},
    )


def accepted_status(m: Message) -> str:
    """What a 202 says: held for a sending window, or on its way."""
    return "scheduled" if m.status is MessageStatus.SCHEDULED else "accepted"


def message_view(m: Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "status": m.status.value,
        "to": m.to,
        "from": m.sender.value,
        "segments": m.segments,
        "encoding": m.encoding.value,
        "provider": m.provider,
        "submitted_at": iso_utc(m.submitted_at),
        "done_at": iso_utc(m.done_at),
        "error": m.error,
        "reference": m.reference,
        "class": m.message_class,
    }


def _is_unicode(value: str) -> bool:
    """False for a str with lone surrogates (valid JSON escapes, but not encodable)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_submit(body: object, idempotency_key: str | None,
                 callback_policy: CallbackPolicy | None = None) -> SubmitInput:
    """Type-check a request body; raises ApiError(400) naming the field (422 for a
    callback_url whose literal address ``callback_policy`` forbids)."""
    if not isinstance(body, dict):
        raise ApiError(400, ErrorCode.BAD_REQUEST, "body must be a JSON object")
    if not _plain_fields(body):
        _check_fields(body)
    return _submit_input(body, idempotency_key, callback_policy)


_REQUIRED = tuple(name for name, (_, required) in _FIELDS.items() if required)


def _plain_fields(body: dict[str, Any]) -> bool:
    """Whether every field of `body` is known, null or of exactly its type, and storable, and
    every required one is there: then _check_fields finds nothing, and one pass over the
    body's own fields (three, most often) says so (with SubmitInput not frozen: parse_submit
    6.0 -> 1.8-2.6 µs for a three-field body)."""
    for key, value in body.items():
        spec = _FIELDS.get(key)
        if spec is None:
            return False
        if value is None:
            continue
        if type(value) is not spec[0]:  # exactly: a bool is no int here, nor an int a bool
            return False
        if type(value) is str and not _is_unicode(value):
            return False
    return all(body.get(name) is not None for name in _REQUIRED)


def _check_fields(body: dict[str, Any]) -> None:
    """The fields' names and types; raises ApiError(400) naming the first wrong one."""
    for key in body:
        if key not in _FIELDS:
            raise ApiError(400, ErrorCode.BAD_REQUEST, f"unknown field '{key}'")
    for name, (kind, required) in _FIELDS.items():
        value = body.get(name)
        if value is None:
            if required:
                raise ApiError(400, ErrorCode.BAD_REQUEST, f"field '{name}' is required")
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            noun = {bool: "boolean", int: "whole number", str: "string"}[kind]
            raise ApiError(400, ErrorCode.BAD_REQUEST, f"field '{name}' must be a {noun}")
        if isinstance(value, str) and not _is_unicode(value):  # JSON "\ud800": unstorable
            raise ApiError(400, ErrorCode.BAD_REQUEST,
                           f"field '{name}' contains an unpaired surrogate")


def _submit_input(body: dict[str, Any], idempotency_key: str | None,
                  callback_policy: CallbackPolicy | None) -> SubmitInput:
    """The rest of parse_submit, once the fields' names and types are right."""
    message_class = body.get("class")  # None: the account's default_class (policy/classes.py)
    if message_class is not None and message_class not in MESSAGE_CLASSES:
        raise ApiError(400, ErrorCode.BAD_REQUEST,
                       "field 'class' must be 'transactional' or 'marketing'")
    validity = body.get("validity")
    if validity is not None and not 60 <= validity <= MAX_VALIDITY:
        raise ApiError(400, ErrorCode.BAD_REQUEST,
                       f"field 'validity' must be between 60 and {MAX_VALIDITY} seconds")
    text: str = body["text"]
    if len(text) > MAX_TEXT:
        raise ApiError(422, ErrorCode.TOO_LONG, f"text is longer than {MAX_TEXT} characters")
    reference = body.get("reference")
    if reference is not None and len(reference) > MAX_REFERENCE:
        raise ApiError(400, ErrorCode.BAD_REQUEST,
                       f"field 'reference' is longer than {MAX_REFERENCE} characters")
    url = body.get("callback_url")
    if url is not None:
        parts = urlsplit(url)
        if len(url) > MAX_URL or parts.scheme not in ("http", "https") or not parts.netloc:
            raise ApiError(400, ErrorCode.BAD_REQUEST,
                           "field 'callback_url' must be an http or https URL")
        if callback_policy is not None and callback_policy.literal_forbidden(url):
            raise ApiError(422, ErrorCode.CALLBACK_URL_FORBIDDEN,
                           "field 'callback_url' names an address callbacks may not reach "
                           "(loopback, private, link-local, ...; see [callbacks] "
                           "allowed_networks)")
    send_at = body.get("send_at")
    return SubmitInput(
        to=body["to"],
        sender=body["from"],
        text=text,
        callback_url=url,
        reference=reference,
        transliterate=bool(body.get("transliterate", False)),
        idempotency_key=idempotency_key,
        message_class=message_class,
        validity=float(validity) if validity is not None else None,
        send_at=parse_time("send_at", send_at) if send_at is not None else None,
    )


@cache
def openapi_document() -> bytes:
    """The API's OpenAPI document (aggregator/openapi.json, generated from docs/openapi.yaml)."""
    return files("aggregator").joinpath("openapi.json").read_bytes()


Readiness = tuple[bool, list[str]]  # ready, and the problems when not


class HttpApi:
    def __init__(
        self,
        acceptor: Acceptor,
        store: Store,
        accounts: tuple[AccountConfig, ...],
        *,
        max_body_bytes: int,
        ready: Callable[[], Readiness | Awaitable[Readiness]],
        failed_logins: FailedLogins | None = None,
        exposition: Callable[[], Awaitable[bytes]] | None = None,
        callback_policy: CallbackPolicy | None = None,
    ) -> None:
        self._callback_policy = CallbackPolicy() if callback_policy is None else callback_policy
        self._exposition = exposition  # /metrics text; None: this process's registry
        self._acceptor = acceptor
        self._store = store
        self._auth = Authenticator(accounts)
        self._failed_logins = FailedLogins() if failed_logins is None else failed_logins
        self._limits = {a.name: RateLimit(a.max_http_tps) for a in accounts
                        if a.max_http_tps is not None}
        self._max_body = max_body_bytes
        self._ready = ready
        # The logger itself, not the module's lazy proxy, for the line every accept may log:
        # a debug call that logs nothing costs 0.2 µs through it, 1.1 through the proxy.
        self._log = log.bind()

    def set_accounts(self, accounts: tuple[AccountConfig, ...]) -> None:
        """Take a reloaded set of accounts: keys of removed accounts stop working at once; a
        rate limit that did not change keeps its bucket."""
        self._auth = Authenticator(accounts)
        limits: dict[str, RateLimit] = {}
        for a in accounts:
            if a.max_http_tps is None:
                continue
            old = self._limits.get(a.name)
            limits[a.name] = old if old is not None and old.rate == a.max_http_tps else (
                RateLimit(a.max_http_tps))
        self._limits = limits

    def app(self, guard: ConnectionGuard | None = None) -> web.Application:
        """The API; with ``guard``, its connections' timeouts know when a request runs."""
        middlewares = [self._errors] if guard is None else [guard.middleware, self._errors]
        if guard is not None:
            guard.fast_post = self.fast_post
            guard.max_body = self._max_body
        app = web.Application(client_max_size=self._max_body, middlewares=middlewares)
        app.router.add_post("/v1/messages", self.post_message)
        app.router.add_get("/v1/messages", self.list_messages)
        app.router.add_post("/v1/messages/batch", self.post_batch)
        # Not "batch": that path is POST only, so a GET there is 405 with Allow: POST.
        app.router.add_get(r"/v1/messages/{id:(?!batch$)[^/]+}", self.get_message)
        app.router.add_delete(r"/v1/messages/{id:(?!batch$)[^/]+}", self.cancel_message)
        app.router.add_get("/v1/optouts", self.get_optouts)
        app.router.add_post("/v1/optouts", self.post_optout)
        # Not "removals": that path is GET only, so a DELETE there is 405 with Allow: GET.
        app.router.add_delete(r"/v1/optouts/{number:(?!removals$)[^/]+}", self.delete_optout)
        ConsentApi(self._store, self._account, self._json_body, self._number).add_routes(app)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/v1/openapi.json", self.openapi)
        return app

    def metrics_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        return app

    @web.middleware
    async def _errors(
        self, request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            headers = {"Retry-After": "1"} if exc.status == 503 else None
            return error_response(exc.status, exc.code, exc.message, headers)
        except StoreError as exc:  # a read or write the accept path did not answer itself
            return error_response(503, ErrorCode.STORE_UNAVAILABLE, str(exc),
                                  {"Retry-After": "1"})
        except web.HTTPRequestEntityTooLarge:
            metrics.messages_rejected.labels(ErrorCode.BODY_TOO_LARGE.value).inc()
            return error_response(413, ErrorCode.BODY_TOO_LARGE,
                                  f"request body is larger than {self._max_body} bytes")
        except web.HTTPNotFound:
            return error_response(404, ErrorCode.NOT_FOUND, "no such endpoint")
        except web.HTTPMethodNotAllowed as exc:  # RFC 9110: a 405 lists the allowed methods
            allow = ", ".join(sorted(exc.allowed_methods))
            return error_response(405, "method_not_allowed", "method not allowed here",
                                  {"Allow": allow})

    def _account(self, request: web.Request) -> str:
        """The calling account from "Authorization: Bearer <key>". An address with too many
        wrong keys lately gets 429 without its key being looked at."""
        return self._account_for(request.remote or "", request.headers.get("Authorization", ""))

    def _account_for(self, address: str, auth: str) -> str:
        """_account() from the peer's address and the Authorization header's value."""
        blocked = self._failed_logins.blocked_for(address)
        if blocked > 0:
            metrics.auth_failures.labels("http").inc()
            raise _too_many_requests("too_many_failed_logins",
                                     "too many failed logins from this address", blocked)
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            metrics.auth_failures.labels("http").inc()
            raise ApiError(401, ErrorCode.UNAUTHORIZED,
                           "missing 'Authorization: Bearer <api key>' header")
        key = token.strip()
        # Bytes that are not UTF-8 arrive as lone surrogates: never a valid key, and not
        # hashable as UTF-8 (a 500 before); a wrong key like any other.
        account = self._auth.account_for_key(key) if _is_unicode(key) else None
        if account is None:
            metrics.auth_failures.labels("http").inc()
            if self._failed_logins.failed(address):
                log.warning("http_logins_blocked", peer=address,
                            seconds=self._failed_logins.cooldown)
            raise ApiError(401, ErrorCode.UNAUTHORIZED, "unknown API key")
        return account

    def _rate_limit(self, account: str, messages: int) -> None:
        """Raise 429 rate_limited when the account's max_http_tps has no room for these."""
        limit = self._limits.get(account)
        if limit is None:
            return
        wait = limit.try_take(messages)
        if wait > 0:
            metrics.rate_limited.labels("http").inc()
            raise _too_many_requests(
                "rate_limited", f"account is limited to {limit.rate:g} messages per second", wait)

    async def post_message(self, request: web.Request) -> web.Response:
        payload = await self._submit(request.remote or "", request.headers.get("Authorization", ""),
                                     request.headers.get("Idempotency-Key"), request.read)
        return web.json_response(payload, status=202)

    async def fast_post(self, address: str, request: FastRequest) -> bytes:
        """POST /v1/messages from the connection guard's fast lane (fastpost.py): the whole
        HTTP answer, the same status, headers and body that the route and the _errors
        middleware give."""
        try:
            payload = await self._submit(address, request.authorization,
                                         request.idempotency_key, request.read)
        except ApiError as exc:
            return render(exc.status, _error_body(exc.code, exc.message),
                          _RETRY if exc.status == 503 else ())
        except StoreError as exc:
            return render(503, _error_body(ErrorCode.STORE_UNAVAILABLE, str(exc)), _RETRY)
        except web.HTTPException as exc:  # 429 (_too_many_requests): JSON text of its own
            return render(exc.status, (exc.text or "").encode(),
                          tuple((k, v) for k, v in exc.headers.items()
                                if k not in _RENDERED))
        message_id: str = payload["id"]
        if not (message_id.isascii() and message_id.isalnum()):  # never ours; still valid JSON
            return render(202, json.dumps(payload).encode())
        return render(202, _ACCEPTED % (message_id.encode(), payload["status"].encode(),
                                        payload["segments"], payload["encoding"].encode()))

    async def _submit(self, address: str, auth: str, key: str | None,
                      read: Callable[[], Awaitable[bytes]]) -> dict[str, Any]:
        """One message, from either lane: the 202 answer's payload, or ApiError (and 429)."""
        started = time.perf_counter()
        try:
            account = self._account_for(address, auth)
        except ApiError:
            metrics.messages_rejected.labels(ErrorCode.UNAUTHORIZED.value).inc()
            raise
        self._rate_limit(account, 1)
        body = _json_loads(await read())
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
            raise ApiError(400, ErrorCode.BAD_REQUEST,
                           f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
        if key is not None and not _is_unicode(key):  # bytes that are not UTF-8
            metrics.messages_rejected.labels(ErrorCode.BAD_REQUEST.value).inc()
            raise ApiError(400, ErrorCode.BAD_REQUEST, "Idempotency-Key must be UTF-8 text")
        try:
            item = parse_submit(body, key, self._callback_policy)
        except ApiError as exc:
            metrics.messages_rejected.labels(exc.code.value).inc()
            raise
        result = await self._acceptor.accept(account, item)
        m = result.message
        metrics.accept_latency.observe(time.perf_counter() - started)
        self._log.debug("accepted", message_id=m.id, account=account, to=m.to,
                        segments=m.segments, replay=not result.created)
        return {"id": m.id, "status": accepted_status(m), "segments": m.segments,
                "encoding": m.encoding.value}

    async def _json_body(self, request: web.Request) -> Any:
        return _json_loads(await request.read())

    async def post_batch(self, request: web.Request) -> web.Response:
        """Up to MAX_BATCH messages, each answered in order with the single endpoint's result;
        the valid ones are committed in one transaction before the answer."""
        started = time.perf_counter()
        account = self._account(request)
        if "Idempotency-Key" in request.headers:  # a batch has no key: refused, not ignored
            metrics.messages_rejected.labels(ErrorCode.IDEMPOTENCY_KEY_UNSUPPORTED.value).inc()
            raise ApiError(400, ErrorCode.IDEMPOTENCY_KEY_UNSUPPORTED,
                           "Idempotency-Key is not supported on batches; send each message"
                           " that needs one to POST /v1/messages")
        body = await self._json_body(request)
        items = body.get("messages") if isinstance(body, dict) else None
        unknown = sorted(str(k) for k in body if k != "messages") if isinstance(body, dict) else []
        if unknown:
            metrics.messages_rejected.labels(ErrorCode.BAD_REQUEST.value).inc()
            raise ApiError(400, ErrorCode.BAD_REQUEST, f"unknown field '{unknown[0][:64]}'")
        if not isinstance(items, list) or not items:
            raise ApiError(400, ErrorCode.BAD_REQUEST,
                           "body must be {\"messages\": [...]} with at least one message")
        if len(items) > MAX_BATCH:
            raise ApiError(413, ErrorCode.BODY_TOO_LARGE,
                           f"a batch holds at most {MAX_BATCH} messages, got {len(items)}")
        self._rate_limit(account, len(items))
        parsed: list[SubmitInput | ApiError] = []
        for i, item in enumerate(items):
            try:
                parsed.append(parse_submit(item, None, self._callback_policy))
            except ApiError as exc:
                metrics.messages_rejected.labels(exc.code.value).inc()
                parsed.append(ApiError(exc.status, exc.code, f"messages[{i}]: {exc.message}"))
        results = await self._acceptor.accept_batch(account, parsed)
        out: list[dict[str, Any]] = []
        for r in results:
            if isinstance(r, ApiError):
                out.append({"status": r.status,
                            "error": {"code": r.code.value, "message": r.message}})
            else:
                out.append({"status": 202, "id": r.id, "segments": r.segments,
                            "encoding": r.encoding.value, "state": accepted_status(r)})
        metrics.accept_latency.observe(time.perf_counter() - started)
        return web.json_response({"results": out})

    async def get_message(self, request: web.Request) -> web.Response:
        account = self._account(request)
        message_id = request.match_info["id"]
        message = await self._store.get_message(account, message_id)
        if message is None:  # another account's id looks exactly like an unknown one
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no message with id '{message_id}'")
        return web.json_response(message_view(message))

    @staticmethod
    def _list_filter(query: Mapping[str, str]) -> tuple[MessageFilter, int]:
        """GET /v1/messages query parameters, each checked; ApiError(400/422) naming it."""
        unknown = sorted(set(query) - _LIST_PARAMS)
        if unknown:
            raise ApiError(400, ErrorCode.BAD_REQUEST, f"unknown query parameter '{unknown[0]}'")
        status = query.get("status")
        if status is not None and status not in {s.value for s in MessageStatus}:
            raise ApiError(400, ErrorCode.BAD_REQUEST, f"unknown status '{status}'")
        raw_limit = query.get("limit", str(LIST_LIMIT))
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIST_LIMIT:
            raise ApiError(400, ErrorCode.BAD_REQUEST,
                           f"'limit' must be a whole number from 1 to {MAX_LIST_LIMIT}")
        cursor = query.get("cursor")
        if cursor is not None and not _MESSAGE_ID.fullmatch(cursor):
            raise ApiError(400, ErrorCode.BAD_REQUEST, "'cursor' is not one this API gave out")
        reference = query.get("reference")
        if reference is not None and len(reference) > MAX_REFERENCE:
            raise ApiError(400, ErrorCode.BAD_REQUEST,
                           f"'reference' is longer than {MAX_REFERENCE} characters")
        since, until = query.get("since"), query.get("until")
        to = query.get("to")
        where = MessageFilter(
            status=status,
            to=HttpApi._number(to) if to is not None else None,
            reference=reference,
            since=parse_time("since", since) if since is not None else None,
            until=parse_time("until", until) if until is not None else None,
            before=cursor,
        )
        return where, int(raw_limit)

    async def list_messages(self, request: web.Request) -> web.Response:
        """The account's messages, newest first; `next_cursor` fetches the page after."""
        account = self._account(request)
        where, limit = self._list_filter(request.query)
        found = await self._store.list_messages(account, where, limit + 1)
        page = found[:limit]
        metrics.message_lists.inc()
        log.debug("messages_listed", account=account, count=len(page))
        return web.json_response({
            "messages": [message_view(m) for m in page],
            "next_cursor": page[-1].id if len(found) > limit else None,
        })

    async def cancel_message(self, request: web.Request) -> web.Response:
        """Cancel a message not yet taken for submission; 409 once it is. Repeating a
        cancel that succeeded answers the same."""
        account = self._account(request)
        message_id = request.match_info["id"]
        outcome, notice = await self._store.cancel(account, message_id, time.time())
        if outcome == "not_found":
            metrics.cancels.labels("not_found").inc()
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no message with id '{message_id}'")
        if outcome != MessageStatus.CANCELLED.value:
            metrics.cancels.labels("too_late").inc()
            raise ApiError(409, ErrorCode.NOT_CANCELLABLE,
                           f"message is {outcome}: it was already taken for submission")
        if notice is not None:  # cancelled by this request, not by an earlier one
            metrics.cancels.labels("cancelled").inc()
            metrics.messages_final.labels(MessageStatus.CANCELLED.value).inc()
            log.info("message_cancelled", message_id=message_id, account=account)
        else:
            metrics.cancels.labels("already_cancelled").inc()
        message = await self._store.get_message(account, message_id)
        if message is None:  # cannot happen: cancelled rows are kept
            raise ApiError(404, ErrorCode.NOT_FOUND, f"no message with id '{message_id}'")
        return web.json_response(message_view(message))

    @staticmethod
    def _number(raw: object) -> str:
        """A number from the opt-out API (in a path it arrives URL-decoded: "+383..." or
        "%2B383..." alike), as E.164."""
        if not isinstance(raw, str):
            raise ApiError(400, ErrorCode.BAD_REQUEST, "field 'number' must be a string")
        try:
            return parse_destination(raw).e164
        except NumberError as exc:
            raise ApiError(422, exc.code, str(exc)) from None

    async def get_optouts(self, request: web.Request) -> web.Response:
        account = self._account(request)
        number = request.query.get("number")
        rows = await self._store.list_optouts(
            account, self._number(number) if number is not None else None, 1000)
        return web.json_response({"optouts": [
            {"number": n, "created_at": iso_utc(at), "source": src, "scope": scope}
            for n, at, src, scope in rows]})

    @staticmethod
    def _optout_scope(body: object) -> str:
        """POST /v1/optouts' optional "scope": "all" (the default) or "marketing"."""
        raw = body.get("scope", OPTOUT_ALL) if isinstance(body, dict) else OPTOUT_ALL
        if not isinstance(raw, str) or raw not in OPTOUT_SCOPES:
            metrics.messages_rejected.labels(ErrorCode.BAD_REQUEST.value).inc()
            raise ApiError(400, ErrorCode.BAD_REQUEST,
                           "field 'scope' must be \"all\" (every message class, the default) "
                           "or \"marketing\" (marketing only)")
        return raw

    async def post_optout(self, request: web.Request) -> web.Response:
        account = self._account(request)
        body = await self._json_body(request)
        number = self._number(body.get("number") if isinstance(body, dict) else None)
        scope = self._optout_scope(body)
        added = await self._store.add_optout(account, number, "api", time.time(), scope)
        if added:
            metrics.optouts_recorded.labels(scope, "api").inc()
            log.info("optout_recorded", account=account, scope=scope, via="api")
        else:  # already opted out: answer with the scope in force (never narrowed)
            scope = await self._store.optout_scope(account, number) or scope
        answer: dict[str, object] = {"number": number, "created": added, "scope": scope}
        if added:
            outcome = await confirm_api_optout(self._acceptor, account, number)
            if outcome is not None:
                answer["confirmation"] = outcome
        return web.json_response(answer, status=201 if added else 200)

    async def delete_optout(self, request: web.Request) -> web.Response:
        account = self._account(request)
        number = self._number(request.match_info["number"])
        removed = await self._store.remove_optout_logged(account, number, removed_by(request),
                                                         time.time())
        if not removed:
            raise ApiError(404, ErrorCode.NOT_FOUND, f"{number} is not on the opt-out list")
        return web.Response(status=204)

    async def openapi(self, request: web.Request) -> web.Response:
        """The OpenAPI document; no key needed (it holds no account data)."""
        metrics.openapi_requests.inc()
        log.debug("openapi_served", peer=request.remote)
        return web.Response(body=openapi_document(), content_type="application/json")

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        answer = self._ready()  # in an ingress worker: asked of the daemon
        ok, problems = await answer if inspect.isawaitable(answer) else answer
        if ok:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not_ready", "problems": problems}, status=503)

    async def metrics(self, request: web.Request) -> web.Response:
        body = (await self._exposition() if self._exposition is not None
                else generate_latest(metrics.REGISTRY))
        resp = web.Response(body=body)
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        resp.charset = "utf-8"
        return resp

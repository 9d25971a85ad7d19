"""The HTTP API (aiohttp): submit and look up messages, health, readiness and metrics."""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from aggregator import metrics
from aggregator.auth import Authenticator, FailedLogins, RateLimit, retry_after
from aggregator.config import AccountConfig
from aggregator.ingress.accept import Acceptor, SubmitInput
from aggregator.ingress.callback_guard import CallbackPolicy
from aggregator.ingress.connections import ConnectionGuard
from aggregator.log import get_logger
from aggregator.model import ApiError, ErrorCode, Message, MessageStatus
from aggregator.numbers import NumberError, parse_destination
from aggregator.store.base import Store, StoreError
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
}
MESSAGE_CLASSES = ("transactional", "marketing")
MAX_VALIDITY = 7 * 24 * 3600


def error_response(status: int, code: ErrorCode | str, message: str,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"error": {"code": str(code), "message": message}}, status=status, headers=headers
    )


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
    message_class = body.get("class", "transactional")
    if message_class not in MESSAGE_CLASSES:
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
    )


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
        app = web.Application(client_max_size=self._max_body, middlewares=middlewares)
        app.router.add_post("/v1/messages", self.post_message)
        app.router.add_post("/v1/messages/batch", self.post_batch)
        app.router.add_get("/v1/messages/{id}", self.get_message)
        app.router.add_get("/v1/optouts", self.get_optouts)
        app.router.add_post("/v1/optouts", self.post_optout)
        app.router.add_delete("/v1/optouts/{number}", self.delete_optout)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
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
        except web.HTTPMethodNotAllowed:
            return error_response(405, "method_not_allowed", "method not allowed here")

    def _account(self, request: web.Request) -> str:
        """The calling account from "Authorization: Bearer <key>". An address with too many
        wrong keys lately gets 429 without its key being looked at."""
        address = request.remote or ""
        blocked = self._failed_logins.blocked_for(address)
        if blocked > 0:
            metrics.auth_failures.labels("http").inc()
            raise _too_many_requests("too_many_failed_logins",
                                     "too many failed logins from this address", blocked)
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            metrics.auth_failures.labels("http").inc()
            raise ApiError(401, ErrorCode.UNAUTHORIZED,
                           "missing 'Authorization: Bearer <api key>' header")
        account = self._auth.account_for_key(token.strip())
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
        started = time.perf_counter()
        try:
            account = self._account(request)
        except ApiError:
            metrics.messages_rejected.labels(ErrorCode.UNAUTHORIZED.value).inc()
            raise
        self._rate_limit(account, 1)
        body = await self._json_body(request)
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
            raise ApiError(400, ErrorCode.BAD_REQUEST,
                           f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
        try:
            item = parse_submit(body, key, self._callback_policy)
        except ApiError as exc:
            metrics.messages_rejected.labels(exc.code.value).inc()
            raise
        result = await self._acceptor.accept(account, item)
        m = result.message
        metrics.accept_latency.observe(time.perf_counter() - started)
        log.debug("accepted", message_id=m.id, account=account, to=m.to, segments=m.segments,
                  replay=not result.created)
        return web.json_response(
            {"id": m.id, "status": accepted_status(m), "segments": m.segments,
             "encoding": m.encoding.value},
            status=202,
        )

    async def _json_body(self, request: web.Request) -> Any:
        raw = await request.read()
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):  # Recursion: nested too deep
            metrics.messages_rejected.labels(ErrorCode.BAD_REQUEST.value).inc()
            raise ApiError(400, ErrorCode.BAD_REQUEST, "body is not valid JSON") from None

    async def post_batch(self, request: web.Request) -> web.Response:
        """Up to MAX_BATCH messages, each answered in order with the single endpoint's result;
        the valid ones are committed in one transaction before the answer."""
        started = time.perf_counter()
        account = self._account(request)
        body = await self._json_body(request)
        items = body.get("messages") if isinstance(body, dict) else None
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
            {"number": n, "created_at": iso_utc(at), "source": src} for n, at, src in rows]})

    async def post_optout(self, request: web.Request) -> web.Response:
        account = self._account(request)
        body = await self._json_body(request)
        number = self._number(body.get("number") if isinstance(body, dict) else None)
        added = await self._store.add_optout(account, number, "api", time.time())
        return web.json_response({"number": number, "created": added},
                                 status=201 if added else 200)

    async def delete_optout(self, request: web.Request) -> web.Response:
        account = self._account(request)
        number = self._number(request.match_info["number"])
        removed = await self._store.remove_optout(account, number)
        if not removed:
            raise ApiError(404, ErrorCode.NOT_FOUND, f"{number} is not on the opt-out list")
        return web.Response(status=204)

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

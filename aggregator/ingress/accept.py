"""The accept path every ingress shares after decoding: validate the number, the sender and the
text, find a route, and commit the message before anyone is told it was accepted."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from aggregator import metrics
from aggregator.config import AccountConfig, MessagesConfig
from aggregator.log import get_logger
from aggregator.model import (
    ApiError,
    DecimalIds,
    ErrorCode,
    Message,
    MessageStatus,
    new_message_id,
)
from aggregator.numbers import NumberError, SenderError, parse_destination, parse_sender
from aggregator.policy.gate import AUTO_REPLY_REFERENCE, PolicyGate
from aggregator.policy.rules import check_landline
from aggregator.routing import RouteTable
from aggregator.store.base import AcceptResult, Store, StoreBusy, StoreError
from aggregator.text import choose_encoding, count_segments, transliterate

BATCH_SLICE = 50  # batch items validated between turns given to the rest of the loop
FULL_LOG_EVERY = 10.0  # seconds between log lines for one account's refusals at its max_pending

log = get_logger("smsagg.accept")


@dataclass(slots=True)
class SubmitInput:
    """A message as an upstream handed it to us, already decoded from HTTP or SMPP. Not
    frozen: one is made per message, and a frozen dataclass sets each of its 12 fields through
    object.__setattr__ (1.6 -> 0.5 µs). Nothing changes one once made (replace() copies)."""

    to: str
    sender: str
    text: str
    callback_url: str | None = None
    reference: str | None = None
    transliterate: bool = False
    idempotency_key: str | None = None
    message_class: str | None = None  # None: decided by policy/classes.py from the account
    validity: float | None = None  # seconds; None: the configured default
    receipt_mode: int = 0  # SMPP upstreams: registered_delivery bits 1-0
    send_at: float | None = None  # epoch seconds: not before then (within the validity)
    # The daemon's own answer to a handset's keyword (opt-out confirmation, help text): the
    # opt-out it answers does not stop it (gate.AUTO_REPLY_REFERENCE marks it for send time).
    auto_reply: bool = False


class Acceptor:
    def __init__(
        self,
        store: Store,
        routes: RouteTable,
        config: MessagesConfig,
        *,
        max_pending: int,
        on_accepted: Callable[[], None],
        policy: PolicyGate | None = None,
        clock: Callable[[], float] = time.time,
        accounts: Mapping[str, AccountConfig] | None = None,
        id_node: int = 0,
        account_limit: Callable[[str], int] | None = None,
    ) -> None:
        """`accounts` (by name; reloads may change it in place): each one's default_country
        and message id form; None: neither applies. `id_node`: this process's part of decimal
        message ids (0 the daemon, n the ingress worker n), which keeps them unique.
        `account_limit`: an account's own max_pending (None: only the global bound)."""
        self._store = store
        self._routes = routes
        self._config = config
        self._max_pending = max_pending
        self._on_accepted = on_accepted
        self.clock = clock
        self._account_limit = account_limit
        self._full_logged: dict[str, float] = {}  # account -> when its refusal was last logged
        self.policy = policy  # country rules; None: none apply
        self._accounts = accounts
        self._decimal_ids = DecimalIds(id_node)
        # Batches are validated one at a time, yielding every BATCH_SLICE items: a 1,000-item
        # batch is ~100 ms of CPU, and relaying must get turns in between (it starved before).
        self._batch_turn = asyncio.Lock()

    def _reject(self, status: int, code: ErrorCode, message: str) -> ApiError:
        metrics.messages_rejected.labels(code.value).inc()
        return ApiError(status, code, message)

    async def _admit(self, account: str, item: SubmitInput) -> Message:
        """Build, then apply the country rules (which may schedule the message)."""
        # Passed on to _build rather than put in a replace()d item: 5 µs a message.
        message_class = item.message_class
        if message_class is None:
            message_class = self.policy.default_class(account) if self.policy is not None else None
        message_class = message_class or "transactional"
        if item.reference == AUTO_REPLY_REFERENCE and not item.auto_reply:
            raise self._reject(400, ErrorCode.BAD_REQUEST,
                               f"reference {AUTO_REPLY_REFERENCE!r} is reserved for the "
                               "daemon's own replies to handsets")
        if item.auto_reply:
            item = replace(item, reference=AUTO_REPLY_REFERENCE)
        message, number_type = self._build(account, item, message_class)
        if self.policy is not None:
            message = await self.policy.apply(message, number_type, auto_reply=item.auto_reply)
        else:  # no country rules: landlines still take the rules' default (not supported)
            landline = check_landline(None, number_type)
            if landline is not None:
                raise self._reject(landline.status, ErrorCode.NOT_MOBILE, landline.message)
        return message

    def _build(self, account: str, item: SubmitInput,
               message_class: str) -> tuple[Message, str]:
        """Validate and build the message (of `message_class`, the item's or the account's
        default); raises ApiError with the specific reason. Also returns the destination's
        number type, for the country rules."""
        config = self._accounts.get(account) if self._accounts is not None else None
        try:
            dest = parse_destination(item.to, config.default_country if config else None)
        except NumberError as exc:
            raise self._reject(422, exc.code, str(exc)) from None
        try:
            sender = parse_sender(item.sender)
        except SenderError as exc:
            raise self._reject(422, ErrorCode.INVALID_SENDER, str(exc)) from None
        if not item.text:
            raise self._reject(422, ErrorCode.EMPTY_TEXT, "text must not be empty")
        text = transliterate(item.text) if item.transliterate else item.text
        encoding = choose_encoding(text)
        segments = count_segments(text, encoding)
        if segments > self._config.max_segments:
            raise self._reject(
                422, ErrorCode.TOO_LONG,
                f"text needs {segments} {encoding.value} segments; the maximum is "
                f"{self._config.max_segments}",
            )
        if not self._routes.providers_for(dest.e164, message_class):
            raise self._reject(
                422, ErrorCode.NO_ROUTE,
                f"no route for {message_class} messages to {dest.e164[:4]}...",
            )
        now = self.clock()
        validity = item.validity or self._config.default_validity
        if item.send_at is not None and item.send_at >= now + validity:
            raise self._reject(
                400, ErrorCode.BAD_REQUEST,
                f"field 'send_at' must fall within the message's validity ({validity:g} s)")
        later = item.send_at is not None and item.send_at > now
        message = Message(
            id=(self._decimal_ids.next() if config is not None
                and config.message_id_format == "decimal" else new_message_id()),
            account=account,
            to=dest.e164,
            region=dest.region,
            sender=sender,
            text=text,
            encoding=encoding,
            segments=segments,
            # Any byte will do (it tells a message's parts from another's): no getrandom call
            # per message, as os.urandom made (1.5% of a worker's samples).
            concat_ref=random.getrandbits(8),
            created_at=now,
            callback_url=item.callback_url,
            reference=item.reference,
            message_class=message_class,
            receipt_mode=item.receipt_mode,
            status=MessageStatus.SCHEDULED if later else MessageStatus.ACCEPTED,
            next_attempt_at=item.send_at if later and item.send_at is not None else now,
            expires_at=now + validity,
        )
        return message, dest.number_type

    def _check_room(self, n: int = 1, account: str | None = None) -> None:
        if self._store.pending + n > self._max_pending:
            raise self._reject(
                503, ErrorCode.QUEUE_FULL,
                f"{self._store.pending} messages are waiting to be sent; try again shortly",
            )
        if account is not None and self._account_limit is not None:
            self._check_account_room(account, n)

    def _check_account_room(self, account: str, n: int) -> None:
        """The account's own bound: one account's backlog cannot fill the global one."""
        waiting = self._store.pending_by_account.get(account, 0)
        limit = self._account_limit(account) if self._account_limit is not None else 0
        if waiting + n <= limit:
            return
        metrics.account_queue_full.labels(account).inc()
        now = time.monotonic()
        if now - self._full_logged.get(account, -FULL_LOG_EVERY) >= FULL_LOG_EVERY:
            self._full_logged[account] = now  # one line per account and interval, not a flood
            log.warning("account_queue_full", account=account, waiting=waiting, limit=limit)
        raise self._reject(
            503, ErrorCode.QUEUE_FULL,
            f"account {account!r} has {waiting} messages waiting to be sent (its max_pending "
            f"is {limit}); try again shortly",
        )

    async def accept(self, account: str, item: SubmitInput) -> AcceptResult:
        try:
            message = await self._admit(account, item)
        except StoreError as exc:  # the rules' state (opt-outs, history) could not be read
            metrics.store_errors.labels("accept").inc()
            raise self._reject(503, ErrorCode.STORE_UNAVAILABLE, str(exc)) from None
        self._check_room(account=account)
        try:
            result = await self._store.accept(message, item.idempotency_key)
        except StoreBusy as exc:
            raise self._reject(503, ErrorCode.QUEUE_FULL, str(exc)) from None
        except StoreError as exc:
            metrics.store_errors.labels("accept").inc()
            raise self._reject(503, ErrorCode.STORE_UNAVAILABLE, str(exc)) from None
        if result.created:
            metrics.child(metrics.messages_accepted, account).inc()
            _count_send_at(item, result.message)
            self._on_accepted()
        return result

    async def accept_batch(
        self, account: str, items: list[SubmitInput | ApiError]
    ) -> list[Message | ApiError]:
        """Validate each item; store every valid one in one transaction. Results in order.
        Items that failed to parse come in as their ApiError and go out unchanged."""
        results: list[Message | ApiError] = []
        async with self._batch_turn:
            for i, item in enumerate(items, 1):
                if isinstance(item, ApiError):
                    results.append(item)
                    continue
                try:
                    results.append(await self._admit(account, item))
                except ApiError as exc:
                    results.append(exc)
                except StoreError as exc:  # the rules' state could not be read: none stored
                    metrics.store_errors.labels("accept").inc()
                    raise self._reject(503, ErrorCode.STORE_UNAVAILABLE, str(exc)) from None
                if i % BATCH_SLICE == 0:
                    await asyncio.sleep(0)
        valid = [r for r in results if isinstance(r, Message)]
        if not valid:
            return results
        self._check_room(len(valid), account)
        try:
            await self._store.accept_many(valid)
        except StoreBusy as exc:
            raise self._reject(503, ErrorCode.QUEUE_FULL, str(exc)) from None
        except StoreError as exc:
            metrics.store_errors.labels("accept").inc()
            raise self._reject(503, ErrorCode.STORE_UNAVAILABLE, str(exc)) from None
        metrics.messages_accepted.labels(account).inc(len(valid))
        for item, result in zip(items, results, strict=True):
            if isinstance(item, SubmitInput) and isinstance(result, Message):
                _count_send_at(item, result)
        self._on_accepted()
        return results


def _count_send_at(item: SubmitInput, message: Message) -> None:
    """A stored message the client scheduled for later (smsagg_messages_send_at_total)."""
    if item.send_at is not None and item.send_at > message.created_at:
        metrics.messages_send_at.inc()

"""Mobile-originated messages from providers: opt-out and help keywords handled here (the
opt-out committed before the operator gets its deliver_sm_resp), the rest forwarded to the
account's mo_url through the durable callback outbox, or to its bound SMPP receiver."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from aggregator import metrics
from aggregator.config import AccountConfig
from aggregator.ingress.accept import Acceptor, SubmitInput
from aggregator.log import get_logger
from aggregator.model import ApiError
from aggregator.numbers import NumberError, parse_destination
from aggregator.policy.profiles import CountryProfile
from aggregator.policy.rules import classify_mo
from aggregator.store.base import Store
from aggregator.timefmt import iso_utc

log = get_logger("smsagg.mo")


class MoHandler:
    def __init__(
        self,
        store: Store,
        profiles: Mapping[str, CountryProfile],
        accounts: Mapping[str, AccountConfig],
        acceptor: Acceptor,
        on_callback: Callable[[], None],
        on_smpp: Callable[[str], None] = lambda _account: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._profiles = profiles
        self._accounts = accounts
        self._acceptor = acceptor
        self._on_callback = on_callback
        self._on_smpp = on_smpp
        self._clock = clock

    async def handle(self, provider: str, pdu: Any) -> None:
        """Raises StoreError if the outcome could not be stored (then do not acknowledge)."""
        number = pdu.source.number if pdu.source.number.startswith("+") else (
            "+" + pdu.source.number)
        replied_to = pdu.destination.number
        text = pdu.short_message or pdu.message_payload or ""
        account_name = (await self._store.account_for_reply(number, replied_to)
                        or await self._store.account_for_reply(number, "+" + replied_to))
        if account_name is None or account_name not in self._accounts:
            metrics.mo_messages.labels("unknown_account").inc()
            log.warning("mo_unmatched", provider=provider, number=number)
            return
        account = self._accounts[account_name]
        try:
            region = parse_destination(number).region
        except NumberError:
            region = None
        profile = self._profiles.get(region) if region else None
        kind = classify_mo(profile, text)
        metrics.mo_messages.labels(kind).inc()
        now = self._clock()
        if kind == "optout":
            added = await self._store.add_optout(account.name, number, f"mo:{provider}", now)
            log.info("optout", account=account.name, number=number, provider=provider,
                     new=added)
            # Only for a new opt-out: a repeated STOP (or an auto-replying handset) gets no
            # answer, so two machines cannot talk to each other forever.
            if added and profile is not None and profile.optout.confirmation:
                await self._reply(account.name, number, replied_to, profile.optout.confirmation)
        elif kind == "help":
            if profile is not None and profile.optout.help_text:
                await self._reply(account.name, number, replied_to, profile.optout.help_text)
        elif account.mo_url:
            payload = json.dumps({"type": "mo", "from": number, "to": replied_to, "text": text,
                                  "received_at": iso_utc(now), "provider": provider})
            await self._store.enqueue_callback(account.mo_url, payload, now)
            self._on_callback()
        elif account.system_id:
            # No mo_url: the account's bound SMPP receiver gets it (kept until one binds).
            await self._store.enqueue_smpp_mo(account.name, number, replied_to, text, now)
            self._on_smpp(account.name)
        else:
            log.warning("mo_dropped", account=account.name, provider=provider,
                        why="the account has neither mo_url nor SMPP credentials")

    async def _reply(self, account: str, number: str, sender: str, text: str) -> None:
        """Answer the handset from the sender it wrote to (a transactional message)."""
        try:
            await self._acceptor.accept(account, SubmitInput(to=number, sender=sender, text=text,
                                                             message_class="transactional"))
        except ApiError as exc:
            log.warning("mo_reply_refused", account=account, code=exc.code.value)

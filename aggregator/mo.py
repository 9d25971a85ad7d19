"""Mobile-originated messages from providers: opt-out and help keywords handled here (the
opt-out committed before the operator gets its deliver_sm_resp), the rest forwarded to the
account's mo_url through the durable callback outbox, or to its bound SMPP receiver."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from aggregator import metrics
from aggregator.config import AccountConfig
from aggregator.ingress.accept import Acceptor, SubmitInput
from aggregator.log import get_logger
from aggregator.model import ApiError
from aggregator.numbers import NumberError, parse_destination
from aggregator.policy.profiles import CountryProfile
from aggregator.policy.replies import fit_auto_text
from aggregator.policy.rules import classify_mo
from aggregator.store.base import OPTOUT_ALL, Store
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
        auto_reply_interval: float = 86400.0,
    ) -> None:
        self._auto = AutoReplies(auto_reply_interval)
        self._store = store
        self._profiles = profiles
        self._accounts = accounts
        self._acceptor = acceptor
        self._on_callback = on_callback
        self._on_smpp = on_smpp
        self.clock = clock

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
        now = self.clock()
        automated = looks_automated(pdu, text, profile)
        if kind == "optout":
            # A STOP from the handset stops everything from the account (scope "all"), whatever
            # it replied to; an account keeps marketing-only lists through the API.
            added = await self._store.add_optout(account.name, number, f"mo:{provider}", now,
                                                 OPTOUT_ALL)
            log.info("optout", account=account.name, number=number, provider=provider,
                     new=added, scope=OPTOUT_ALL)
            if added:
                metrics.optouts_recorded.labels(OPTOUT_ALL, "mo").inc()
            # Only for a new opt-out: a repeated STOP (or an auto-replying handset) gets no
            # answer, so two machines cannot talk to each other forever.
            if added and profile is not None and profile.optout.confirmation:
                await self._auto_reply("optout", automated, account.name, number, replied_to,
                                       profile.optout.confirmation, now)
            return
        if kind == "help" and profile is not None and profile.optout.help_text:
            await self._auto_reply("help", automated, account.name, number, replied_to,
                                   profile.optout.help_text, now)
            return
        # Anything else (a help keyword with no help text to answer included) is the account's.
        await self._forward(account, provider, number, replied_to, text, now)

    async def _forward(self, account: AccountConfig, provider: str, number: str,
                       replied_to: str, text: str, now: float) -> None:
        if account.mo_url:
            payload = json.dumps({"type": "mo", "from": number, "to": replied_to, "text": text,
                                  "received_at": iso_utc(now), "provider": provider})
            await self._store.enqueue_callback(account.mo_url, payload, now)
            metrics.mo_forwarded.labels("mo_url").inc()
            self._on_callback()
        elif account.system_id:
            # No mo_url: the account's bound SMPP receiver gets it (kept until one binds).
            await self._store.enqueue_smpp_mo(account.name, number, replied_to, text, now)
            metrics.mo_forwarded.labels("smpp").inc()
            self._on_smpp(account.name)
        else:
            metrics.mo_forwarded.labels("none").inc()
            log.warning("mo_dropped", account=account.name, provider=provider,
                        why="the account has neither mo_url nor SMPP credentials")

    async def _auto_reply(self, kind: str, automated: bool, account: str, number: str,
                          sender: str, text: str, now: float) -> None:
        """Answer a keyword, unless the sender looks automated or got this answer lately."""
        if automated:
            outcome = "automated"
        elif not self._auto.allow(account, number, kind, now):
            outcome = "recent"
        else:
            outcome = "sent"
        metrics.mo_auto_replies.labels(kind, outcome).inc()
        if outcome != "sent":
            log.info("mo_auto_reply_suppressed", account=account, kind=kind, why=outcome)
            return
        await self._reply(account, number, sender, text)

    async def _reply(self, account: str, number: str, sender: str, text: str) -> None:
        """Answer the handset from the sender it wrote to (a transactional message)."""
        try:
            text = fit_auto_text(text)
            await self._acceptor.accept(account, SubmitInput(to=number, sender=sender, text=text,
                                                             message_class="transactional",
                                                             auto_reply=True))
        except ApiError as exc:
            log.warning("mo_reply_refused", account=account, code=exc.code.value)


class AutoReplies:
    """Remembers the automatic answers sent, so each kind goes to a number at most once per
    ``interval`` seconds (per account). In memory: a restart forgets, which costs at most one
    more answer per number; the table is bounded by dropping expired entries when it is full."""

    def __init__(self, interval: float, max_entries: int = 100_000) -> None:
        self.interval = interval
        self._max = max_entries
        self._sent: dict[tuple[str, str, str], float] = {}

    def __len__(self) -> int:
        """How many (account, number, kind) it remembers now: at most max_entries."""
        return len(self._sent)

    def allow(self, account: str, number: str, kind: str, now: float) -> bool:
        key = (account, number, kind)
        last = self._sent.get(key)
        if last is not None and now - last < self.interval:
            return False
        if len(self._sent) >= self._max:
            self._sent = {k: t for k, t in self._sent.items() if now - t < self.interval}
            if len(self._sent) >= self._max:  # all recent: forget the oldest half
                keep = sorted(self._sent.items(), key=lambda kv: kv[1])[self._max // 2:]
                self._sent = dict(keep)
        self._sent[key] = now
        return True


# Text of common auto-responders ("out of office" style answers from handsets or operators).
_AUTOMATED_MARKERS: Final = ("auto-reply", "autoreply", "auto reply", "automatic reply",
                             "автоответ", "автоматический ответ", "përgjigje automatike",
                             "automatski odgovor")
_ESM_ACK_BITS: Final = 0x18  # deliver_sm esm_class: SME delivery / manual user acknowledgement


def looks_automated(pdu: Any, text: str, profile: CountryProfile | None) -> bool:
    """Whether an MO comes from a machine: never answer it with another automatic text.

    A machine: a sender that is not a phone number (alphanumeric TON 5, or not digits), an
    SME acknowledgement (esm_class bits 3-4), a text that says it is an automatic reply, or an
    echo of one of our own automatic texts.
    """
    source = pdu.source.number.lstrip("+")
    if int(getattr(pdu.source, "ton", 1)) == 5 or not source.isdigit():
        return True
    if int(getattr(pdu, "esm_class", 0) or 0) & _ESM_ACK_BITS:
        return True
    folded = text.casefold()
    if any(marker in folded for marker in _AUTOMATED_MARKERS):
        return True
    if profile is not None:
        ours = {profile.optout.confirmation.casefold().strip(),
                profile.optout.help_text.casefold().strip()} - {""}
        if folded.strip() in ours:
            return True
    return False

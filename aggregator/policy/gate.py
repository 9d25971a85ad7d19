"""The country-rules stage of the accept path: looks up what the rules need (opt-outs, marketing
history) and turns the pure engine's verdict into accept, schedule or a refusal."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime

from aggregator import metrics
from aggregator.config import AccountConfig
from aggregator.log import get_logger
from aggregator.model import ApiError, ErrorCode, Message, MessageStatus
from aggregator.policy.classes import class_for_http
from aggregator.policy.profiles import CountryProfile
from aggregator.policy.rules import Defer, PolicyCode, PolicyInput, Reject, evaluate, optout_blocks
from aggregator.store.base import OPTOUT_MARKETING, Store
from aggregator.store.optout_reads import LocalOptouts, OptoutsBusy

MONTH = 30 * 24 * 3600.0
# The reference of the daemon's own answers to a handset's keyword (opt-out confirmations, help
# texts): an opt-out does not stop them, at accept or at send time. Refused from clients.
AUTO_REPLY_REFERENCE = "smsagg:auto_reply"

log = get_logger("smsagg.policy")


def _count_optout_refusal(message: Message, scope: str, stage: str) -> None:
    """A message refused by an opt-out (at accept or at send): counted and logged by scope."""
    metrics.optout_refusals.labels(scope, message.message_class, stage).inc()
    log.info("optout_refused", account=message.account, message_class=message.message_class,
             scope=scope, stage=stage)


class PolicyGate:
    def __init__(
        self,
        profiles: Mapping[str, CountryProfile],
        accounts: Mapping[str, AccountConfig],
        store: Store,
        clock: Callable[[], float] = time.time,
        optouts: LocalOptouts | None = None,
    ) -> None:
        """`optouts`: an ingress worker's own reader of the opt-outs, asked before `store`."""
        self.profiles = profiles
        self._accounts = accounts
        self._store = store
        self._clock = clock
        self._optouts = optouts

    async def _optout_scope(self, account: str, number: str) -> str | None:
        if self._optouts is not None:
            try:
                return self._optouts.scope(account, number)
            except OptoutsBusy:
                pass  # the daemon's store waits for it
        return await self._store.optout_scope(account, number)

    @staticmethod
    def _send_time(message: Message, now: float) -> float:
        """When the rules are judged: now, or the client's send_at for a message it scheduled
        (the accept path makes those SCHEDULED with send_at as their due time)."""
        if message.status is MessageStatus.SCHEDULED:
            return max(now, message.next_attempt_at)
        return now

    def confirms_api_optouts(self, account: str) -> bool:
        config = self._accounts.get(account)
        return config is not None and config.confirm_api_optouts

    def api_optout_confirmation(self, account: str, region: str | None) -> tuple[str, str] | None:
        """(sender, text) confirming an opt-out the account added through the API, or None
        when the account does not confirm them or the country has no confirmation text."""
        config = self._accounts.get(account)
        if config is None or not config.confirm_api_optouts or config.optout_sender is None:
            return None
        profile = self.profiles.get(region) if region else None
        if profile is None or not profile.optout.confirmation:
            return None
        return config.optout_sender, profile.optout.confirmation

    def default_class(self, account: str) -> str:
        """The class of a message that names none (policy/classes.py)."""
        return class_for_http(self._accounts.get(account), None)

    async def apply(self, message: Message, number_type: str,
                    auto_reply: bool = False) -> Message:
        """The message as it may be stored (possibly scheduled); raises ApiError if refused.
        `auto_reply`: an answer to the recipient's own keyword, which its opt-out allows."""
        account = self._accounts.get(message.account)
        if account is None:  # removed by a configuration reload while this request was under way
            raise ApiError(401, ErrorCode.UNAUTHORIZED, "the account no longer exists")
        profile = self.profiles.get(message.region) if message.region else None
        marketing = message.message_class == "marketing"
        # Every class: an opt-out of scope "all" stops transactional too (one primary-key read).
        scope = None if auto_reply else await self._optout_scope(message.account, message.to)
        blocked = optout_blocks(scope, message.message_class,
                                account.block_transactional_to_opted_out)
        if profile is None and not blocked and number_type != "fixed_line":
            return message  # the common case for transactional traffic: one store read
        count, last = 0, None
        now = self._clock()
        consent = True
        if marketing and profile is not None and profile.optout.consent_required_for_marketing:
            consent = await self._store.has_consent(message.account, message.to, "marketing")
        if marketing and profile is not None:
            count, last_ts = await self._store.marketing_history(message.account, message.to,
                                                                 now - MONTH)
            last = datetime.fromtimestamp(last_ts, UTC) if last_ts is not None else None
        verdict = evaluate(profile, PolicyInput(
            region=message.region,
            number_type=number_type,
            message_class=message.message_class,
            sender=message.sender.value,
            sender_kind=message.sender.kind.value,
            text=message.text,
            account=message.account,
            registered_senders=account.registered_senders,
            opted_out=scope is not None,
            optout_scope=scope or OPTOUT_MARKETING,
            block_transactional_to_opted_out=account.block_transactional_to_opted_out,
            marketing_sent_last_30d=count,
            last_marketing_at=last,
            cleared_categories=account.cleared_categories,
            has_consent=consent,
        ), datetime.fromtimestamp(self._send_time(message, now), UTC))
        if isinstance(verdict, Reject):
            metrics.messages_rejected.labels(verdict.code).inc()
            if verdict.code == PolicyCode.OPTED_OUT:
                _count_optout_refusal(message, scope or OPTOUT_MARKETING, "accept")
            raise ApiError(verdict.status, ErrorCode(verdict.code), verdict.message)
        if isinstance(verdict, Defer):
            metrics.messages_scheduled.inc()
            return replace(message, status=MessageStatus.SCHEDULED,
                           next_attempt_at=verdict.until_utc.timestamp())
        return message

"""How a message's class (transactional or marketing) is decided; the one place that does it.

The class decides which country rules apply (quiet hours, frequency caps and, unless the account
blocks transactional messages to opted-out recipients, opt-outs are for marketing only), so an
account must not be able to send marketing as transactional by leaving the class out:

1. HTTP: the request's ``class`` field; without it, the account's ``default_class``.
2. SMPP: the account's ``service_types`` entry for the submit_sm ``service_type``; without one,
   the account's ``smpp_class``; without that, its ``default_class``.
3. Replies the daemon itself sends (opt-out confirmations, help texts) are transactional.

``default_class`` is "transactional" unless the account's configuration says otherwise.
"""

from __future__ import annotations

from aggregator import metrics
from aggregator.config import AccountConfig

__all__ = ["class_for_http", "class_for_smpp"]


def class_for_http(account: AccountConfig | None, given: str | None) -> str:
    if given is not None:
        metrics.child(metrics.message_class_decided, "request").inc()
        return given
    metrics.child(metrics.message_class_decided, "default_class").inc()
    return account.default_class if account is not None else "transactional"


def class_for_smpp(account: AccountConfig, service_type: str) -> str:
    mapped = account.service_types.get(service_type) if service_type else None
    if mapped is not None:
        metrics.child(metrics.message_class_decided, "service_type").inc()
        return mapped
    if account.smpp_class is not None:
        metrics.child(metrics.message_class_decided, "smpp_class").inc()
        return account.smpp_class
    metrics.child(metrics.message_class_decided, "default_class").inc()
    return account.default_class

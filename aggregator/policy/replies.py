"""The texts smsagg sends by itself (opt-out confirmations, help texts): how they are fitted to
one SMS, and the confirmation for an opt-out added through the API."""

from __future__ import annotations

from aggregator import metrics
from aggregator.ingress.accept import Acceptor, SubmitInput
from aggregator.log import get_logger
from aggregator.model import ApiError, Encoding
from aggregator.numbers import NumberError, parse_destination
from aggregator.text import choose_encoding, count_segments, transliterate

__all__ = ["confirm_api_optout", "fit_auto_text"]

log = get_logger("smsagg.policy")


def fit_auto_text(text: str) -> str:
    """``text``, or its GSM-7 transliteration when that makes a multi-part UCS-2 text fit one
    SMS (Albanian ë/ç, Serbian ć/š... folded); Cyrillic has no GSM-7 form and stays."""
    encoding = choose_encoding(text)
    if count_segments(text, encoding) == 1:
        return text
    folded = transliterate(text)
    if choose_encoding(folded) is Encoding.GSM7 and count_segments(folded, Encoding.GSM7) == 1:
        metrics.auto_texts_transliterated.inc()
        return folded
    return text


async def confirm_api_optout(acceptor: Acceptor, account: str, number: str) -> str | None:
    """Send the country's opt-out confirmation for an opt-out added through the API, if the
    account asks for that: "sent", "refused" (the accept path said no, e.g. no route), or
    "no_text" (no confirmation text for the number's country); None: not asked for."""
    policy = acceptor.policy
    if policy is None or not policy.confirms_api_optouts(account):
        return None
    try:
        region = parse_destination(number).region
    except NumberError:
        region = None
    found = policy.api_optout_confirmation(account, region)
    if found is None:
        metrics.api_optout_confirmations.labels("no_text").inc()
        return "no_text"
    sender, text = found
    try:
        await acceptor.accept(account, SubmitInput(to=number, sender=sender,
                                                   text=fit_auto_text(text),
                                                   message_class="transactional",
                                                   auto_reply=True))
    except ApiError as exc:
        metrics.api_optout_confirmations.labels("refused").inc()
        log.warning("api_optout_confirmation_refused", account=account, code=exc.code.value)
        return "refused"
    metrics.api_optout_confirmations.labels("sent").inc()
    return "sent"

"""The deliver_sm PDUs an SMSC side sends: delivery receipts (the text form of SMPP 3.4
appendix B with the receipted_message_id and message_state TLVs) and mobile-originated
messages. The daemon's SMPP server sends them to its ESMEs and the simulated SMSC to the
daemon, from these builders."""

from __future__ import annotations

from typing import Any

from aiosmpplib import DeliverSm, OptionalParam, PhoneNumber

from aggregator.smpp.fields import MESSAGE_STATE, RECEIPTED_MESSAGE_ID
from aggregator.smpp.querysm import DELIVERED
from aggregator.timefmt import smpp_date

ESM_CLASS_RECEIPT = 0x04  # esm_class bits 5-2 = 0001: SMSC delivery receipt


def receipt_text(message_id: str, stat: str, delivered: bool, submitted_at: float,
                 done_at: float) -> str:
    """`id:... sub:001 dlvrd:... submit date:... done date:... stat:... err:... text:`."""
    return (
        f"id:{message_id} sub:001 dlvrd:{'001' if delivered else '000'}"
        f" submit date:{smpp_date(submitted_at)} done date:{smpp_date(done_at)}"
        f" stat:{stat} err:{'000' if delivered else '001'} text:"
    )


def receipt_pdu(message_id: str, stat: str, state: int, submitted_at: float, done_at: float,
                source: PhoneNumber, destination: PhoneNumber) -> Any:
    """The receipt of `message_id` with final `stat` (DELIVRD, UNDELIV, ...) and message_state
    `state`; `source` is the handset (the message's destination), `destination` its sender."""
    return DeliverSm(
        short_message=receipt_text(message_id, stat, state == DELIVERED, submitted_at, done_at),
        source=source,
        destination=destination,
        esm_class=ESM_CLASS_RECEIPT,
        registered_delivery=0,
        optional_params=[OptionalParam(RECEIPTED_MESSAGE_ID, message_id),
                         OptionalParam(MESSAGE_STATE, state)],
    )



def mo_pdu(text: str, source: PhoneNumber, destination: PhoneNumber) -> Any:
    """A handset's message: GSM 03.38 (data_coding 0) when the text fits it, else UCS-2 (8),
    as aiosmpplib chooses when no encoding is given."""
    return DeliverSm(
        short_message=text,
        source=source,
        destination=destination,
        esm_class=0x00,
        registered_delivery=0,
    )


__all__ = ["ESM_CLASS_RECEIPT", "mo_pdu", "receipt_pdu", "receipt_text"]

"""Messages cross the ingress-worker socket (ingress/rpc.py), and receipts and their results the
store writer process's (store/writer_process.py), as pickles: every field survives."""

from __future__ import annotations

import copy
import pickle
from dataclasses import MISSING, fields

from aggregator.model import (
    Encoding,
    FinalNotice,
    Message,
    MessageStatus,
    ReceiptUpdate,
    Sender,
    SenderKind,
)
from aggregator.store.base import AcceptResult, ReceiptResult


def _every_field_set() -> Message:
    return Message(
        id="0193a7b2c4d5e6f708192a3b4c5d6e7f", account="shop", to="+38344123456",
        sender=Sender("+38344999888", SenderKind.INTERNATIONAL), text="Përshëndetje €",
        encoding=Encoding.UCS2, segments=3, concat_ref=201, created_at=1_700_000_000.25,
        status=MessageStatus.SUBMITTED, callback_url="https://cb.example/hook",
        reference="order-7", region="XK", message_class="marketing", receipt_mode=2,
        provider="vala", error="throttled", submitted_at=1_700_000_001.5,
        done_at=1_700_000_002.75, attempts=4, next_attempt_at=1_700_000_010.0,
        expires_at=1_700_086_400.0, done_segments=frozenset({1, 3}),
    )


def test_the_sample_sets_every_field_away_from_its_default() -> None:
    # A field added to Message without a value here would not be checked by the round trip.
    m = _every_field_set()
    for f in fields(Message):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        assert getattr(m, f.name) != default, f.name


def test_a_message_round_trips_through_pickle_with_every_field() -> None:
    m = _every_field_set()
    back = pickle.loads(pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL))
    assert back == m
    assert type(back.status) is MessageStatus and type(back.encoding) is Encoding
    assert type(back.sender.kind) is SenderKind


def test_an_accept_result_round_trips_and_copies_are_independent() -> None:
    result = AcceptResult(_every_field_set(), created=False)
    assert pickle.loads(pickle.dumps(result)) == result
    m = _every_field_set()
    clone = copy.copy(m)  # copy goes through __reduce__ too
    assert clone == m and clone is not m
    clone.status = MessageStatus.DELIVERED
    assert m.status is MessageStatus.SUBMITTED


def test_a_receipt_result_round_trips_with_every_field() -> None:
    update = ReceiptUpdate("vala", "abc-1", MessageStatus.UNDELIVERABLE, "err:001", 1.5)
    notice = FinalNotice("m1", "shop", MessageStatus.UNDELIVERABLE, "order-7", "err:001", 2.5,
                         "https://cb.example/hook", 1.25, "vala")
    result = ReceiptResult(update, matched=True, message_id="m1", final=notice)
    # Every field away from the others, so a field the reduce drops or swaps shows.
    for obj in (update, notice):
        values = [getattr(obj, f.name) for f in fields(obj)]
        assert len({repr(v) for v in values}) == len(values)

    back = pickle.loads(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))

    assert back == result
    assert type(back.update.status) is MessageStatus and back.final is not None
    assert type(back.final.status) is MessageStatus

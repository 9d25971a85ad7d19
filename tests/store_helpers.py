"""Messages, submits and receipts for store tests, shared by the unit and backend tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aggregator.model import (
    Encoding,
    Message,
    MessageStatus,
    ReceiptUpdate,
    SegmentSubmit,
    Sender,
    SenderKind,
)
from aggregator.store.sqlite import SqliteStore

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
PROVIDER = "opA"

_ids = iter(range(1, 1_000_000))


@asynccontextmanager
async def opened_sqlite(path: Path, **options: Any) -> AsyncIterator[SqliteStore]:
    """A SqliteStore at path (options as its constructor's), open, closed at the end."""
    store = SqliteStore(str(path), **options)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def make_message(
    *,
    message_id: str | None = None,
    account: str = "shop",
    segments: int = 1,
    created_at: float = NOW,
    next_attempt_at: float = 0.0,
    status: MessageStatus = MessageStatus.ACCEPTED,
    callback_url: str | None = None,
    reference: str | None = None,
) -> Message:
    return Message(
        id=message_id or f"msg{next(_ids):05d}",
        account=account,
        to="+38344123456",
        sender=Sender("Shop", SenderKind.ALPHANUMERIC),
        text="hello",
        encoding=Encoding.GSM7,
        segments=segments,
        concat_ref=7,
        created_at=created_at,
        status=status,
        callback_url=callback_url,
        reference=reference,
        next_attempt_at=next_attempt_at,
        expires_at=created_at + 86_400,
    )


def parts(message: Message, *seqs: int) -> list[SegmentSubmit]:
    return [SegmentSubmit(seq, f"{message.id}-p{seq}") for seq in seqs]


def receipt(
    message: Message,
    seq: int,
    status: MessageStatus = MessageStatus.DELIVERED,
    *,
    at: float = NOW + 10,
    error: str | None = None,
    provider: str = PROVIDER,
) -> ReceiptUpdate:
    return ReceiptUpdate(provider, f"{message.id}-p{seq}", status, error, at)


async def submitted(store: SqliteStore, message: Message, *, at: float = NOW + 1) -> None:
    """Accept, claim and record every segment of `message` as submitted to PROVIDER."""
    await store.accept(message, None)
    claimed = await store.claim_due(NOW, 100)
    assert [m.id for m in claimed] == [message.id]
    await store.record_submitted(
        message.id, PROVIDER, parts(message, *range(1, message.segments + 1)), at
    )

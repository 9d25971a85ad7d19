"""PostgreSQL: the send-time opt-out check of just-claimed messages is answered from the
opt-out scopes the claim statement read with them (no round trip), and read again when an
opt-out changed here since, when marketing history is needed, or after LATER_TTL."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from aggregator.store import postgres
from aggregator.store.postgres import PostgresStore
from tests.helpers import registry_value
from tests.store_helpers import NOW, make_message

REUSED = "smsagg_store_claim_scopes_reused_total"
OPTED = "+38344000001"
CLEAR = "+38344000002"


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_dsn, instance="a")
    await s.open()
    await s.add_optout("shop", OPTED, "test", NOW, "all")
    for n, to in enumerate((OPTED, CLEAR)):
        await s.accept(dataclasses.replace(make_message(message_id=f"m{n}"), to=to), None)
    yield s
    await s.close()


async def test_claimed_messages_opt_outs_come_with_the_claim(store: PostgresStore,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.setattr(postgres, "LATER_TTL", 60.0)  # a slow machine stays within it
    claimed = await store.claim_due(NOW + 1, 10)
    before = registry_value(REUSED)

    opted, sent = await store.send_rules_state([("shop", OPTED), ("shop", CLEAR)], [], NOW)

    assert len(claimed) == 2
    assert opted == {("shop", OPTED): "all"} and sent == {}
    assert registry_value(REUSED) - before == 1


async def test_an_opt_out_made_after_the_claim_is_read_again(
        store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "LATER_TTL", 60.0)
    await store.claim_due(NOW + 1, 10)
    await store.add_optout("shop", CLEAR, "test", NOW, "marketing")
    before = registry_value(REUSED)

    opted, _ = await store.send_rules_state([("shop", OPTED), ("shop", CLEAR)], [], NOW)

    assert opted == {("shop", OPTED): "all", ("shop", CLEAR): "marketing"}
    assert registry_value(REUSED) == before


async def test_keys_not_claimed_marketing_or_an_old_claim_are_read_again(
        store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres, "LATER_TTL", 60.0)
    await store.claim_due(NOW + 1, 10)
    before = registry_value(REUSED)

    other, _ = await store.send_rules_state([("shop", "+38344000003")], [], NOW)
    marketing, _ = await store.send_rules_state([("shop", OPTED)], [("shop", OPTED)], NOW)
    monkeypatch.setattr(postgres, "LATER_TTL", 0.0)
    old, _ = await store.send_rules_state([("shop", OPTED)], [], NOW)

    assert other == {} and marketing == old == {("shop", OPTED): "all"}
    assert registry_value(REUSED) == before

"""[messages] claim_gather_ms: at paced rates the dispatcher's next claim waits for company, so
one claim takes the messages of several accepts; after a quiet spell a message is claimed at
once; 0 claims on every accept."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.helpers import registry_value, running, wait_for

PACED = 8  # messages accepted one after the other, SPACING apart
SPACING = 0.02


def _claims() -> tuple[float, float]:
    return (registry_value("smsagg_dispatch_claims_total"),
            registry_value("smsagg_dispatch_claimed_total", account="shop"))


async def _paced_claims(tmp_path: Path, gather_ms: float) -> float:
    """Claims made for PACED messages accepted SPACING apart."""
    async with running(tmp_path, messages={"claim_gather_ms": gather_ms}) as run:
        claims, claimed = _claims()
        for i in range(PACED):
            status, _ = await run.post({"to": f"+3834412{i:04d}", "from": "ACME",
                                        "text": "paced"})
            assert status == 202
            await asyncio.sleep(SPACING)
        await wait_for(lambda: _claims()[1] >= claimed + PACED, what="all claimed")
        return _claims()[0] - claims


async def test_paced_accepts_share_claims(tmp_path: Path) -> None:
    assert await _paced_claims(tmp_path / "gather", 500) <= 3


async def test_without_gathering_each_accept_is_claimed_alone(tmp_path: Path) -> None:
    assert await _paced_claims(tmp_path / "none", 0) >= PACED - 2


async def test_an_idle_look_does_not_hold_the_next_message(tmp_path: Path) -> None:
    """The dispatcher looks at the store every second while idle (a claim that takes
    nothing); a message accepted just after such a look is claimed at once, not a gather
    later."""
    async with running(tmp_path, messages={"claim_gather_ms": 1000}) as run:
        store = run.app.store
        claim_due = store.claim_due
        empty_claims: list[float] = []

        async def recording(*args: Any, **kwargs: Any) -> Any:  # the real claim, timed
            batch = await claim_due(*args, **kwargs)
            if not batch:
                empty_claims.append(time.monotonic())
            return batch

        store.claim_due = recording  # type: ignore[method-assign]
        await wait_for(lambda: bool(empty_claims), what="an idle look at the store")
        claimed = _claims()[1]
        start = time.monotonic()
        status, _ = await run.post({"to": "+38344120000", "from": "ACME", "text": "alone"})
        assert status == 202
        await wait_for(lambda: _claims()[1] > claimed, what="claimed")
        assert time.monotonic() - start < 0.5  # not held for the 1 s gather

"""A run with 5 % of the receipts lost by the SMSC: every message still ends final. With a
provider that answers query_sm the lost ones are found by asking; with one that does not, they
end "unknown" after receipt_timeout. Prints the outcome counts (pytest -s)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from simulator.smsc import SmscProfile
from tests.helpers import AUTH, Running, registry_value, running

N = 1000
LOST = 0.05


def _queries() -> dict[str, float]:
    return {o: registry_value("smsagg_receipt_queries_total", provider="sim", outcome=o)
            for o in ("final", "pending", "not_found", "error", "nack", "timeout", "no_bind")}


async def _send(run: Running, n: int) -> None:
    for start in range(0, n, 500):
        batch = [{"to": f"+3834412{i:04d}", "from": "Shop", "text": f"hello {i}"}
                 for i in range(start, min(n, start + 500))]
        async with run.http.post(f"{run.base}/v1/messages/batch", headers=AUTH,
                                 json={"messages": batch}) as r:
            body = await r.json()
            assert r.status == 200 and all(x["status"] == 202 for x in body["results"])


async def _lost_run(tmp_path: Path, answer_query_sm: bool) -> dict[str, Any]:
    queries = _queries()
    backoffs = registry_value("smsagg_receipt_query_backoffs_total", provider="sim")
    timeouts = registry_value("smsagg_receipt_timeouts_total", provider="sim")
    profile = SmscProfile(lose_receipts=LOST, seed=16, answer_query_sm=answer_query_sm,
                          receipt_delay=0.05)
    async with running(tmp_path, profile, extra_provider={"query_after": 0.5},
                       messages={"receipt_timeout": 3.0}) as run:
        await _send(run, N)
        counts: dict[str, int] = {}

        async def settled() -> bool:
            counts.update(await run.app.store.count_by_status())
            return sum(counts.get(s, 0) for s in ("delivered", "unknown")) == N

        deadline = time.monotonic() + 60.0
        while not await settled():
            assert time.monotonic() < deadline, counts
            await asyncio.sleep(0.1)
        smsc = run.smsc
        after = _queries()
        return {
            "query_sm answered": answer_query_sm,
            "messages": N,
            "receipts_lost_at_smsc": smsc.receipts_lost,
            "receipts_sent_by_smsc": smsc.receipts_sent,
            "query_sm_received_by_smsc": smsc.queries_total,
            "queries_by_outcome": {k: int(after[k] - queries[k]) for k in after
                                   if after[k] - queries[k]},
            "query_backoffs": int(registry_value("smsagg_receipt_query_backoffs_total",
                                                 provider="sim") - backoffs),
            "final_delivered": counts.get("delivered", 0),
            "final_unknown": counts.get("unknown", 0),
            "receipt_timeouts_metric": int(registry_value("smsagg_receipt_timeouts_total",
                                                          provider="sim") - timeouts),
        }


@pytest.mark.parametrize("answer_query_sm", [True, False], ids=["query_sm", "no_query_sm"])
async def test_five_percent_receipts_lost(tmp_path: Path, answer_query_sm: bool) -> None:
    result = await _lost_run(tmp_path, answer_query_sm)
    print("\nlost-receipts run:", json.dumps(result))
    lost = result["receipts_lost_at_smsc"]
    assert 0.02 * N < lost < 0.08 * N
    assert result["final_delivered"] + result["final_unknown"] == N
    if answer_query_sm:
        # Every lost receipt is found by query_sm; nothing ends unknown.
        assert result["final_unknown"] == 0
        assert result["queries_by_outcome"].get("final") == lost
        assert result["query_backoffs"] == 0
    else:
        assert result["final_unknown"] == lost == result["receipt_timeouts_metric"]
        assert result["query_backoffs"] == 1

"""Limits: a stuck callback receiver does not slow the pipeline; upstream SMPP sessions are
capped per account and in total; every in-memory queue has its bound and depth in metrics."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from aggregator.smpp.session import BindMode
from aggregator.smpp.transport import BindError, SmppConnection, open_client
from tests.callback_helpers import stuck_receiver
from tests.helpers import (
    DEADLINE,
    Running,
    Samples,
    metric_samples,
    metric_value,
    running,
    wait_for,
)

MESSAGES = 200


async def scrape(r: Running) -> Samples:
    async with r.http.get(f"{r.base}/metrics") as resp:
        assert resp.status == 200
        return metric_samples(await resp.text())


@dataclass
class Burst:
    accept_seconds: list[float]
    all_delivered_after: float


async def burst(r: Running, first: int, n: int, callback_url: str | None) -> Burst:
    """Post n messages (20 at a time), then poll until every one is delivered."""
    started = time.monotonic()
    latencies: list[float] = []
    ids: list[str] = []
    gate = asyncio.Semaphore(20)

    async def one(i: int) -> None:
        body = {"to": f"+38344{first + i}", "from": "ACME", "text": f"m{i}"}
        if callback_url is not None:
            body["callback_url"] = callback_url
        async with gate:
            t0 = time.monotonic()
            status, data = await r.post(body)
            latencies.append(time.monotonic() - t0)
        assert status == 202, data
        ids.append(str(data["id"]))

    await asyncio.gather(*(one(i) for i in range(n)))
    pending = set(ids)
    deadline = time.monotonic() + 60
    while pending:
        assert time.monotonic() < deadline, f"{len(pending)} of {n} not delivered"
        views = await asyncio.gather(*(r.get(mid) for mid in sorted(pending)[:50]))
        for _, view in views:
            if view["status"] == "delivered":
                pending.discard(view["id"])
        if pending:
            await asyncio.sleep(0.02)
    return Burst(sorted(latencies), time.monotonic() - started)


def p95(values: list[float]) -> float:
    return values[int(len(values) * 0.95) - 1]


async def test_stuck_callback_receiver_does_not_slow_the_pipeline(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with running(tmp_path / "a", metrics={"listen": "127.0.0.1:0"}) as r:
        await burst(r, 100000, 20, None)  # warm up connections and code paths
        baseline = await burst(r, 200000, MESSAGES, None)

    async with running(tmp_path / "b") as r, stuck_receiver() as stuck:
        concurrency = r.app.config.callbacks.concurrency
        timeout = r.app.config.callbacks.timeout
        await burst(r, 100000, 20, None)
        slow = await burst(r, 200000, MESSAGES, stuck.url)
        # Every callback slot is now held by the receiver that never answers ...
        await wait_for(lambda: stuck.connections >= concurrency, what="callbacks to connect")
        snap = await scrape(r)
        assert metric_value(snap, "smsagg_buffer_depth", buffer="callbacks") == concurrency
        assert metric_value(snap, "smsagg_buffer_bound", buffer="callbacks") == concurrency
        # ... and accepts still get their 202 quickly, and the next messages are delivered.
        more = await burst(r, 300000, 50, stuck.url)
        assert stuck.connections <= concurrency + 2 * concurrency  # bounded: no flood
        # Stopping does not wait for the receiver either (it would take a timeout per slot).
        t0 = time.monotonic()
        await asyncio.wait_for(r.app.callbacks.stop(), timeout)
        assert time.monotonic() - t0 < 1.0
    # Deliveries do not wait for callbacks: the whole burst takes about as long as without
    # them, and far less than one callback timeout per concurrency slot would.
    limit = max(3 * baseline.all_delivered_after, baseline.all_delivered_after + 2.0)
    assert slow.all_delivered_after < min(limit, timeout * MESSAGES / concurrency), (
        slow.all_delivered_after, baseline.all_delivered_after)
    assert more.all_delivered_after < limit, (more.all_delivered_after, limit)
    accept_limit = max(3 * p95(baseline.accept_seconds), 0.5)
    assert p95(slow.accept_seconds) < accept_limit, (slow.accept_seconds[-5:], accept_limit)
    assert p95(more.accept_seconds) < accept_limit, (more.accept_seconds[-5:], accept_limit)


# --------------------------------------------------------------------------- SMPP sessions

SHOP = {"system_id": "shop", "password": "secret", "max_binds": 2}


async def bind(r: Running, system_id: str = "shop", password: str = "secret") -> SmppConnection:
    assert r.app.smpp is not None
    return await open_client("127.0.0.1", r.app.smpp.port, mode=BindMode.TRANSCEIVER,
                             system_id=system_id, password=password, window=10)


async def test_sessions_are_limited_per_account_and_in_total(tmp_path: Path) -> None:
    async with running(tmp_path, smpp={"max_sessions": 3}, shop=SHOP,
                       bank={"system_id": "bank", "password": "secret2", "max_binds": 5},
                       prefixes=("+383",)) as r:
        snap = before = await scrape(r)
        assert metric_value(snap, "smsagg_smpp_sessions_max") == 3
        assert metric_value(snap, "smsagg_smpp_account_sessions_max", account="shop") == 2
        assert metric_value(snap, "smsagg_smpp_account_sessions_max", account="bank") == 5
        assert metric_value(snap, "smsagg_smpp_sessions", account="shop") == 0

        shop = [await bind(r), await bind(r)]
        with pytest.raises(BindError) as err:
            await bind(r)  # shop has max_binds = 2
        assert err.value.status == 0x0D
        bank = await bind(r, "bank", "secret2")
        with pytest.raises(BindError) as err:
            await bind(r, "bank", "secret2")  # 3 sessions bound in total
        assert err.value.status == 0x0D
        snap = await scrape(r)
        assert metric_value(snap, "smsagg_smpp_sessions", account="shop") == 2
        assert metric_value(snap, "smsagg_smpp_sessions", account="bank") == 1
        for result in ("account_limit", "total_limit"):
            counted = metric_value(snap, "smsagg_smpp_binds_total", result=result) or 0.0
            earlier = metric_value(before, "smsagg_smpp_binds_total", result=result) or 0
            assert counted - earlier == 1

        # A session that goes away frees its place, for its account and in total.
        await shop[0].unbind(DEADLINE)
        assert r.app.smpp is not None
        smpp = r.app.smpp
        await wait_for(lambda: smpp.sessions["shop"] == 1, what="shop session gone")
        again = await bind(r, "bank", "secret2")
        snap = await scrape(r)
        assert metric_value(snap, "smsagg_smpp_sessions", account="bank") == 2
        for conn in (shop[1], bank, again):
            await conn.unbind(DEADLINE)


async def test_binds_racing_for_the_last_place_get_exactly_the_limit(tmp_path: Path) -> None:
    async with running(tmp_path, smpp={"max_sessions": 50}, shop=SHOP,
                       prefixes=("+383",)) as r:
        results = await asyncio.gather(*(bind(r) for _ in range(6)), return_exceptions=True)
        bound = [c for c in results if isinstance(c, SmppConnection)]
        refused = [e for e in results if isinstance(e, BindError)]
        assert len(bound) == 2 and len(refused) == 4, results
        for conn in bound:
            await conn.unbind(DEADLINE)


async def test_every_queue_bound_and_depth_is_in_metrics(tmp_path: Path) -> None:
    async with running(tmp_path, smpp={"max_pending_parts": 123, "window": 7,
                                       "max_sessions": 9},
                       store_opts={"max_pending": 4567}, shop=SHOP) as r:
        snap = await scrape(r)
        bounds = {
            "store_pending": 4567,
            "store_writes": r.app.store.max_writes_queued,
            "dispatch": r.app.dispatcher.max_in_flight,
            "callbacks": r.app.config.callbacks.concurrency,
            "reassembly": 123,
            "smpp_submits": 7 * 9,
            "smpp_receipts": 7 * 9,
            "provider_delivers": r.app.delivers.max_delivers,
        }
        for buffer, bound in bounds.items():
            assert metric_value(snap, "smsagg_buffer_bound", buffer=buffer) == bound, buffer
            depth = metric_value(snap, "smsagg_buffer_depth", buffer=buffer)
            assert depth is not None and 0 <= depth <= bound, (buffer, depth)
        assert metric_value(snap, "smsagg_queue_bound") == 4567


async def test_an_esme_beyond_the_window_is_throttled(tmp_path: Path) -> None:
    """submit_sm being accepted per session are bounded by [smpp] window: more at once get
    ESME_RTHROTTLED instead of piling up."""
    async with running(tmp_path, smpp={"window": 2}, shop={**SHOP, "max_binds": 1},
                       prefixes=("+383",)) as r:
        from tests.smpp_helpers import submit

        before = metric_value(await scrape(r), "smsagg_smpp_submits_total", result="window_full")
        conn = await bind(r)
        conn.session.window = 40  # this ESME does not wait for answers
        futures = [conn.request(submit(f"3834412{i:04d}", f"w{i}")) for i in range(40)]
        answers = await asyncio.wait_for(asyncio.gather(*futures), DEADLINE)
        statuses = [int(a.command_status) for a in answers]
        assert set(statuses) <= {0x00, 0x58}, statuses
        assert statuses.count(0x58) > 0 and statuses.count(0x00) >= 2, statuses
        snap = await scrape(r)
        after = metric_value(snap, "smsagg_smpp_submits_total", result="window_full")
        assert (after or 0) - (before or 0) == statuses.count(0x58)
        await conn.unbind(DEADLINE)


async def test_receipts_beyond_the_deliver_bound_are_throttled(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        before = metric_value(await scrape(r), "smsagg_receipts_total", provider="sim",
                        status="throttled") or 0.0
        r.app.delivers.max_delivers = 0  # as if that many deliver_sm were being handled already
        status, body = await r.post({"to": "+38344123456", "from": "ACME", "text": "t"})
        assert status == 202
        await r.wait_status(body["id"], {"submitted"})
        await r.smsc.wait_until(lambda: r.smsc.receipts_failed + r.smsc.receipts_acked > 0,
                                DEADLINE)
        assert r.smsc.receipts_acked == 0  # every attempt was answered ESME_RTHROTTLED
        after = metric_value(await scrape(r), "smsagg_receipts_total", provider="sim",
                       status="throttled") or 0.0
        assert after > before
        _, view = await r.get(body["id"])
        assert view["status"] == "submitted"

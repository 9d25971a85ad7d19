"""Routes over several providers, end to end against simulated operators: failover, breaker,
throttling, weighted split, and the window under all of them."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from aggregator.app import App
from aggregator.config import parse_config
from aggregator.outbound.health import BreakerState
from simulator.smsc import Smsc, SmscProfile
from tests.helpers import AUTH, DEADLINE, registry_value, wait_for

WINDOW = 5
BINDS = 2


@dataclass
class TwoOperators:
    app: App
    a: Smsc
    b: Smsc
    http: aiohttp.ClientSession
    base: str

    async def post(self, i: int, **extra: Any) -> str:
        body = {"to": f"+38344{600000 + i}", "from": "ACME", "text": f"f{i}", **extra}
        async with self.http.post(f"{self.base}/v1/messages", json=body) as r:
            data = await r.json()
            assert r.status == 202, data
            return str(data["id"])

    async def post_many(self, n: int, start: int = 0) -> list[str]:
        return list(await asyncio.gather(*(self.post(start + i) for i in range(n))))

    async def statuses(self, ids: list[str]) -> Counter[str]:
        async def one(mid: str) -> str:
            async with self.http.get(f"{self.base}/v1/messages/{mid}") as r:
                return str((await r.json())["status"])

        return Counter(await asyncio.gather(*(one(m) for m in ids)))

    async def wait_delivered(self, ids: list[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while (counts := await self.statuses(ids))["delivered"] < len(ids):
            assert time.monotonic() < deadline, f"not all delivered: {counts}"
            await asyncio.sleep(0.1)

    def max_outstanding(self) -> int:
        return max([s.max_outstanding for s in self.a.bind_stats.values()]
                   + [s.max_outstanding for s in self.b.bind_stats.values()] + [0])


def config(tmp_path: Path, a_port: int, b_port: int, route: dict[str, Any],
           a_opts: dict[str, Any] | None = None) -> dict[str, Any]:
    def provider(name: str, port: int, opts: dict[str, Any] | None) -> dict[str, Any]:
        return {"name": name, "host": "127.0.0.1", "port": port, "system_id": "smsagg",
                "password": "pw", "binds": BINDS, "window": WINDOW, "max_tps": 400,
                "reconnect_min": 0.05, "reconnect_max": 0.2, "response_timeout": 1.0,
                "breaker_failures": 3, "breaker_cooldown": 0.5, **(opts or {})}

    return {
        "http": {"listen": "127.0.0.1:0"},
        "store": {"path": str(tmp_path / "smsagg.db")},
        "messages": {"retry_min": 0.05, "retry_max": 0.5},
        "accounts": [{"name": "shop", "api_key": "shop-key"}],
        "providers": [provider("A", a_port, a_opts), provider("B", b_port, None)],
        "routes": [{"prefixes": ["+383"], "providers": ["A", "B"], **route}],
    }


@asynccontextmanager
async def two_operators(
    tmp_path: Path,
    a_profile: SmscProfile | None = None,
    route: dict[str, Any] | None = None,
    a_opts: dict[str, Any] | None = None,
) -> AsyncIterator[TwoOperators]:
    a, b = Smsc(a_profile or SmscProfile()), Smsc(SmscProfile())
    await a.start()
    await b.start()
    app = App(parse_config(config(tmp_path, a.port, b.port, route or {}, a_opts), "<test>"))
    await app.start()
    http = aiohttp.ClientSession(headers=AUTH)
    run = TwoOperators(app, a, b, http, f"http://127.0.0.1:{app.http_port}")
    try:
        await wait_for(lambda: app.pools["B"].binds_up == BINDS, what="B bound")
        yield run
    finally:
        await http.close()
        await app.stop(drain_seconds=2.0)
        await run.a.stop()
        await run.b.stop()


def failovers(src: str, dst: str) -> float:
    return registry_value("smsagg_failovers_total", **{"from": src, "to": dst})


async def test_weighted_route_splits_three_to_one(tmp_path: Path) -> None:
    async with two_operators(tmp_path, route={"strategy": "weighted", "weights": [3, 1]}) as r:
        await wait_for(lambda: r.app.pools["A"].binds_up == BINDS, what="A bound")
        ids = await r.post_many(1000)
        await r.wait_delivered(ids)
        share_a = r.a.submits_total / (r.a.submits_total + r.b.submits_total)
        assert abs(share_a - 0.75) <= 0.03, share_a
        assert r.max_outstanding() <= WINDOW


async def test_provider_killed_mid_load_moves_traffic_to_the_other(tmp_path: Path) -> None:
    async with two_operators(tmp_path, SmscProfile(latency=0.05)) as r:
        await wait_for(lambda: r.app.pools["A"].binds_up == BINDS, what="A bound")
        before = failovers("A", "B")
        ids = await r.post_many(400)
        await r.a.wait_for_submits(40, DEADLINE)
        await r.a.stop()  # the operator's listener and links go away with submits in flight
        await r.wait_delivered(ids)
        assert (await r.statuses(ids)) == Counter({"delivered": len(ids)})
        seen = Counter(s.destination for s in [*r.a.received, *r.b.received])
        destinations = {f"38344{600000 + i}" for i in range(400)}
        assert destinations <= set(seen), "lost at the operators"
        duplicates = sum(n - 1 for n in seen.values() if n > 1)
        assert duplicates <= BINDS * WINDOW, duplicates
        assert r.b.submits_total > 0
        assert failovers("A", "B") > before
        assert r.max_outstanding() <= WINDOW
        print(f"\nkill-a-provider: accepted {len(ids)} delivered {len(ids)} lost 0 "
              f"duplicated {duplicates} (A saw {r.a.submits_total}, B saw {r.b.submits_total})")


async def test_throttling_operator_settles_near_its_rate(tmp_path: Path) -> None:
    # A takes 50/s; we would send 400/s. Nothing may fail and few answers may be throttled.
    async with two_operators(tmp_path, SmscProfile(max_tps=50),
                             route={"providers": ["A"]}) as r:
        await wait_for(lambda: r.app.pools["A"].binds_up == BINDS, what="A bound")
        started = time.monotonic()
        ids = await r.post_many(300)
        await r.wait_delivered(ids, timeout=60)
        elapsed = time.monotonic() - started
        rate = len(ids) / elapsed
        assert 30 <= rate <= 75, rate  # 50 in its first second (burst) then ~50/s
        assert r.a.throttled_total <= 0.15 * r.a.submits_total, (
            r.a.throttled_total, r.a.submits_total)
        assert r.max_outstanding() <= WINDOW


async def test_breaker_opens_then_half_opens_and_closes(tmp_path: Path) -> None:
    async with two_operators(tmp_path) as r:
        await wait_for(lambda: r.app.pools["A"].binds_up == BINDS, what="A bound")
        breaker = r.app.pools["A"].breaker
        port = r.a.port
        await r.a.stop()
        await wait_for(lambda: r.app.pools["A"].binds_up == 0, what="A down")
        ids = await r.post_many(20)
        await r.wait_delivered(ids)
        assert r.b.submits_total >= 20  # A had no bind: traffic went to B
        r.a = Smsc(SmscProfile(), port=port)
        await r.a.start()
        await wait_for(lambda: r.app.pools["A"].binds_up == BINDS, what="A back")
        more = await r.post_many(20, start=100)
        await r.wait_delivered(more)
        assert r.a.submits_total > 0  # traffic returned to A
        assert breaker.state is BreakerState.CLOSED


async def test_system_errors_fail_over_to_b_and_open_the_breaker(tmp_path: Path) -> None:
    async with two_operators(tmp_path, SmscProfile(error_ratio=1.0, error_status=0x08)) as r:
        await wait_for(lambda: r.app.pools["A"].binds_up == BINDS, what="A bound")
        before = failovers("A", "B")
        ids = await r.post_many(100)
        await r.wait_delivered(ids)
        assert r.b.submits_total >= 100
        assert failovers("A", "B") - before == 100  # every message moved from A to B once
        # After 3 failures the breaker kept A out of the way: A saw only the submits already
        # in its window (2 binds x 5) and a few more.
        assert r.a.submits_total <= 3 * BINDS * WINDOW, r.a.submits_total
        assert r.app.pools["A"].breaker.state is not BreakerState.CLOSED

        # A recovers: after the cool-down one probe goes to A, succeeds, and A is back.
        r.a.profile.error_ratio = 0.0
        deadline = time.monotonic() + DEADLINE
        i = 1000
        while r.app.pools["A"].breaker.state is not BreakerState.CLOSED:
            assert time.monotonic() < deadline, "breaker never closed"
            await r.wait_delivered([await r.post(i)])
            i += 1
        a_before = r.a.submits_total
        more = await r.post_many(40, start=2000)
        await r.wait_delivered(more)
        assert r.a.submits_total - a_before == 40  # failover route: A first when healthy
        assert r.max_outstanding() <= WINDOW


async def test_response_timeouts_fail_over(tmp_path: Path) -> None:
    async with two_operators(tmp_path, SmscProfile(drop_ratio=1.0)) as r:
        await wait_for(lambda: r.app.pools["A"].binds_up == BINDS, what="A bound")
        before = failovers("A", "B")
        ids = await r.post_many(30)
        await r.wait_delivered(ids)
        assert failovers("A", "B") > before
        assert r.max_outstanding() <= WINDOW


async def test_permanent_error_fails_the_message_with_the_status(tmp_path: Path) -> None:
    async with two_operators(tmp_path, SmscProfile(error_ratio=1.0, error_status=0x0B)) as r:
        await wait_for(lambda: r.app.pools["A"].binds_up == BINDS, what="A bound")
        mid = await r.post(1)
        deadline = time.monotonic() + DEADLINE
        while (body := await (await r.http.get(f"{r.base}/v1/messages/{mid}")).json())[
            "status"
        ] != "failed":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert "ESME_RINVDSTADR" in body["error"] and "0x0B" in body["error"]
        assert r.b.submits_total == 0  # final errors do not fail over

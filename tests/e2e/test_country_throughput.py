"""Issue 19 item 10: a country's [throughput] (Kazakhstan: 100 parts/s, 1,000 per minute) is
enforced by dispatch over every provider to that country (policy/throughput.py)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from aggregator.policy.profiles import ProfileError, Throughput, bundled_profiles, parse_profile
from aggregator.policy.throughput import CountryThroughput
from tests.helpers import ManualClock, running, wait_for

KZ = bundled_profiles()["KZ"]


def test_kazakhstan_profile_has_the_guides_rates() -> None:
    assert KZ.throughput == Throughput(max_per_second=100, max_per_minute=1000)
    assert bundled_profiles()["XK"].throughput == Throughput()
    with pytest.raises(ProfileError) as err:
        parse_profile({"region": "KZ", "name": "K", "timezone": "Asia/Almaty",
                       "throughput": {"max_per_second": 0, "max_per_minte": 5}}, "KZ.toml")
    text = str(err.value)
    assert "throughput.max_per_second" in text and "did you mean 'max_per_minute'" in text


def test_per_second_and_per_minute_windows_at_their_edges() -> None:
    clock = ManualClock()
    limits = CountryThroughput({"KZ": KZ}, clock=clock)
    start = clock.now
    assert all(limits.reserve("KZ") == 0.0 for _ in range(100))
    assert limits.reserve("KZ") == pytest.approx(1.0)  # the 101st in the same second waits
    assert limits.reserve("XK") == 0.0 and limits.reserve(None) == 0.0  # no limit there
    clock.now = start + 0.999
    assert limits.reserve("KZ") > 0  # still inside the first second
    for second in range(1, 10):  # 100 a second for the next 9 seconds: 1,000 in all
        clock.now = start + second
        assert all(limits.reserve("KZ") == 0.0 for _ in range(100)), second
    clock.now = start + 10
    wait = limits.reserve("KZ")  # a fresh second, but 1,000 were sent within the minute
    assert wait == pytest.approx(50.0)  # the first part sent leaves the window at start + 60
    clock.now = start + 60 - 0.001
    assert limits.reserve("KZ") > 0
    clock.now = start + 60
    assert all(limits.reserve("KZ") == 0.0 for _ in range(100))  # the first second's 100
    assert limits.reserve("KZ") > 0


def test_a_message_longer_than_the_limit_waits_for_an_empty_window() -> None:
    clock = ManualClock()
    small = dataclasses.replace(KZ, throughput=Throughput(max_per_second=3))
    limits = CountryThroughput({"KZ": small}, clock=clock)
    assert limits.reserve("KZ", 2) == 0.0
    assert limits.reserve("KZ", 5) == pytest.approx(1.0)
    clock.now += 1.0
    assert limits.reserve("KZ", 5) == 0.0
    assert limits.reserve("KZ", 1) == pytest.approx(1.0)


async def test_dispatch_holds_the_country_rate(tmp_path: Path) -> None:
    """10 messages to Kazakhstan under 4 per second: the last leaves >= 2 s after the first;
    a message to Kosovo (no limit) is not held behind them."""
    async with running(tmp_path, shop={"registered_senders": {"KZ": ["ACME"]}}) as r:
        slow = dataclasses.replace(KZ, throughput=Throughput(max_per_second=4))
        r.app.dispatcher.country_limits = CountryThroughput({"KZ": slow})
        t0 = time.monotonic()
        for i in range(10):
            status, _ = await r.post({"to": f"+7701123{i:04d}", "from": "ACME", "text": "hi"})
            assert status == 202
        status, _ = await r.post({"to": "+38344123456", "from": "ACME", "text": "hi"})
        assert status == 202

        def to(prefix: str) -> int:
            return sum(1 for s in r.smsc.received if s.destination.startswith(prefix))

        await wait_for(lambda: to("383") == 1, what="Kosovo message")
        assert to("7701") < 10  # not held behind the Kazakh queue
        await wait_for(lambda: to("7701") == 10, timeout=30, what="Kazakh messages")
        assert time.monotonic() - t0 >= 2.0  # 4 + 4 + 2: the third second at the earliest

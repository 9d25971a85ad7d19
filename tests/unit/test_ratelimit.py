"""TokenBucket with an injected clock: burst, wait time, AIMD on throttling."""

from __future__ import annotations

import itertools

import pytest

from aggregator.ratelimit import TokenBucket
from tests.helpers import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def take_all(bucket: TokenBucket) -> int:
    """Take tokens until the bucket says wait; how many were there."""
    n = 0
    while bucket.try_take() == 0.0:
        n += 1
        assert n < 10_000
    return n


def test_burst_then_wait_time(clock: ManualClock) -> None:
    bucket = TokenBucket(8.0, burst=4.0, clock=clock)

    assert [bucket.try_take() for _ in range(4)] == [0.0] * 4
    assert bucket.try_take() == pytest.approx(1 / 8)

    clock.advance(1 / 16)  # half a token
    assert bucket.try_take() == pytest.approx(1 / 16)

    clock.advance(1 / 16)
    assert bucket.try_take() == 0.0
    assert bucket.try_take() == pytest.approx(1 / 8)


def test_refill_is_capped_at_burst(clock: ManualClock) -> None:
    bucket = TokenBucket(8.0, burst=4.0, clock=clock)
    take_all(bucket)

    clock.advance(3600)

    assert take_all(bucket) == 4


@pytest.mark.parametrize(("rate", "burst"), [(100.0, 10), (5.0, 1), (1000.0, 100)])
def test_default_burst_is_a_tenth_of_a_second(
    clock: ManualClock, rate: float, burst: int
) -> None:
    bucket = TokenBucket(rate, clock=clock)

    assert take_all(bucket) == burst


def test_slow_down_cuts_the_rate_by_30_percent_down_to_one(clock: ManualClock) -> None:
    bucket = TokenBucket(10.0, clock=clock)
    rates = []
    for _ in range(10):
        bucket.slow_down()
        rates.append(bucket.rate)
        clock.advance(0.25)
    assert rates[:3] == pytest.approx([7.0, 4.9, 3.43])
    assert rates[-1] == 1.0 and min(rates) == 1.0


def test_answers_in_flight_cut_the_rate_only_once(clock: ManualClock) -> None:
    bucket = TokenBucket(100.0, clock=clock)
    for _ in range(10):  # ten throttled answers to submits sent before the first cut
        bucket.slow_down()
    assert bucket.rate == pytest.approx(70.0)
    clock.advance(0.25)
    bucket.slow_down()
    assert bucket.rate == pytest.approx(49.0)


def test_slow_down_empties_the_bucket(clock: ManualClock) -> None:
    bucket = TokenBucket(100.0, burst=10.0, clock=clock)
    assert take_all(bucket) == 10
    clock.advance(1.0)  # refills to the burst
    bucket.slow_down()
    assert bucket.try_take() > 0  # nothing left to send at once after a throttle


def test_recover_climbs_back_to_max_rate_and_not_beyond(clock: ManualClock) -> None:
    bucket = TokenBucket(100.0, clock=clock)
    bucket.slow_down()
    assert bucket.rate == pytest.approx(70.0)
    rates = [bucket.rate]
    for _ in range(200):  # successes every 0.1 s: +5% of the current rate per second
        clock.advance(0.1)
        bucket.recover()
        rates.append(bucket.rate)
    assert rates[10] == pytest.approx(70.0 * 1.005**10, rel=1e-6)
    assert all(b >= a for a, b in itertools.pairwise(rates))
    assert rates[-1] == 100.0 and max(rates) == 100.0


def test_throttle_drops_to_what_the_operator_accepted(clock: ManualClock) -> None:
    bucket = TokenBucket(400.0, clock=clock)
    for _ in range(50):  # the operator took 50 in the last second
        clock.advance(0.02)
        bucket.recover()
    bucket.slow_down()
    assert bucket.rate == pytest.approx(0.95 * 50)


def test_recover_at_max_rate_changes_nothing(clock: ManualClock) -> None:
    bucket = TokenBucket(1000.0, clock=clock)

    bucket.recover()

    assert bucket.rate == 1000.0


def test_recover_growth_depends_on_time_not_on_the_number_of_successes(
    clock: ManualClock,
) -> None:
    bucket = TokenBucket(200.0, clock=clock)
    bucket.slow_down()
    before = bucket.rate
    clock.advance(1.0)
    for _ in range(500):  # a burst of successes in the same instant
        bucket.recover()
    assert bucket.rate == pytest.approx(before * 1.05)


def test_slow_down_never_raises_the_rate_above_max(clock: ManualClock) -> None:
    bucket = TokenBucket(0.5, clock=clock)

    bucket.slow_down()

    assert bucket.rate <= bucket.max_rate
